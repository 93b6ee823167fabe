"""Several generations at once on one machine: infer against llama.cpp's llama-completion.

    python benchmarks/concurrency.py [--model PATH] [--n 1,2] [--tokens 64] [--rounds 2]
                                     [--variants shared,unshared,passive] [--json FILE]

For each N, N processes of one tool start together, each generating `--tokens` tokens from the
same chat-templated prompt with default threads (llama-completion gets -t = infer's default,
the physical cores), at temperature 0, both stopping where the model ends its answer (infer has
no --ignore-eos, so llama-completion runs without it too; the tokens each side generated are
recorded). Reported per tool and N: the aggregate (all tokens generated / wall time
from the first start to the last exit) and each process's own generation tok/s (min and max: a
starving process shows as a low min). Ratios are against the same tool at N = 1, measured in the
same round. Rounds interleave the tools (A B, B A …). llama-completion is built from the
vendored llama.cpp as vs_llamacpp.py does (cached in ~/.cache/infer-bench).

infer variants (the mechanisms compared):
- shared:   the default: decoding processes share the cores (runtime/llama/core_share.py)
- unshared: INFER_SHARE_CORES=0, every process keeps all its threads (infer before the change)
- passive:  unshared, with OMP_WAIT_POLICY=passive (OpenMP threads sleep instead of spinning)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_arg, compile_infer, machine, wait_quiet, write_results
from vs_llamacpp import build_llamacpp, bundled_model, chat_prompt, infer_exe

PROMPT = "Write a long story about a dragon who learns to fly."
VARIANTS = {
    "shared": {},
    "unshared": {"INFER_SHARE_CORES": "0"},
    "passive": {"INFER_SHARE_CORES": "0", "OMP_WAIT_POLICY": "passive"},
}
_EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) (?:runs|tokens)")


def group(cmds: list[list[str]], env: dict[str, str]) -> tuple[float, list[tuple[int, int, float]]]:
    """Start every command at once; (wall seconds, [(tokens, decode steps, their seconds)])."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **env},
        )
        for cmd in cmds
    ]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - start
    results = []
    for cmd, proc, (out, err) in zip(cmds, procs, outs, strict=True):
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
        results.append(_generated(out, err))
    return wall, results


def _generated(out: str, err: str) -> tuple[int, int, float]:
    """(tokens generated, decode steps, their seconds), from `infer run --json` (its stats) or
    llama-completion's perf lines on stderr. Counted alike on both sides: the first token is
    sampled from the prompt's logits, so N tokens take N - 1 decode steps (llama-completion's
    "eval" runs; infer's first piece to last)."""
    if out.startswith("{"):
        stats = json.loads(out)["stats"]
        tokens = int(stats["generated_tokens"])
        return tokens, max(tokens - 1, 0), float(stats["generate_s"])
    found = _EVAL.findall(err)
    if not found:
        sys.exit(f"no eval timings in llama-completion's output:\n{err[-2000:]}")
    ms, n = found[-1]
    return int(n) + 1, int(n), float(ms) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n", default="1,2", help="process counts (comma-separated)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="shared,unshared", help=", ".join(VARIANTS))
    add_json_arg(parser, "concurrency")
    args = parser.parse_args()
    counts = [int(x) for x in args.n.split(",")]
    variants = args.variants.split(",")
    model = (args.model or bundled_model()).resolve()
    bin_dir = build_llamacpp()
    compile_infer()
    text, _ = chat_prompt(model, PROMPT)  # the same question infer is asked
    from infer.runtime.params import physical_cores

    threads = physical_cores()
    home = tempfile.mkdtemp(prefix="infer-bench-home-")
    n = str(args.tokens)
    completion = [str(bin_dir / "llama-completion"), "-m", str(model), "-t", str(threads)]
    completion += ["-p", text, "-n", n, "--temp", "0", "-no-cnv"]  # as infer: stops at EOS
    completion += ["--no-display-prompt"]
    infer = [infer_exe(), "run", str(model), PROMPT, "-n", n, "--temperature", "0", "--json"]
    infer += ["--no-prompt-cache"]
    tools: dict[str, tuple[list[str], dict[str, str]]] = {"llama-completion": (completion, {})}
    for v in variants:
        tools[f"infer ({v})"] = (infer, {"INFER_HOME": home, **VARIANTS[v]})
    # tool -> N -> [(aggregate tok/s, min per-process, max per-process, tokens)] per round
    data: dict[str, dict[int, list[tuple[float, float, float, int]]]] = {
        t: {c: [] for c in counts} for t in tools
    }
    group([infer], tools[f"infer ({variants[0]})"][1])  # untimed: page cache, bytecode
    for round_no in range(args.rounds):
        order = list(tools) if round_no % 2 == 0 else list(tools)[::-1]
        for count in counts:
            for tool in order:
                cmd, env = tools[tool]
                wait_quiet()
                wall, results = group([cmd] * count, env)
                total = sum(tok for tok, _, _ in results)
                rates = [steps / s for _, steps, s in results if s > 0]
                data[tool][count].append((total / wall, min(rates), max(rates), total))
                print(
                    f"round {round_no + 1} N={count} {tool}: aggregate {total / wall:.1f} tok/s, "
                    f"per process {min(rates):.1f}-{max(rates):.1f} tok/s, {wall:.1f} s",
                    file=sys.stderr,
                )
    summary = report(data, counts, threads, args.tokens)
    settings = {"model": model.name, "n": counts, "tokens": args.tokens, "rounds": args.rounds,
                "threads": threads, "variants": variants}  # fmt: skip
    write_results(args.json, "concurrency.py", settings, summary)


def report(data: dict, counts: list[int], threads: int, tokens: int) -> dict[str, object]:
    print(f"machine: {machine()}; {threads} threads alone; {tokens} tokens per process")
    print("| tool | N | aggregate tok/s | vs N=1 | per-process tok/s (min-max) |")
    print("|---|---|---|---|---|")
    results: dict[str, object] = {}
    for tool, by_n in data.items():
        alone = statistics.median(a for a, _, _, _ in by_n[counts[0]])
        rows_out = {}
        for count in counts:
            rows = by_n[count]
            agg = statistics.median(a for a, _, _, _ in rows)
            lo = min(lo for _, lo, _, _ in rows)
            hi = max(hi for _, _, hi, _ in rows)
            print(f"| {tool} | {count} | {agg:.1f} | {agg / alone:.2f} | {lo:.1f}-{hi:.1f} |")
            rows_out[str(count)] = {
                "aggregate_tps": agg,
                "vs_alone": agg / alone,
                "per_process_min": lo,
                "per_process_max": hi,
                "tokens_per_process": [t / count for _, _, _, t in rows],
            }
        results[tool] = rows_out
    return results


if __name__ == "__main__":
    main()
