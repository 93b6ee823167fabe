"""Grammar-constrained generation: `infer run --json-schema` against `llama-completion`.

    python benchmarks/grammar.py [--model PATH] [--threads N] [--rounds 6] [--items 24]

The same JSON schema, the same chat-templated prompt, greedy decoding, the same thread count.
llama.cpp's tool runs twice per round: with `--json-schema` (llama.cpp's C++ converter, whose
grammar allows other whitespace, so its answer may differ by a few tokens) and with
`--grammar-file` holding exactly the GBNF infer runs (the same tokens: the answers are compared).
The schema asks for an array of exactly --items enum strings, so every side ends at the same,
known length without --ignore-eos (which a grammar cannot combine with).

Reported: generation tok/s, decode steps (the tokens after the first, whose logits come from the
prompt) over the time they took. llama.cpp's own "eval time" line leaves sampling out, and
sampling is where a grammar costs (a rejected token means a pass over the whole vocabulary), so
its rate here is steps / (eval time + sampling time), both from its perf print; infer's is its
`--json` stats' generate_tokens_per_s (everything between the first token and the last). Its
eval-only rate is printed too. Target: infer / llama.cpp >= 0.9. Samples wait for a quiet
machine (common.py).
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
from pathlib import Path

from common import add_json_arg, machine, measure, summary, write_results
from vs_llamacpp import build_llamacpp, bundled_model, chat_prompt, infer_exe

PROMPT = "Which city is the capital of France?"
EVAL = re.compile(r"eval time =\s+([\d.]+) ms /\s+(\d+) runs")  # not "prompt eval": tokens
SAMPLING = re.compile(r"sampling time =\s+([\d.]+) ms")
TARGET = 0.9


def schema(items: int) -> dict[str, object]:
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    return {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "colours": {
                "type": "array",
                "items": {"enum": colours},
                "minItems": items,
                "maxItems": items,
            },
        },
        "required": ["city", "colours"],
        "additionalProperties": False,
    }


def llama_completion(exe: Path, model: Path, text: str, threads: int, flags: list[str]) -> dict:
    cmd = [str(exe), "-m", str(model), "-t", str(threads), "-p", text, "-n", "400", "--temp", "0"]
    cmd += ["-no-cnv", "--no-display-prompt", *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"llama-completion failed: {result.stderr[-2000:]}")
    evals = EVAL.findall(result.stderr)
    ms, runs = float(evals[-1][0]), int(evals[-1][1])
    sampling_ms = float(SAMPLING.findall(result.stderr)[-1])
    return {
        "text": result.stdout.replace("[end of text]", "").strip(),
        "tps": runs / ((ms + sampling_ms) / 1000),
        "eval_only_tps": runs / (ms / 1000),
        "steps": runs,
    }


def infer_run(model: Path, threads: int, schema_text: str, home: str) -> dict:
    cmd = [infer_exe(), "run", str(model), PROMPT, "-t", str(threads), "--temperature", "0"]
    cmd += ["--json-schema", schema_text, "--json", "-n", "400", "--no-prompt-cache"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "INFER_HOME": home}
    )
    if result.returncode != 0:
        sys.exit(f"infer run failed: {result.stderr[-2000:]}")
    record = json.loads(result.stdout)
    stats = record["stats"]
    return {
        "text": record["text"].strip(),
        "tps": stats["generate_tokens_per_s"],
        "eval_only_tps": stats["generate_tokens_per_s"],
        "steps": stats["generated_tokens"] - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--max-busy", type=float, default=0.10)
    add_json_arg(parser, "grammar")
    args = parser.parse_args()
    model = args.model or bundled_model()
    exe = build_llamacpp(targets=("llama-completion",)) / "llama-completion"
    text, _ = chat_prompt(model)
    schema_text = json.dumps(schema(args.items))
    from infer.runtime.llama.grammar import schema_grammar

    home = tempfile.mkdtemp(prefix="infer-bench-home-")
    gbnf = Path(home) / "schema.gbnf"
    gbnf.write_text(schema_grammar(schema_text))
    sides = {
        "infer": lambda: infer_run(model, args.threads, schema_text, home),
        "llama.cpp --grammar-file": lambda: llama_completion(
            exe, model, text, args.threads, ["--grammar-file", str(gbnf)]
        ),
        "llama.cpp --json-schema": lambda: llama_completion(
            exe, model, text, args.threads, ["--json-schema", schema_text]
        ),
    }
    rates: dict[str, list[float]] = {k: [] for k in sides}
    eval_only: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, tuple[str, int]] = {}
    texts: dict[str, set[str]] = {k: set() for k in sides}  # every round's answer
    for fn in sides.values():  # untimed: page cache
        fn()
    for round_no in range(args.rounds):
        order = list(sides) if round_no % 2 == 0 else list(sides)[::-1]
        for side in order:
            sample = measure(sides[side], max_interference=max(0.05, args.max_busy),
                             max_busy=args.max_busy)  # fmt: skip
            rates[side].append(sample.value["tps"])
            eval_only[side].append(sample.value["eval_only_tps"])
            outputs[side] = (sample.value["text"], sample.value["steps"])
            texts[side].add(sample.value["text"])
            print(
                f"round {round_no + 1}/{args.rounds} {side}: {sample.value['tps']:.1f} tok/s "
                f"({sample.value['steps']} steps; others used {sample.interference:.0%})",
                file=sys.stderr,
            )
    print(f"machine: {machine()}")
    print(f"model: {model.name}, threads {args.threads}, schema: {args.items} enum items")
    for side, values in rates.items():
        print(
            f"{side:26} {summary(values)} tok/s  ({outputs[side][1]} decode steps; eval only "
            f"{statistics.median(eval_only[side]):.1f})"
        )
    # Like for like only if both sides wrote the same answer in every round (greedy, the same
    # grammar): otherwise they decoded different tokens and the rates compare different work.
    same = texts["infer"] == texts["llama.cpp --grammar-file"] and len(texts["infer"]) == 1
    print(f"infer's answer equals llama-completion's with the same grammar: {same}")
    if not same:
        for side in ("infer", "llama.cpp --grammar-file"):
            print(f"  {side}: {sorted(texts[side])!r}", file=sys.stderr)
    ok = same
    results: dict[str, dict[str, object]] = {}
    for side in sides:
        ratio = statistics.median(rates["infer"]) / statistics.median(rates[side])
        bare = statistics.median(rates["infer"]) / statistics.median(eval_only[side])
        results[side] = {
            "tps": rates[side],
            "eval_only_tps": eval_only[side],
            "steps": outputs[side][1],
            "infer_ratio": ratio,
            "infer_ratio_eval_only": bare,
        }
        if side != "infer":
            ok &= ratio >= TARGET
            print(f"infer / {side}: {ratio:.3f} (target >= {TARGET}; vs its eval-only {bare:.3f})")
    settings = {"model": model.name, "threads": args.threads, "rounds": args.rounds,
                "items": args.items}  # fmt: skip
    write_results(args.json, "grammar.py", settings, results, same_answer=same,
                  answer=outputs["infer"][0], target=f">= {TARGET}")  # fmt: skip
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
