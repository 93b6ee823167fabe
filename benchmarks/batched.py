"""`infer run --batch` against llama.cpp's llama-batched-bench, and against one-at-a-time runs.

    python benchmarks/batched.py [--model PATH] [--threads N] [--rounds 3] [-B 1,4,8]

For each B (sequences decoded together), interleaved in every round:

- llama.cpp: `llama-batched-bench -npp P -ntg N -npl B` (built once from the vendored source,
  next to vs_llamacpp.py's tools); its S_TG is generated tokens / time of the generation steps.
- infer: runtime.batch.BatchDecoder (what `infer run --batch --parallel B` runs) on B prompts of
  exactly P tokens, N tokens each (end-of-generation ignored, as the bench does); the same
  figure from its generation steps, sampling included (the bench samples nothing).
- sequential: the same B prompts one after the other through the engine (`infer run`'s path);
  speedup = (B*N / batch wall time) / (B*N / sequential wall time), prompts included.

Target: infer's generation tok/s >= 0.9x llama-batched-bench's at every B.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    Sample,
    add_json_arg,
    compile_infer,
    machine,
    measure,
    run,
    summary,
    wait_quiet,
    write_results,
)
from vs_llamacpp import build_llamacpp, bundled_model

TARGET = 0.9
CLEAN = 0.05  # samples taken while other processes used more of the CPUs are left out
TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type made "
    "books cheaper to produce than ever before. Scholars, merchants and priests soon relied on "
    "printed pamphlets, maps and calendars, and literacy spread across the towns of Europe. "
)


def batched_bench(bin_dir: Path) -> Path:
    """llama-batched-bench, built (only that target) in vs_llamacpp.py's build tree."""
    exe = bin_dir / "llama-batched-bench"
    if not exe.exists():
        print("building llama-batched-bench …", file=sys.stderr)
        run(["cmake", "--build", str(bin_dir.parent), "--target", "llama-batched-bench", "-j", "2"])
    return exe


def llama_side(exe: Path, model: Path, args: argparse.Namespace, b: int) -> float:
    out = run(
        [
            str(exe), "-m", str(model), "-t", str(args.threads), "-npp", str(args.prompt),
            "-ntg", str(args.gen), "-npl", str(b), "--output-format", "jsonl",
        ]
    )  # fmt: skip
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith('{"n_kv_max"'):
            return float(json.loads(line)["speed_tg"])
    sys.exit(f"no result from llama-batched-bench:\n{out.stdout[-1000:]}{out.stderr[-1000:]}")


class InferSide:
    """The model loaded once; batch and sequential runs over it."""

    def __init__(self, model: Path, args: argparse.Namespace) -> None:
        from infer.runtime import GenerateOptions, LoadOptions, SamplingParams, load, resolve

        self.args = args
        self.engine: Any = load(
            resolve(str(model)), LoadOptions(ctx_size=512, threads=args.threads)
        )
        # The default sampler chain (top-k, top-p, min-p, temperature), as a user gets it.
        self.sampling = SamplingParams(seed=1)
        self.options = GenerateOptions(max_tokens=args.gen)
        self.session = self.engine.new_session()  # the sequential runs, as `infer run`
        words = self.engine.tokenize(TEXT * 40, False)
        self.prompts = [words[7 * i : 7 * i + args.prompt] for i in range(max(args.batches))]

    def batch(self, b: int) -> dict[str, float]:
        from infer.runtime.generation.batch import BatchDecoder, BatchRequest

        requests = [BatchRequest(i, self.prompts[i], self.sampling, self.options) for i in range(b)]
        # The same KV size as the bench (the trained 8192 cells shared by B sequences).
        with BatchDecoder(self.engine, b, 8192 // b) as decoder:
            started = time.perf_counter()
            results = list(decoder.run(requests, ignore_eog=True))
            wall = time.perf_counter() - started
        assert sum(r.generated_tokens for r in results) == b * self.args.gen
        return {"generation": decoder.stats.decode_tps, "total": b * self.args.gen / wall}

    def sequential(self, b: int) -> float:
        cancel = threading.Event()
        started = time.perf_counter()
        for prompt in self.prompts[:b]:
            self.session.reset()  # as a fresh `infer run`
            tokens = self.session.generate(prompt, self.sampling, cancel, ignore_eog=True)
            for count, _piece in enumerate(tokens, 1):
                if count == self.args.gen:
                    break
            tokens.close()
        return b * self.args.gen / (time.perf_counter() - started)


def sample(fn: Any, args: argparse.Namespace) -> Sample:
    """One figure on as quiet a machine as the wait allows (other sessions share the cores and
    their threads wreck a multi-threaded run): retaken up to 3 times while others interfered."""
    if not args.no_wait:
        wait_quiet(timeout=args.wait)
    return measure(fn, tries=3, quiet=False)


Samples = dict[int, dict[str, list[tuple[float, float]]]]  # B -> figure -> (value, interference)


def compare(args: argparse.Namespace, exe: Path, model: Path) -> Samples:
    infer = InferSide(model, args)
    for b in args.batches:  # untimed warm-up of both sides
        infer.batch(b)
    llama_side(exe, model, args, 1)
    data: Samples = {
        b: {"llama": [], "infer": [], "total": [], "sequential": []} for b in args.batches
    }
    for round_no in range(args.rounds):
        for b in args.batches:
            theirs = sample(lambda b=b: llama_side(exe, model, args, b), args)
            ours = sample(lambda b=b: infer.batch(b), args)
            seq = sample(lambda b=b: infer.sequential(b), args)
            row = data[b]
            row["llama"].append((theirs.value, theirs.interference))
            row["infer"].append((ours.value["generation"], ours.interference))
            row["total"].append((ours.value["total"], ours.interference))
            row["sequential"].append((seq.value, seq.interference))
            print(
                f"round {round_no + 1}/{args.rounds} B={b}: llama.cpp S_TG {theirs.value:.1f} · "
                f"infer {ours.value['generation']:.1f} (total {ours.value['total']:.1f}) · "
                f"sequential {seq.value:.1f} tok/s (interference {theirs.interference:.0%}/"
                f"{ours.interference:.0%}/{seq.interference:.0%})",
                file=sys.stderr,
            )
    return data


def clean(samples: list[tuple[float, float]]) -> list[float]:
    """The samples no other process disturbed; all of them if there is none (marked then)."""
    quiet = [value for value, interference in samples if interference <= CLEAN]
    return quiet or [value for value, _ in samples]


def report(args: argparse.Namespace, model: Path, data: Samples) -> bool:
    version = importlib.metadata.version("llama_cpp_python")
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; llama-cpp-python {version}")
    print(
        f"model: {model.name}; threads {args.threads}; {args.prompt} prompt + {args.gen} "
        f"generated tokens per sequence; {args.rounds} interleaved rounds; medians (± stdev) "
        f"of the samples other processes used at most {CLEAN:.0%} of the CPUs during"
    )
    print()
    print(
        "| B | llama-batched-bench S_TG | infer --batch generation | ratio | target | "
        "infer --batch, prompts included | one at a time | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for b, samples in data.items():
        row = {key: clean(values) for key, values in samples.items()}
        ratio = statistics.median(row["infer"]) / statistics.median(row["llama"])
        speedup = statistics.median(row["total"]) / statistics.median(row["sequential"])
        passed = ratio >= TARGET
        ok = ok and passed
        print(
            f"| {b} | {summary(row['llama'])} | {summary(row['infer'])} | {ratio:.3f} | "
            f">= {TARGET} {'ok' if passed else 'MISSED'} | {summary(row['total'])} | "
            f"{summary(row['sequential'])} | {speedup:.2f}x |"
        )
    return ok


def main() -> None:
    from infer.runtime.params import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "-B", "--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8]
    )
    parser.add_argument("-p", "--prompt", type=int, default=64, help="prompt tokens per sequence")
    parser.add_argument("-n", "--gen", type=int, default=64, help="generated tokens per sequence")
    parser.add_argument("--jobs", type=int, default=2, help="build parallelism")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    parser.add_argument("--wait", type=float, default=120, help="most seconds to wait for one")
    add_json_arg(parser, "batched")
    args = parser.parse_args()
    exe = batched_bench(build_llamacpp(args.jobs))
    model = (args.model or bundled_model()).resolve()
    compile_infer()
    data = compare(args, exe, model)
    ok = report(args, model, data)
    # per B and figure: the samples no other process disturbed (all, if none was quiet)
    results = {str(b): {key: clean(values) for key, values in row.items()} for b, row in
               data.items()}  # fmt: skip
    settings = {"model": model.name, "threads": args.threads, "rounds": args.rounds,
                "batches": args.batches, "prompt": args.prompt, "gen": args.gen}  # fmt: skip
    write_results(args.json, "batched.py", settings, results, target=f">= {TARGET}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
