"""Where a temperature-0 answer's difference under load comes from, bit for bit.

    python benchmarks/determinism.py                  # the bundled SmolLM2 (Q4_1), FA on and off
    python benchmarks/determinism.py --types Q8_0,Q4_0,F16   # also requantized copies of it
    python benchmarks/determinism.py --quick          # a smoke run: fewer prompts and tokens

For each prompt (raw tokens of the project's own docs, 20 to 420 tokens long) the reference is
the sequence decoded *alone*: its prompt in one decode, then T tokens one decode each, greedy;
the logits of those T rows are kept. Every other way of computing the same sequence replays the
same tokens (teacher-forced, so a flipped token does not hide what follows) and compares its
T rows with the reference's, bit for bit: the largest |Δlogit| and how many rows' argmax (the
greedy token) changed. The ways, all in one context of 4 sequences over a split KV cache (as
`infer serve --parallel 4` makes it):

- alone again: the reference once more (the run-to-run noise: must be 0);
- batch (start): three other prompts of other lengths read in the same decodes, then all four
  generate together;
- batch (join): the others' prompts arrive while this one generates (queued in its steps);
- batch (read while others generate): this prompt is read in decodes that also hold the other
  sequences' next tokens;
- cache hit: the first half of the prompt restored from a saved state (the prompt cache), the
  rest decoded; repeat: all but the last token held (a slot's reuse), the last one decoded;
- fork: the prompt read by another sequence, its cells copied (seq_cp) and generation
  continued here; shared prefix: half of it copied, the rest read here;
- chunks of N: the prompt read N tokens per decode (n_batch N);
- drafts of K: the generated tokens fed K+1 a decode, as verifying speculative drafts does;
- and, as separate references, flash attention off, the deterministic mode's cells (Q8_0,
  flash attention: `--fa mode`) and other thread counts.

What the figures mean, and the kernels behind them: docs/determinism.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from common import add_json_arg, write_results
from determinism_cost import cost, merge
from vs_llamacpp import bundled_model

ROOT = Path(__file__).resolve().parent.parent
SEQS, N_CTX_SEQ, N_BATCH = 4, 1024, 512
TARGET, OTHERS = 1, (0, 2, 3)  # the sequence compared sits between neighbours
# The columns of the table: F16 cells with and without flash attention (llama.cpp's default,
# and the mode's earlier choice), and `--deterministic`'s own contexts.
KERNELS = {"on": "FA on", "off": "FA off", "mode": "--deterministic (Q8_0 cells, FA)"}


@dataclass
class Outcome:
    """One way of computing, over every prompt: how its rows compare with the reference's."""

    name: str
    what: str
    prompts: int = 0
    rows: int = 0
    rows_differing: int = 0
    argmax_changed: int = 0  # rows whose greedy token differs
    prompts_changed: int = 0  # prompts with at least one such row
    max_abs_diff: float = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        self.prompts += 1
        self.rows += len(ref)
        self.rows_differing += int((diff.max(axis=1) > 0).sum())
        flips = int((ref.argmax(axis=1) != got.argmax(axis=1)).sum())
        self.argmax_changed += flips
        self.prompts_changed += int(flips > 0)
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Trace:
    """A sequence to compute: its prompt and the tokens fed after it (the reference's greedy
    choices), and the T logits rows to compare (after the prompt, and after each token)."""

    prompt: list[int]
    follow: list[int] = field(default_factory=list)


class Bench:
    """One loaded model and one context; each method computes a trace one way and returns its
    rows (T x n_vocab float32)."""

    def __init__(self, model: Any, flash_attn: bool | None, tokens: int) -> None:
        """`model` loaded deterministic: the mode's contexts (`flash_attn` is then moot)."""
        self.model, self.tokens = model, tokens
        self.ctx = model.new_context(SEQS, N_CTX_SEQ, N_BATCH, flash_attn=flash_attn)
        self.n_vocab = model.n_vocab
        self.dir = Path(tempfile.mkdtemp(prefix="infer-determinism-"))

    def close(self) -> None:
        self.ctx.close()
        for f in self.dir.iterdir():
            f.unlink()
        self.dir.rmdir()

    # -- primitives -------------------------------------------------------------------------
    def clear(self) -> None:
        for seq in range(SEQS):
            self.ctx.remove(seq)

    def row(self, r: int) -> np.ndarray:
        return np.frombuffer(self.ctx.logits(r, 1), dtype=np.float32, count=self.n_vocab).copy()

    def read(self, seq: int, tokens: Sequence[int], chunk: int = N_BATCH) -> np.ndarray | None:
        """Decode `tokens` into `seq`, `chunk` per decode; the last one's logits."""
        out = None
        for i in range(0, len(tokens), chunk):
            part = tokens[i : i + chunk]
            r = self.ctx.add(seq, part, i + len(part) == len(tokens))
            self.ctx.decode()
            out = self.row(r) if r >= 0 else out
        return out

    def follow(
        self,
        seq: int,
        first: np.ndarray,
        tokens: Sequence[int],
        others: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """The rows after the prompt: `first`, then one decode per token fed (`others(step)`
        queues what else shares each decode)."""
        rows = [first]
        for step, tok in enumerate(tokens):
            r = self.ctx.add(seq, [tok], True)
            if others is not None:
                others(step)
            self.ctx.decode()
            rows.append(self.row(r))
        return np.stack(rows)

    def greedy(self, prompt: list[int]) -> Trace:
        """The reference's tokens: the prompt alone, then greedy choices."""
        self.clear()
        logits = self.read(TARGET, prompt)
        assert logits is not None
        chosen = []
        for _ in range(self.tokens - 1):
            tok = int(logits.argmax())
            chosen.append(tok)
            r = self.ctx.add(TARGET, [tok], True)
            self.ctx.decode()
            logits = self.row(r)
        return Trace(prompt, chosen)

    # -- the ways ---------------------------------------------------------------------------
    def alone(self, t: Trace, chunk: int = N_BATCH) -> np.ndarray:
        self.clear()
        first = self.read(TARGET, t.prompt, chunk)
        assert first is not None
        return self.follow(TARGET, first, t.follow)

    def batch_start(self, t: Trace, others: list[list[int]]) -> np.ndarray:
        """All four prompts in the same decodes, then all four generate together."""
        self.clear()
        done = {seq: 0 for seq in (TARGET, *OTHERS)}
        prompts = {TARGET: t.prompt, **dict(zip(OTHERS, others, strict=True))}
        first = None
        while any(done[s] < len(p) for s, p in prompts.items()):
            row = -1
            for seq, p in prompts.items():  # room shared out as the scheduler does: in order
                n = min(len(p) - done[seq], self.ctx.room())
                if n > 0:
                    last = done[seq] + n == len(p)
                    r = self.ctx.add(seq, p[done[seq] : done[seq] + n], last)
                    row = r if seq == TARGET and last else row
                    done[seq] += n
            self.ctx.decode()
            if row >= 0:  # its last prompt token was in this decode
                first = self.row(row)
        assert first is not None
        filler = self._filler(others)
        return self.follow(TARGET, first, t.follow, filler)

    def _filler(self, others: list[list[int]]) -> Callable[[int], None]:
        def queue(step: int) -> None:  # the others generate too (any tokens: they are load)
            for seq, p in zip(OTHERS, others, strict=True):
                self.ctx.add(seq, [p[step % len(p)]], True)

        return queue

    def batch_join(self, t: Trace, others: list[list[int]]) -> np.ndarray:
        """This sequence generates; the others' prompts arrive in its steps (chunked to fit)."""
        self.clear()
        first = self.read(TARGET, t.prompt)
        assert first is not None
        pending = {seq: list(p) for seq, p in zip(OTHERS, others, strict=True)}

        def queue(step: int) -> None:
            for seq in OTHERS:
                if step >= OTHERS.index(seq) and pending[seq]:
                    n = min(len(pending[seq]), self.ctx.room(), 61 + 17 * step)
                    self.ctx.add(seq, pending[seq][:n], n == len(pending[seq]))
                    pending[seq] = pending[seq][n:]
                elif not pending[seq]:
                    self.ctx.add(seq, [7], True)

        return self.follow(TARGET, first, t.follow, queue)

    def read_under_load(self, t: Trace, others: list[list[int]]) -> np.ndarray:
        """The others were read first and generate; this prompt is read in their steps."""
        self.clear()
        for seq, p in zip(OTHERS, others, strict=True):
            self.read(seq, p)
        done, row = 0, -1
        while done < len(t.prompt):
            for seq in OTHERS:
                self.ctx.add(seq, [11], True)
            n = min(len(t.prompt) - done, self.ctx.room(), 37)
            row = self.ctx.add(TARGET, t.prompt[done : done + n], done + n == len(t.prompt))
            done += n
            self.ctx.decode()
        first = self.row(row)
        return self.follow(TARGET, first, t.follow, self._filler(others))

    def cache_hit(self, t: Trace, held: int) -> np.ndarray:
        """The prompt's first `held` tokens saved by another sequence, restored here (the prompt
        cache), the rest decoded."""
        self.clear()
        self.read(OTHERS[0], t.prompt[:held])
        path = self.dir / "state.bin"
        assert self.ctx.save(OTHERS[0], path)
        assert self.ctx.restore(TARGET, path, t.prompt[:held])
        first = self.read(TARGET, t.prompt[held:])
        assert first is not None
        return self.follow(TARGET, first, t.follow)

    def drafted(self, t: Trace, k: int) -> np.ndarray:
        """The prompt alone, then the generated tokens fed k + 1 a decode, every row's logits
        kept: what verifying a sequence's speculative drafts decodes."""
        self.clear()
        first = self.read(TARGET, t.prompt)
        assert first is not None
        rows = [first]
        for i in range(0, len(t.follow), k + 1):
            part = t.follow[i : i + k + 1]
            r = self.ctx.add(TARGET, part, len(part))
            self.ctx.decode()
            rows += [self.row(r + j) for j in range(len(part))]
        return np.stack(rows)

    def repeat(self, t: Trace) -> np.ndarray:
        """The same prompt again in a slot that holds it: all but its last token reused."""
        self.alone(t)
        self.ctx.remove(TARGET, len(t.prompt) - 1)
        first = self.read(TARGET, t.prompt[-1:])
        assert first is not None
        return self.follow(TARGET, first, t.follow)

    def fork(self, t: Trace, held: int) -> np.ndarray:
        """Another sequence reads the prompt's first `held` tokens; its cells are copied here
        (seq_cp) and the rest read here (all of it held: sampled from the same logits)."""
        self.clear()
        first = self.read(OTHERS[0], t.prompt[:held])
        self.ctx.copy(OTHERS[0], TARGET)
        if held < len(t.prompt):
            first = self.read(TARGET, t.prompt[held:])
        assert first is not None
        return self.follow(TARGET, first, t.follow)


def prompts_from_docs(model: Any, count: int) -> list[list[int]]:
    """`count` prompts of 20..420 tokens from the project's docs (real text, fixed)."""
    text = " ".join(
        (ROOT / "docs" / name).read_text(encoding="utf-8")
        for name in ("serve.md", "run.md", "models.md")
    )
    words = text.split()
    out = []
    for i in range(count):
        want = 20 + (400 * i) // max(count - 1, 1)
        start = (i * 997) % max(len(words) - 2000, 1)
        tokens = model.with_bos(model.tokenize(" ".join(words[start : start + want * 2]), False))
        out.append(tokens[:want])
    return out


def measure_model(path: Path, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from infer.runtime.api import load
    from infer.runtime.params import LoadOptions

    out = []
    opts = LoadOptions(threads=args.threads, ctx_size=SEQS * N_CTX_SEQ)
    for kernels in [x for x in args.fa.split(",") if x]:
        fa = {"on": True, "off": False, "mode": None}[kernels]
        model = load(str(path), replace(opts, deterministic=kernels == "mode"))
        try:
            prompts = prompts_from_docs(model, args.prompts)
            others = [prompts[(i + 3) % len(prompts)] for i in range(len(prompts))]
            bench = Bench(model, fa, args.tokens)
            try:
                out.append(run_ways(bench, prompts, others, label, kernels, args))
            finally:
                bench.close()
        finally:
            model.close()
    if not args.quick and args.other_threads:
        out.append(threads_way(path, label, args))
    if not args.no_scheduler:
        out.append({"model": label, "scheduler": scheduler_way(path, label, args)})
    return out


def run_ways(
    bench: Bench,
    prompts: list[list[int]],
    others_of: list[list[int]],
    label: str,
    kernels: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    started = time.perf_counter()
    traces = [bench.greedy(p) for p in prompts]
    refs = [bench.alone(t) for t in traces]

    def neighbours(i: int) -> list[list[int]]:  # the 3 prompts decoded beside prompt i
        return [others_of[(i + k) % len(prompts)] for k in range(3)]

    ways: list[tuple[str, str, Callable[[Trace, int], np.ndarray]]] = [
        ("alone again", "the reference once more", lambda t, i: bench.alone(t)),
        (
            "batch (start)",
            "3 other prompts read and generated in the same decodes",
            lambda t, i: bench.batch_start(
                t,
                neighbours(i),
            ),
        ),
        (
            "batch (join)",
            "other prompts read in this sequence's generation steps",
            lambda t, i: bench.batch_join(
                t,
                neighbours(i),
            ),
        ),
        (
            "read under load",
            "this prompt read 37 tokens a step beside 3 generating sequences",
            lambda t, i: bench.read_under_load(
                t,
                neighbours(i),
            ),
        ),
        (
            "cache hit",
            "the first half restored from a saved state, the rest decoded",
            lambda t, i: bench.cache_hit(t, len(t.prompt) // 2),
        ),
        (
            "repeat",
            "all but the last prompt token held (slot reuse), the last decoded",
            lambda t, i: bench.repeat(t),
        ),
        (
            "fork",
            "the whole prompt read by another sequence, copied (seq_cp)",
            lambda t, i: bench.fork(t, len(t.prompt)),
        ),
        (
            "shared prefix",
            "half the prompt copied from another sequence, the rest read",
            lambda t, i: bench.fork(t, len(t.prompt) // 2),
        ),
    ]
    for chunk in args.chunks:
        ways.append((f"chunks of {chunk}", f"the prompt read {chunk} tokens per decode",
                     lambda t, i, c=chunk: bench.alone(t, c)))  # fmt: skip
    for k in args.drafts:
        ways.append((f"drafts of {k}", f"the generated tokens verified {k + 1} a decode",
                     lambda t, i, k=k: bench.drafted(t, k)))  # fmt: skip
    outcomes = []
    for name, what, way in ways:
        o = Outcome(name, what)
        for i, (t, ref) in enumerate(zip(traces, refs, strict=True)):
            o.add(ref, way(t, i))
        outcomes.append(o.record())
        print(f"  {label} {kernels} {name}: max|d| {o.max_abs_diff:.3g}, "
              f"argmax changed in {o.argmax_changed}/{o.rows} rows", file=sys.stderr)  # fmt: skip
    return {
        "model": label,
        "flash_attn": kernels != "off",
        "kernels": KERNELS[kernels],
        "threads": args.threads,
        "prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "rows_per_prompt": args.tokens,
        "ways": outcomes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def threads_way(path: Path, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """The reference itself at other thread counts, against `args.threads`'s, with each of
    `--fa`'s kernels."""
    from infer.runtime.api import load
    from infer.runtime.params import LoadOptions

    rows: dict[tuple[int, str], list[np.ndarray]] = {}
    traces: list[Trace] = []
    for threads in [args.threads, *[t for t in args.other_threads if t != args.threads]]:
        for kernels in [x for x in args.fa.split(",") if x]:
            opts = LoadOptions(threads=threads, ctx_size=SEQS * N_CTX_SEQ)
            model = load(str(path), replace(opts, deterministic=kernels == "mode"))
            try:
                bench = Bench(model, {"on": True, "off": False}.get(kernels), args.tokens)
                try:
                    if not traces:
                        traces = [bench.greedy(p) for p in prompts_from_docs(model, args.prompts)]
                    rows[(threads, kernels)] = [bench.alone(t) for t in traces]
                finally:
                    bench.close()
            finally:
                model.close()
    outcomes = []
    for (threads, kernels), got in rows.items():
        if threads == args.threads:
            continue
        o = Outcome(f"{threads} threads, {KERNELS[kernels]}",
                    f"alone, {threads} threads instead of {args.threads}")  # fmt: skip
        for ref, g in zip(rows[(args.threads, kernels)], got, strict=True):
            o.add(ref, g)
        outcomes.append(o.record())
        print(f"  {label} {o.name}: max|d| {o.max_abs_diff:.3g}, argmax changed in "
              f"{o.argmax_changed}/{o.rows} rows", file=sys.stderr)  # fmt: skip
    return {"model": label, "threads": args.threads, "ways": outcomes}


def scheduled(model: Any, ctx: Any, prompt: list[int], others: list[list[int]], rows: int) -> Any:
    """`prompt`'s answer through the scheduler (log-probabilities on), after `others` joined
    and took two steps (or alone)."""
    from infer.runtime.generation.scheduler import BatchRequest, Scheduler
    from infer.runtime.params import GenerateOptions, SamplingParams

    greedy = SamplingParams(temperature=0)
    s = Scheduler(model, ctx)
    for seq in range(SEQS):
        ctx.remove(seq)
    for i, other in enumerate(others):
        s.join(BatchRequest(1 + i, other, greedy, GenerateOptions(max_tokens=64)))
    for _ in range(2 if others else 0):
        s.step()
    s.join(BatchRequest(0, prompt, greedy, GenerateOptions(max_tokens=rows, logprobs=2)))
    while True:
        for r in s.step()[0]:
            if r.index == 0:
                return r


def scheduler_way(path: Path, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Through the scheduler that `infer serve` and `--batch` run, with and without the mode:
    each prompt answered alone, then again after three other prompts joined and while they
    generate (its prompt read beside their tokens); how many answers' log-probabilities (and
    texts) differ from the alone ones. What the mode changes, shown here rather than in a test.
    """
    from infer.runtime.api import load
    from infer.runtime.params import LoadOptions

    out = []
    for deterministic in (False, True):
        opts = LoadOptions(threads=args.threads, ctx_size=SEQS * N_CTX_SEQ)
        model = load(str(path), replace(opts, deterministic=deterministic))
        ctx = model.new_context(SEQS, N_CTX_SEQ, N_BATCH)
        prompts = prompts_from_docs(model, args.prompts)
        o = Outcome(f"scheduler{' --deterministic' if deterministic else ''}", "")
        o.what = "the answer alone, then with 3 other prompts joined before it"
        texts = 0
        try:
            for i, prompt in enumerate(prompts):
                others = [prompts[(i + k) % len(prompts)] for k in (3, 5, 7)]
                alone = scheduled(model, ctx, prompt, [], args.tokens)
                loaded = scheduled(model, ctx, prompt, others, args.tokens)
                ref = np.array([[t.logprob] for t in alone.logprobs])
                got = np.array([[t.logprob] for t in loaded.logprobs[: len(alone.logprobs)]])
                if len(got) == len(ref):
                    o.add(ref, got)
                texts += alone.text != loaded.text
        finally:
            ctx.close()
            model.close()
        record = o.record()
        record.update(texts_changed=texts, model=label)
        out.append(record)
        print(f"  {label} {o.name}: logprob max|d| {o.max_abs_diff:.3g}, {o.rows_differing}/"
              f"{o.rows} logprobs differ, {texts} texts differ", file=sys.stderr)  # fmt: skip
    return out


def requantized(src: Path, type_name: str, folder: Path) -> Path:
    """The bundled model requantized to `type_name` by llama.cpp's quantizer (in a child
    process: its log goes to its own stdout)."""
    import subprocess

    out = folder / f"smollm2-{type_name}.gguf"
    if not out.exists():
        code = (
            "import sys; from infer.runtime.llama.quantizer import quantize_file; "
            "sys.exit(quantize_file(sys.argv[1], sys.argv[2], sys.argv[3], 2, True))"
        )
        subprocess.run([sys.executable, "-c", code, str(src), str(out), type_name],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a GGUF (default: the bundled SmolLM2 Q4_1)")
    parser.add_argument("--types", default="", help="also requantized copies: Q8_0,Q4_0,F16,...")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=12, help="rows compared per prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--other-threads", default="1", help="thread counts to compare with")
    parser.add_argument("--chunks", default="1,2,16,64,200")
    parser.add_argument("--drafts", default="4", help="draft lengths verified (K: K+1 rows)")
    parser.add_argument(
        "--fa", default="on,off,mode", help="flash attention on, off, the deterministic mode's"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 prompts, 4 rows")
    parser.add_argument("--no-logits", action="store_true", help="only the cost")
    parser.add_argument("--no-cost", action="store_true", help="only the logits")
    parser.add_argument("--no-scheduler", action="store_true", help="not the scheduler's part")
    parser.add_argument("--merge", nargs="+", type=Path, help="only join these runs' JSON files")
    parser.add_argument("--cost-clients", default="1,4,8")
    parser.add_argument("--cost-rounds", type=int, default=3)
    parser.add_argument("--cost-tokens", type=int, default=128)
    add_json_arg(parser, "determinism")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.json)
    if args.quick:
        args.prompts, args.tokens, args.chunks = 3, 4, "2,64"
    args.chunks = [int(c) for c in args.chunks.split(",") if c]
    args.drafts = [int(c) for c in args.drafts.split(",") if c]
    args.other_threads = [int(c) for c in args.other_threads.split(",") if c]
    args.cost_clients = [int(c) for c in args.cost_clients.split(",") if c]
    os.environ.setdefault("INFER_SHARE_CORES", "0")
    src = args.model or bundled_model()
    models = [(src, "SmolLM2-135M Q4_1" if args.model is None else src.name)]
    work = Path(tempfile.mkdtemp(prefix="infer-determinism-models-"))
    for type_name in [t for t in args.types.split(",") if t]:
        models.append(
            (requantized(src, type_name, work), f"SmolLM2-135M {type_name} (requantized)")
        )
    logits: list[dict[str, Any]] = []
    try:
        for path, label in models if not args.no_logits else []:
            print(f"{label}:", file=sys.stderr)
            logits.extend(measure_model(path, label, args))
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    results = {"logits": logits, "cost": None if args.no_cost else cost(args, src)}
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "model")}
    write_results(args.json, "determinism.py", settings, results)


if __name__ == "__main__":
    main()
