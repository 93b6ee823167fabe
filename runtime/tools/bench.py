"""Speed measurements like llama-bench's, taken through the engine and token loop `infer run` uses.

Each sweep point (threads × GPU layers × context × batch) is measured as llama-bench does it:
one untimed warm-up, then `reps` repetitions of a prompt test (`n_prompt` random tokens into an
empty cache: prompt tok/s and time to first token) and a generation test (`n_gen` tokens sampled
after a one-token prompt: generation tok/s, llama-bench's tg at depth 0). Both go through
`Generation` and a model session's `generate` with the default sampler chain, so the figures are
what a user of `infer run` gets. The model is loaded `reps` times for the load-time figures.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import UsageError
from ..generation.loop import Generation
from ..llama.engine import backends, supports_gpu_offload, system_info
from ..llama.interface import Model, Session
from ..llama.offload import describe_split
from ..models.resolve import ResolvedModel
from ..options import sampling as layered
from ..params import DEFAULT_BATCH, GenerateOptions, LoadOptions, LoraAdapter, SamplingParams

HISTORY_FILE = "bench-history.jsonl"
REMOTE_KEYS = ("remote", "prompt_tokens", "generated_tokens")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchPoint:
    """One combination of the swept load options (None: infer's default)."""

    threads: int | None = None
    gpu_layers: int | None = None
    ctx_size: int | None = None
    batch_size: int = DEFAULT_BATCH


@dataclass
class Spread:
    """Median and spread of one measurement over the repetitions."""

    median: float
    mean: float
    stdev: float
    min: float
    max: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        stdev = statistics.stdev(samples) if len(samples) > 1 else 0.0
        return cls(
            statistics.median(samples),
            statistics.fmean(samples),
            stdev,
            min(samples),
            max(samples),
            samples,
        )


@dataclass
class BenchResult:
    """One sweep point's figures; `as_dict()` is the `--json` and history record. A remote
    engine's result (tools/bench_remote.py) has None for what only a local load knows (path,
    size, threads, layers, context, batch, load time) and adds `remote` and the token counts
    the server reported per repetition."""

    model: str
    model_path: str | None
    model_size_bytes: int | None
    backend: str
    gpu_offload_supported: bool | None
    threads: int | None
    gpu_layers: int | None  # layers offloaded to a GPU ...
    layers_total: int | None  # ... out of this many (the repeating layers plus the output layer)
    ctx_size: int | None
    batch_size: int | None
    n_prompt: int
    n_gen: int
    repetitions: int
    load_s: Spread | None
    prompt_tokens_per_s: Spread | None
    ttft_s: Spread | None
    generate_tokens_per_s: Spread | None
    system_info: str = ""
    # Where the layers were, when not all on this CPU (RPC servers, GPUs): llama/offload.py.
    split: str = ""
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    infer_version: str = field(default_factory=lambda: _version("infer"))
    llama_cpp_python_version: str = field(default_factory=lambda: _version("llama_cpp_python"))
    remote: str | None = None  # the server's URL (without credentials); None: measured here
    prompt_tokens: list[int] | None = None  # per repetition, as the remote's usage says
    generated_tokens: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.remote is None:  # a local record keeps the fields it always had
            for key in REMOTE_KEYS:
                del data[key]
        return data


def parse_list(text: str | None, flag: str, minimum: int) -> list[int | None]:
    """A sweep option: "1,2,4" -> [1, 2, 4]; not given -> [None] (infer's default)."""
    if text is None or not text.strip():
        return [None]
    values: list[int | None] = []
    for item in text.split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise UsageError(f"{flag} takes integers separated by commas (got '{text}')") from None
        if value < minimum:
            raise UsageError(f"{flag} values must be >= {minimum} (got {value})")
        values.append(value)
    return list(dict.fromkeys(values))


def sweep(
    threads: list[int | None],
    gpu_layers: list[int | None],
    ctx_sizes: list[int | None],
    batch_sizes: list[int | None],
) -> list[BenchPoint]:
    """Every combination, in llama-bench's order (the last option varies fastest). Each value
    is checked as `infer run` checks it before anything is measured: a bad last value must not
    fail the sweep after minutes of measuring the first ones."""
    for t in threads:
        LoadOptions(threads=t).validate()
    return [
        BenchPoint(t, g, c, b or DEFAULT_BATCH)
        for t, g, c, b in itertools.product(threads, gpu_layers, ctx_sizes, batch_sizes)
    ]


def check_counts(n_prompt: int, n_gen: int, reps: int) -> None:
    if n_prompt < 0 or n_gen < 0:
        raise UsageError("-p and -n must be >= 0")
    if n_prompt == 0 and n_gen == 0:
        raise UsageError("nothing to measure: -p and -n are both 0")
    if reps < 1:
        raise UsageError(f"-r must be >= 1 (got {reps})")


def run_bench(
    model: ResolvedModel,
    points: list[BenchPoint],
    n_prompt: int = 512,
    n_gen: int = 128,
    reps: int = 5,
    *,
    verbose: bool = False,
    progress: Progress | None = None,
    rpc: tuple[str, ...] = (),
    lora: tuple[LoraAdapter, ...] | None = None,
) -> Iterator[BenchResult]:
    """Measure each point in turn; yields its result as soon as it is known. `rpc`: llama.cpp
    RPC servers that take the offloaded layers; `lora`: adapters (None: the model's
    models.toml ones)."""
    check_counts(n_prompt, n_gen, reps)
    sampling = _sampling(model)
    for point in points:
        options = LoadOptions(
            ctx_size=model.defaults.context(point.ctx_size),
            threads=point.threads,
            gpu_layers=point.gpu_layers,
            batch_size=point.batch_size,
            verbose=verbose,
            rpc=rpc,
            lora=model.defaults.lora if lora is None else lora,
        ).validate()
        yield _bench_point(model, options, sampling, (n_prompt, n_gen, reps), progress or _quiet)


def _sampling(model: ResolvedModel) -> SamplingParams:
    """What `infer run MODEL` samples with when no flag is given: models.toml, else defaults."""
    return layered(model.defaults.sampling)


def _bench_point(
    model: ResolvedModel,
    options: LoadOptions,
    sampling: SamplingParams,
    counts: tuple[int, int, int],
    progress: Progress,
) -> BenchResult:
    n_prompt, n_gen, reps = counts
    engine, loads = _load_repeatedly(model, options, reps, progress, (n_prompt, n_gen))
    try:
        progress("warm-up")
        _measure(engine, sampling, n_prompt, n_gen, seed=-1)
        pp, ttft, tg = [], [], []
        for rep in range(reps):
            progress(f"repetition {rep + 1}/{reps}")
            prompt_tps, first, gen_tps = _measure(engine, sampling, n_prompt, n_gen, seed=rep)
            pp.append(prompt_tps)
            ttft.append(first)
            tg.append(gen_tps)
        return _result(model, engine, n_prompt, n_gen, reps, loads, pp, ttft, tg)
    finally:
        engine.model.close()  # and its session


def _load_repeatedly(
    model: ResolvedModel,
    options: LoadOptions,
    reps: int,
    progress: Progress,
    counts: tuple[int, int],
) -> tuple[Session, list[float]]:
    """Load the model and make its session `reps` times (load time is one of the figures: the
    weights and the context); keep the last. The first load tells the context size: a test
    that cannot fit stops there."""
    n_prompt, n_gen = counts
    need_ctx = max(n_prompt + 1, n_gen + 2)  # the prompt plus a token; BOS plus n_gen + 1
    loads: list[float] = []
    engine: Session | None = None
    for rep in range(reps):
        if engine is not None:
            engine.model.close()
        progress(f"loading {rep + 1}/{reps}")
        engine, seconds = _load_session(model, options)
        loads.append(seconds)
        if need_ctx > engine.n_ctx:
            engine.model.close()
            raise UsageError(
                f"-p {n_prompt} -n {n_gen} need a {need_ctx}-token context but it is "
                f"{engine.n_ctx} tokens: raise --ctx-size"
            )
    assert engine is not None
    return engine, loads


def _load_session(model: ResolvedModel, options: LoadOptions) -> tuple[Session, float]:
    """The model's session, and the seconds its weights and context took to load."""
    from ..api import load

    loaded: Model = load(model, options)
    started = time.perf_counter()
    try:
        session = loaded.new_session()
    except BaseException:
        loaded.close()
        raise
    return session, loaded.load_s + time.perf_counter() - started


def _measure(
    engine: Session, sampling: SamplingParams, n_prompt: int, n_gen: int, seed: int
) -> tuple[float, float, float]:
    """One repetition: (prompt tok/s, time to first token s, generation tok/s); 0 when skipped."""
    rng = random.Random(seed)
    prompt_tps = ttft = gen_tps = 0.0
    if n_prompt:
        # llama-bench's prompt: BOS (when the model wants one), then random tokens.
        stats = _timed(engine, sampling, _random_tokens(engine.model, rng, n_prompt), 1)
        prompt_tps, ttft = stats.prompt_tps, stats.ttft_s
    if n_gen:
        # n_gen + 1 tokens: the first comes from the prompt's logits, then n_gen decode steps.
        stats = _timed(engine, sampling, _random_tokens(engine.model, rng, 1), n_gen + 1)
        gen_tps = stats.generate_tps
    return prompt_tps, ttft, gen_tps


def _timed(engine: Session, sampling: SamplingParams, prompt: list[int], max_tokens: int) -> Any:
    engine.reset()
    # End-of-generation tokens ignored: a measurement needs exactly the token count asked for
    # (llama-bench decodes random tokens and never stops).
    options = GenerateOptions(max_tokens=max_tokens, ignore_eog=True)
    gen = Generation(engine, prompt, sampling, options, threading.Event())
    for _ in gen:
        pass
    return gen.stats


def _random_tokens(model: Model, rng: random.Random, n: int) -> list[int]:
    tokens = [rng.randrange(model.n_vocab) for _ in range(n)]
    if model.add_bos and model.bos_id >= 0:
        tokens[0] = model.bos_id
    return tokens


def _result(
    model: ResolvedModel,
    engine: Session,
    n_prompt: int,
    n_gen: int,
    reps: int,
    loads: list[float],
    pp: list[float],
    ttft: list[float],
    tg: list[float],
) -> BenchResult:
    info, loaded = system_info(), engine.model
    return BenchResult(
        model=model.name,
        model_path=str(model.path),
        model_size_bytes=model.path.stat().st_size,
        backend="+".join(backends(info)),
        gpu_offload_supported=supports_gpu_offload(),
        threads=loaded.threads,
        gpu_layers=loaded.offloaded_layers,
        layers_total=loaded.n_layers,
        ctx_size=engine.n_ctx,
        batch_size=engine.n_batch,
        n_prompt=n_prompt,
        n_gen=n_gen,
        repetitions=reps,
        load_s=Spread.of(loads),
        prompt_tokens_per_s=Spread.of(pp) if n_prompt else None,
        ttft_s=Spread.of(ttft) if n_prompt else None,
        generate_tokens_per_s=Spread.of(tg) if n_gen else None,
        system_info=info.strip(),
        split=describe_split(loaded.split),
    )


def history_path() -> Path:
    return paths.state_dir() / HISTORY_FILE


def append_history(result: BenchResult) -> Path:
    """Add one result to the JSONL history in the state dir: the whole line or nothing. On a
    full disk it raises OSError and leaves the history as it was (no half line, and no empty
    file where there was none)."""
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(result.as_dict(), ensure_ascii=False) + "\n").encode()
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        except OSError:
            with contextlib.suppress(OSError):  # not a regular file (/dev/full): nothing to undo
                os.ftruncate(fd, start)
            if not existed:
                path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)
    return path


def read_history() -> tuple[list[dict[str, Any]], int]:
    """The recorded results, oldest first, and how many lines could not be read."""
    path = history_path()
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _quiet(_message: str) -> None:
    pass
