"""What llama-server's sampling fields cost on `infer serve` and on `llama-server`: the native
/completion with no extra field, with `logit_bias`, with `n_probs`, and with
`post_sampling_probs`.

    python benchmarks/sampling.py [--model PATH] [--tokens 64] [--requests 5] [--rounds 2]
                                  [--json FILE]

Both servers on the same model (the bundled SmolLM2 by default) with one slot of 2048 cells,
built from the vendored llama.cpp; each runs alone (started, measured, stopped), rounds
alternating the order. Every request is the same /completion: a short prompt, `--tokens` tokens
out (`ignore_eos`, so both generate exactly that many), non-streamed. A case's figure is
generated tokens / wall time of a request as the client sees it, the median over all requests
of all rounds, each request taken on a quiet machine (common.measure). Cases:

- plain: temperature 0; logit_bias: 64 tokens banned ([[id, -100], ...]);
- n_probs: temperature 0, `n_probs: 10` (the log-softmax of every token's logits row);
- sampled: temperature 1, seed 1 (top-k 40, top-p 0.95, min-p 0.05: both servers' defaults);
- post_sampling: as sampled, with `n_probs: 10, post_sampling_probs: true` (the probabilities
  the sampler chain left).

Ratios: infer / llama-server per case, and each server's case / its own plain (or sampled).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from common import add_json_arg, compile_infer, measure, write_results
from serve import Server, build_llama_server, free_port
from vs_llamacpp import bundled_model, infer_exe

PROMPT = "The old lighthouse keeper climbed the stairs every evening and"
BANNED = list(range(1000, 1064))  # 64 ids: how many, not which, is what a bias costs
CASES: dict[str, dict[str, Any]] = {
    "plain": {"temperature": 0},
    "logit_bias": {"temperature": 0, "logit_bias": [[t, -100] for t in BANNED]},
    "n_probs": {"temperature": 0, "n_probs": 10},
    "sampled": {"temperature": 1.0, "seed": 1},
    "post_sampling": {"temperature": 1.0, "seed": 1, "n_probs": 10, "post_sampling_probs": True},
}
BASE = {"logit_bias": "plain", "n_probs": "plain", "post_sampling": "sampled"}


def one(port: int, case: dict[str, Any], tokens: int) -> float:
    """Tokens per second of one /completion, as the client sees it."""
    body = {"prompt": PROMPT, "n_predict": tokens, "ignore_eos": True, **case}
    start = time.perf_counter()
    r = httpx.post(f"http://127.0.0.1:{port}/completion", json=body, timeout=600)
    wall = time.perf_counter() - start
    r.raise_for_status()
    answer = r.json()
    assert answer["tokens_predicted"] == tokens, answer["tokens_predicted"]
    if "n_probs" in case:
        assert len(answer["completion_probabilities"]) == tokens
    return tokens / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=5, help="per case, server and round")
    ap.add_argument("--rounds", type=int, default=2)
    add_json_arg(ap, "sampling")
    args = ap.parse_args()
    model = args.model or bundled_model()
    server_bin = build_llama_server()
    compile_infer()
    port = free_port()
    commands = {
        "infer": [infer_exe(), "serve", str(model), "--port", str(port), "--parallel", "1",
                  "--ctx-size", "2048", "--no-prompt-cache"],
        "llama-server": [str(server_bin), "-m", str(model), "--port", str(port), "-np", "1",
                         "-c", "2048", "--no-webui"],
    }  # fmt: skip
    rates: dict[tuple[str, str], list[float]] = {}
    for rnd in range(args.rounds):
        order = list(commands) if rnd % 2 == 0 else list(reversed(commands))
        for name in order:
            with Server(name, commands[name], port) as server:
                assert server.proc is not None
                one(port, CASES["plain"], 4)  # warm: the first request pays one-off costs
                for case, fields in CASES.items():
                    for _ in range(args.requests):
                        request = functools.partial(one, port, fields, args.tokens)
                        sample = measure(request, helpers=[server.proc.pid])
                        rates.setdefault((name, case), []).append(sample.value)
                    tps = statistics.median(rates[(name, case)])
                    print(f"round {rnd + 1} {name:12} {case:14} {tps:.1f} tok/s", file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    for case in CASES:
        ours, theirs = (statistics.median(rates[(n, case)]) for n in commands)
        row = {"infer_tok_s": ours, "llama_server_tok_s": theirs, "infer_vs_llama": ours / theirs}
        if case in BASE:
            base = BASE[case]
            row["infer_vs_own_base"] = ours / statistics.median(rates[("infer", base)])
            row["llama_vs_own_base"] = theirs / statistics.median(rates[("llama-server", base)])
        results[case] = row
        print(case, row)
    settings = {"model": model.name, "tokens": args.tokens, "requests": args.requests,
                "rounds": args.rounds, "slots": 1, "ctx_size": 2048}  # fmt: skip
    write_results(args.json, "sampling.py", settings, results)


if __name__ == "__main__":
    main()
