"""Options for loading a model and for a generation's length, stops and drafting, validated once
for every front end; errors name the field (OptionError), never a flag. The sampling options
(SamplingParams) live with their table in options.py and are importable from here too."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OptionError
from .options import GrammarTrigger as GrammarTrigger
from .options import SamplingParams as SamplingParams

DEFAULT_BATCH = 512


@dataclass
class GenerateOptions:
    max_tokens: int | None = None  # None: until end-of-generation or the context is full
    stop: list[str] = field(default_factory=list)
    # Speculative decoding (runtime/generation/speculative.py) runs when
    # `generate(..., drafter=...)` gets a drafter; these tune it. Options are data: the loaded
    # draft model is an argument, never here.
    draft_max: int | None = None  # drafted tokens per step; None: the drafter's default
    draft_ngram: int | None = None  # lookup: longest n-gram matched; None: the default
    # False: verify every drafted token, even where measured costs say it slows generation down
    # (runtime/generation/draft_policy.py). For measuring acceptance, and for tests of verification.
    draft_adapt: bool = True
    # Keep generating past end-of-generation tokens, up to max_tokens (llama.cpp's ignore_eos:
    # for benchmarks that need an exact token count). The batch scheduler honours it.
    ignore_eog: bool = False
    # Log-probabilities of each generated token and of its `logprobs` most likely alternatives
    # (generation/logprobs.py); None: not computed at all.
    logprobs: int | None = None
    # With logprobs: the probabilities after the sampler chain (top-k, top-p, min-p, temperature
    # and the rest) of the sampled token and the `logprobs` likeliest candidates the chain left,
    # as llama-server's post_sampling_probs; the scheduler honours it.
    post_sampling_probs: bool = False

    def validate(self) -> GenerateOptions:
        if self.max_tokens is not None and self.max_tokens < 0:
            raise OptionError("max_tokens", f"must be >= 0 (got {self.max_tokens})")
        if any(s == "" for s in self.stop):
            raise OptionError("stop", "must not be empty")
        if self.draft_max is not None and not 1 <= self.draft_max <= 64:
            raise OptionError("draft_max", f"must be between 1 and 64 (got {self.draft_max})")
        if self.draft_ngram is not None and not 1 <= self.draft_ngram <= 16:
            raise OptionError("draft_ngram", f"must be between 1 and 16 (got {self.draft_ngram})")
        if self.logprobs is not None and self.logprobs < 0:
            raise OptionError("logprobs", f"must be >= 0 (got {self.logprobs})")
        return self


@dataclass
class LoadOptions:
    ctx_size: int | None = None  # None: the model's trained context, capped by memory
    threads: int | None = None  # None: physical cores
    gpu_layers: int | None = None  # None: all on a GPU build, 0 on CPU; -1: all
    batch_size: int = DEFAULT_BATCH
    verbose: bool = False
    # Reuse and save prompt states on disk (runtime/generation/prompt_cache.py). Off for library
    # users and measurements (`infer bench` must evaluate its prompts); `infer run` turns it on.
    prompt_cache: bool = False
    # llama.cpp RPC servers (HOST:PORT) whose devices take the offloaded layers (llama/rpc.py).
    rpc: tuple[str, ...] = ()
    # The projector GGUF (mmproj) that lets the model see images or hear audio (llama/vision.py)
    mmproj: Path | None = None
    # LoRA adapters loaded with the model, each applied at its scale (llama/lora.py).
    lora: tuple[LoraAdapter, ...] = ()
    # Batched decoding whose temperature-0 answers do not depend on what else is decoded
    # (`--deterministic`; docs/determinism.md): the contexts made for it compute every row the
    # same way whatever shares its decode.
    deterministic: bool = False

    def validate(self) -> LoadOptions:
        if self.ctx_size is not None and self.ctx_size < 16:
            raise OptionError("ctx_size", f"must be >= 16 (got {self.ctx_size})")
        if self.threads is not None:
            check_threads(self.threads)
        if self.gpu_layers is not None and self.gpu_layers < -1:
            raise OptionError("gpu_layers", f"must be >= -1 (got {self.gpu_layers})")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"must be >= 1 (got {self.batch_size})")
        for endpoint in self.rpc:
            split_endpoint(endpoint)
        for adapter in self.lora:
            check_lora_scale(adapter.scale)
        return self


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter file and the scale it is applied at (0: loaded, not applied)."""

    path: str
    scale: float = 1.0


MAX_LORA_SCALE = 1000.0  # llama.cpp takes any float; past this the answer is noise anyway


def check_lora_scale(scale: object) -> float:
    """`scale` as a float if it is a usable LoRA scale (finite, |scale| <= 1000), else an
    OptionError: the one verdict for --lora, models.toml and the server's `lora` fields."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise OptionError("lora", f"scale must be a number (got {scale!r})", sep=": ")
    if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        raise OptionError(
            "lora",
            f"scale must be between -{MAX_LORA_SCALE:g} and {MAX_LORA_SCALE:g} (got {scale})",
            sep=": ",
        )
    return float(scale)


def parse_lora(values: list[str] | tuple[str, ...] | None) -> tuple[LoraAdapter, ...]:
    """--lora's values, FILE[:SCALE] each (scale 1.0 when none is given), checked. A colon
    followed by something that is not a number belongs to the file name."""
    adapters = []
    for value in values or ():
        path, sep, tail = value.rpartition(":")
        scale: float = 1.0
        if sep and path:
            try:
                scale = float(tail)
            except ValueError:
                path = value
        else:
            path = value
        if not path:
            raise OptionError("lora", "needs FILE[:SCALE]", sep=": ")
        adapters.append(LoraAdapter(path, check_lora_scale(scale)))
    return tuple(adapters)


def parse_endpoints(value: str | None) -> tuple[str, ...]:
    """--rpc's value: HOST:PORT[,HOST:PORT...] (checked; duplicates dropped) as a tuple."""
    if value is None:
        return ()
    endpoints = tuple(dict.fromkeys(e.strip() for e in value.split(",") if e.strip()))
    if not endpoints:
        raise OptionError("rpc", "needs HOST:PORT[,HOST:PORT...]")
    for endpoint in endpoints:
        split_endpoint(endpoint)
    return endpoints


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of an RPC server's HOST:PORT, as llama.cpp parses it (up to the first colon:
    IPv4 addresses and host names), or an OptionError."""
    host, sep, port = endpoint.partition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
        raise OptionError(
            "rpc", f"{endpoint!r} is not HOST:PORT (e.g. 192.168.1.20:50052)", sep=": "
        )
    return host, int(port)


THREADS_PER_CPU = 4


def max_threads() -> int:
    """The most threads accepted. llama.cpp starts one OS thread per --threads and spins them
    at a barrier after every graph node, so threads beyond the logical CPUs only take turns
    (2048 threads: a minute for 4 tokens) and tens of thousands exhaust memory for their stacks
    (a segfault). 4x the logical CPUs still allows measuring oversubscription with `infer bench`."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def check_threads(threads: int) -> int:
    """`threads` if it is a usable thread count, else an OptionError naming the bound."""
    bound = max_threads()
    if not 1 <= threads <= bound:
        raise OptionError(
            "threads",
            f"must be between 1 and {bound} ({THREADS_PER_CPU} x the "
            f"{bound // THREADS_PER_CPU} logical CPUs) (got {threads})",
        )
    return threads


def physical_cores() -> int:
    """Cores this process may use, counting hyperthread siblings once (llama.cpp does the same:
    generation is memory-bound and extra SMT threads slow it down)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        allowed = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cores = {
                (block.get("physical id"), block.get("core id"))
                for block in _cpuinfo_blocks(f.read())
            }
        cores.discard((None, None))
        if cores:
            return max(1, min(allowed, len(cores)))
    except OSError:
        pass
    return max(1, allowed)


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks
