"""`infer embed` against llama.cpp's `llama-embedding`, and against embedding one text per call.

    python benchmarks/embed.py [--model PATH] [--lines 120] [--rounds 5] [--single 10] [--json FILE]

The same file of `--lines` distinct sentences (8–20 words), the same model, pooling (mean),
batches (4096 tokens, micro-batches of 512, up to 256 texts: set explicitly, as llama-embedding
picks them by itself; its -np is left out, since any -np but 1 also splits its KV cache per
sequence) and threads. Timed from process start to exit,
model load included; one untimed run of each first (page cache, bytecode), then interleaved
rounds (A B, B A …), each run on a quiet machine (common.wait_quiet):

- llama-embedding: `llama-embedding -m MODEL -f FILE -c 4096 -b 4096 -ub 512 --pooling mean
  -t T` (it packs the lines into batches, a sequence per line; its printing is left as is)
- infer:           `infer embed MODEL --file FILE --json -c 4096 -np 256 --pooling mean -t T`
  (infer's micro-batch is 512 for a causal model, as llama-embedding's)
- one call each:   `infer embed MODEL "LINE"` per line, for the first `--single` lines; the rate
  per line is what 1,000 such calls would take.

Targets (issue 15): infer ≥ 0.95× llama-embedding's lines/s; ≥ 3× one call at a time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_arg, compile_infer, machine, wait_quiet, write_results
from vs_llamacpp import build_llamacpp, bundled_model, infer_exe

TEXT = (
    "river mill bread lantern storm bridge valley garden morning winter letter window market "
    "harbor mountain forest candle library music teacher village engine silver orange quiet "
    "bright ancient gentle sudden careful distant narrow golden open walk write carry build "
    "watch listen remember follow answer travel"
)
WORDS = TEXT.split()


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
        out.append(f"{i}: " + " ".join(words).capitalize() + ".")
    return out


def timed(cmd: list[str]) -> float:
    wait_quiet()
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {result.stderr.decode()[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--lines", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=10, help="lines embedded one call each")
    ap.add_argument("--threads", type=int, default=2)
    add_json_arg(ap, "embed")
    args = ap.parse_args()
    model = (args.model or bundled_model()).resolve()
    tool = build_llamacpp(targets=("llama-embedding",)) / "llama-embedding"
    compile_infer()
    lines = sentences(args.lines)
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "lines.txt"
        docs.write_text("\n".join(lines), encoding="utf-8")
        t = str(args.threads)
        commands = {
            "llama-embedding": [str(tool), "-m", str(model), "-f", str(docs), "-c", "4096",
                                "-b", "4096", "-ub", "512", "--pooling", "mean", "-t", t],
            "infer": [infer_exe(), "embed", str(model), "--file", str(docs), "--json", "-c",
                      "4096", "-np", "256", "--pooling", "mean", "-t", t],
        }  # fmt: skip
        for name in commands:  # warm-up, untimed: the model file in the page cache
            timed(commands[name])
        times: dict[str, list[float]] = {name: [] for name in commands}
        single: list[float] = []
        for rnd in range(args.rounds):
            order = list(commands) if rnd % 2 == 0 else list(reversed(commands))
            for name in order:
                times[name].append(timed(commands[name]))
                print(f"round {rnd + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
            started = time.perf_counter()
            for line in lines[: args.single]:
                timed_one = [infer_exe(), "embed", str(model), line, "--pooling", "mean", "-t", t]
                subprocess.run(timed_one, stdout=subprocess.DEVNULL, check=True)
            single.append((time.perf_counter() - started) / args.single)
            print(f"round {rnd + 1} one call each: {single[-1]:.3f} s per line", file=sys.stderr)
    rate = {name: args.lines / statistics.median(v) for name, v in times.items()}
    one = 1 / statistics.median(single)
    print(f"{machine()}  model {model.name}  {args.lines} lines  threads {args.threads}  "
          f"rounds {args.rounds}")  # fmt: skip
    print("| tool | seconds (median) | lines/s | ratio |")
    print("|---|---|---|---|")
    base = rate["llama-embedding"]
    for name in commands:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {rate[name]:.1f} | {rate[name] / base:.3f} |")
    print(f"| infer, one call per line | {1 / one:.3f} per line | {one:.1f} | "
          f"{one / base:.3f} |")  # fmt: skip
    print(f"infer packed / one call per line: {rate['infer'] / one:.1f}x")
    results = {
        name: {"seconds": times[name], "lines_per_s": rate[name], "vs_llama_embedding":
               rate[name] / base}
        for name in commands
    }  # fmt: skip
    results["infer, one call per line"] = {
        "seconds_per_line": single,
        "lines_per_s": one,
        "vs_llama_embedding": one / base,
    }
    settings = {"model": model.name, "lines": args.lines, "rounds": args.rounds,
                "single": args.single, "threads": args.threads}  # fmt: skip
    write_results(args.json, "embed.py", settings, results)


if __name__ == "__main__":
    main()
