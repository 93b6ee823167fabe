"""The prompt cache across runs: time to first token of `infer run` with a ~2,000-token document
piped in and a different question at the end each time, with the prompt cache and without it.

    python benchmarks/prompt_cache.py [--model smollm2] [--rounds 5] [--threads N] [--no-wait]

Three kinds of run, each a fresh `infer run MODEL "QUESTION" -n 8 --json < document` process
(the natural pattern: the piped document comes first in the prompt, the question after it;
`--placeholder` writes "{stdin} QUESTION" instead, the explicit form):

- uncached: `--no-prompt-cache`, the whole prompt evaluated (the baseline);
- cold: the cache on but empty (cleared first): the whole prompt evaluated, then saved;
- warm: the cache holds the document (with another question): only the new question evaluated.

Every round runs all three, cold first (it fills the cache), then uncached and warm in an order
that alternates from round to round, so load on the shared machine affects both alike; each
sample waits for an idle machine and is retaken when other processes interfered (common.py).
TTFT is infer's own `ttft_s` (request start → first token: prompt evaluation, cache restore and
save included; model load excluded); `wall` is the whole process. Target: warm TTFT <= 25% of
uncached.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import add_json_arg, compile_infer, machine, measure, summary, write_results

TARGET = 0.25
QUESTIONS = [
    "How many ships did the keeper on island 12 count?",
    "Which islands had stormy weather?",
    "How many cats are on island 31?",
    "What did every keeper write about?",
    "Which island counted the most ships?",
    "Summarise the log in one sentence.",
    "What was the weather on island 7?",
    "How many sections does the log have?",
]


def document(sections: int = 51) -> str:
    """A deterministic ~2,000-token log (SmolLM2's tokenizer: about 39 tokens a section)."""
    rng = random.Random(6)
    weather = ["calm", "windy", "foggy", "stormy", "clear", "rainy"]
    lines = []
    for i in range(1, sections + 1):
        lines.append(
            f"Section {i}. The keeper on island {i} counted {rng.randint(3, 90)} ships, logged "
            f"the weather as {rng.choice(weather)}, fed {rng.randint(1, 9)} cats and wrote to "
            f"the harbour master about the {rng.choice(['lamp', 'stairs', 'boat', 'radio'])}."
        )
    return "\n".join(lines)


def infer_exe() -> str:
    found = shutil.which("infer", path=os.path.dirname(sys.executable)) or shutil.which("infer")
    if not found:
        sys.exit("the infer command is not installed in this environment")
    return found


def ask(args: argparse.Namespace, home: str, question: str, *flags: str) -> dict[str, Any]:
    prompt = ("{stdin}\n\n" if args.placeholder else "") + "Question: " + question
    cmd = [
        infer_exe(), "run", args.model, prompt, "--temperature", "0",
        "-n", "8", "-t", str(args.threads), "--json", *flags,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(
        cmd, input=args.doc, capture_output=True, text=True, check=False,
        env={**os.environ, "INFER_HOME": home},
    )  # fmt: skip
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    stats: dict[str, Any] = json.loads(result.stdout)["stats"]
    return {**stats, "wall_s": wall}


def clear(home: str) -> None:
    shutil.rmtree(os.path.join(home, "cache", "prompt-cache"), ignore_errors=True)


def rounds(args: argparse.Namespace, home: str) -> dict[str, list[dict[str, Any]]]:
    data: dict[str, list[dict[str, Any]]] = {"uncached": [], "cold": [], "warm": []}
    ask(args, home, QUESTIONS[-1], "--no-prompt-cache")  # untimed: page cache, lazy loading
    for r in range(args.rounds):
        cold_q, q = QUESTIONS[(2 * r) % len(QUESTIONS)], QUESTIONS[(2 * r + 1) % len(QUESTIONS)]

        def cold(cold_q: str = cold_q) -> dict[str, Any]:
            clear(home)
            return ask(args, home, cold_q)

        sides = {
            "cold": cold,
            "uncached": lambda q=q: ask(args, home, q, "--no-prompt-cache"),
            "warm": lambda q=q: ask(args, home, q),
        }
        order = ["cold", "uncached", "warm"] if r % 2 == 0 else ["cold", "warm", "uncached"]
        for side in order:
            sample = measure(sides[side], quiet=not args.no_wait, tries=3)
            data[side].append({**sample.value, "interference": sample.interference})
            v = sample.value
            print(
                f"round {r + 1}/{args.rounds} {side:8}: ttft {v['ttft_s'] * 1000:7.0f} ms, "
                f"prompt {v['prompt_tokens']} tok ({v['prompt_eval_tokens']} evaluated), "
                f"wall {v['wall_s']:.2f} s (interference {sample.interference:.0%})",
                file=sys.stderr,
            )
    return data


def entry_size(home: str) -> int:
    result = subprocess.run(
        [infer_exe(), "cache", "list", "--json"], capture_output=True, text=True, check=True,
        env={**os.environ, "INFER_HOME": home},
    )  # fmt: skip
    return int(json.loads(result.stdout)["total_bytes"])


def report(args: argparse.Namespace, data: dict[str, list[dict[str, Any]]], size: int) -> bool:
    version = importlib.metadata.version("llama_cpp_python")
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; llama-cpp-python {version}")
    print(
        f"model: {args.model}; threads {args.threads}; {args.rounds} rounds; -n 8; "
        f"{'{stdin} QUESTION' if args.placeholder else 'QUESTION + piped document'}; "
        f"a cache entry of the document: {size / 1e6:.1f} MB"
    )
    print()
    print("| run | TTFT ms | prompt tokens | evaluated | process wall s |")
    print("|---|---|---|---|---|")
    for side in ("uncached", "cold", "warm"):
        rows = data[side]
        ttft = [r["ttft_s"] * 1000 for r in rows]
        tokens = statistics.median(r["prompt_tokens"] for r in rows)
        evaluated = statistics.median(r["prompt_eval_tokens"] for r in rows)
        print(
            f"| {side} | {summary(ttft)} | {tokens:.0f} | {evaluated:.0f} "
            f"| {summary([r['wall_s'] for r in rows])} |"
        )
    med = {side: statistics.median(r["ttft_s"] for r in data[side]) for side in data}
    ratio, overhead = med["warm"] / med["uncached"], med["cold"] / med["uncached"]
    ok = ratio <= TARGET
    print()
    print(
        f"warm / uncached TTFT: {ratio:.3f} (target <= {TARGET}: {'ok' if ok else 'MISSED'}); "
        f"cold / uncached (the cost of saving): {overhead:.3f}"
    )
    return ok


def main() -> None:
    from infer.runtime.params import physical_cores

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", type=int, default=51, help="document length")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    parser.add_argument("--placeholder", action="store_true", help='"{stdin} QUESTION" form')
    add_json_arg(parser, "prompt_cache")
    args = parser.parse_args()
    args.doc = document(args.sections)
    compile_infer()
    home = tempfile.mkdtemp(prefix="infer-bench-prompt-cache-")
    try:
        data = rounds(args, home)
        size = entry_size(home)
        ok = report(args, data, size)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    settings = {"model": args.model, "threads": args.threads, "rounds": args.rounds,
                "sections": args.sections, "form": "{stdin} QUESTION" if args.placeholder
                else "QUESTION + piped document"}  # fmt: skip
    write_results(args.json, "prompt_cache.py", settings, data, entry_bytes=size, target=TARGET)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
