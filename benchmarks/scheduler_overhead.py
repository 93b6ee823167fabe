"""The Python cost per generated token of continuous batching (what `infer serve` and
`infer run --batch` add on top of llama.cpp's decode).

    python benchmarks/scheduler_overhead.py [--model PATH] [--parallel 1,4,8] [--tokens 128]

Runs the Scheduler (runtime/generation/scheduler.py) on a real LlamaContext with N sequences of
`--tokens` tokens each (ignore_eos), timing every llama_decode call separately from the whole
step. Overhead per token = (step time - decode time) / generated tokens: filling the batch,
sampling (llama.cpp's sampler chain, a ctypes call per sequence), UTF-8 joining and stop-string
checks, bookkeeping. Printed next to the decode time per step, which it should be small against.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import add_json_arg, write_results

from infer.runtime import LoadOptions, SamplingParams, load
from infer.runtime.generation.scheduler import BatchRequest, Scheduler
from infer.runtime.params import GenerateOptions


def run(model: str, parallel: int, tokens: int) -> tuple[float, float, int, int]:
    engine = load(model, LoadOptions(ctx_size=256))
    ctx = engine.new_context(parallel, 512, 512)  # type: ignore[attr-defined]
    decode_s = 0.0
    real_decode = ctx.decode

    def timed_decode(cancel: object = None) -> None:
        nonlocal decode_s
        started = time.perf_counter()
        real_decode(cancel)
        decode_s += time.perf_counter() - started

    ctx.decode = timed_decode
    s = Scheduler(engine, ctx)
    prompt = engine.tokenize("Once upon a time, in a small village by the sea,", False)
    options = GenerateOptions(max_tokens=tokens, ignore_eog=True)
    for i in range(parallel):
        s.join(BatchRequest(i, prompt, SamplingParams(temperature=0.8, seed=i), options))
    s.step()  # the prompts: not counted
    decode_s, generated, steps = 0.0, 0, 0
    started = time.perf_counter()
    while s.running():
        _, counts = s.step()
        generated += counts.generated_tokens
        steps += 1
    total = time.perf_counter() - started
    ctx.close()
    engine.close()
    return total, decode_s, generated, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--parallel", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    add_json_arg(ap, "scheduler_overhead")
    args = ap.parse_args()
    model = str(Path(args.model)) if Path(args.model).exists() else args.model
    print("| sequences | tok/s | decode ms/step | Python µs/token | Python share |")
    print("|---|---|---|---|---|")
    results = {}
    for n in (int(x) for x in args.parallel.split(",")):
        rows = [run(model, n, args.tokens) for _ in range(args.rounds)]
        total = statistics.median(r[0] for r in rows)
        decode = statistics.median(r[1] for r in rows)
        generated, steps = rows[0][2], rows[0][3]
        overhead_us = (total - decode) / generated * 1e6
        print(
            f"| {n} | {generated / total:.1f} | {decode / steps * 1e3:.2f} | "
            f"{overhead_us:.1f} | {(total - decode) / total:.1%} |"
        )
        results[str(n)] = {
            "tps": generated / total,
            "decode_ms_per_step": decode / steps * 1e3,
            "python_us_per_token": overhead_us,
            "python_share": (total - decode) / total,
        }
    settings = {"model": args.model, "parallel": args.parallel, "tokens": args.tokens,
                "rounds": args.rounds}  # fmt: skip
    write_results(args.json, "scheduler_overhead.py", settings, results)


if __name__ == "__main__":
    main()
