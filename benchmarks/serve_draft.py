"""Speculative decoding in the server: `infer serve --draft` against llama-server's own.

    python benchmarks/serve_draft.py [--model PATH] [--draft-model PATH] [--clients 4]
                                     [--tokens 128] [--paragraphs 0] [--rounds 2]
                                     [--parallel 4] [--draft-max N] [--always]
                                     [--deterministic] [--json FILE]

Each server runs alone (started, measured, stopped) on the same model, slots and context per
slot, plain and with drafting, on two pairs:

  lookup   infer `--draft lookup`               llama-server `--spec-type ngram-simple`
  model    infer `--draft DRAFT`                llama-server `-md DRAFT --spec-type draft-simple`

There is one real model here (the bundled SmolLM2-135M), so the draft model defaults to the
same file: every draft is accepted, which measures the machinery (drafting, verification,
batching) rather than a real pair; pass --draft-model for a real one (same tokenizer).

The load: --clients chat requests at once, each the typo-fixing task of
benchmarks/speculative.py over one paragraph of its story (--paragraphs 0: the whole story for
every client), greedy, at most --tokens tokens. Reported per server and mode: the aggregate
(generated tokens / wall time of the whole load), the speed-up of drafting over the same
server's plain decoding, and whether the drafted answers equal the plain ones (with
--deterministic they must, for infer: docs/determinism.md). Rounds interleave the servers;
samples wait for a quiet machine (common.py). The JSON goes to
benchmarks/results/serve_draft.json (common.write_results; --json elsewhere), which
benchmarks/render.py renders into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from common import add_json_arg, compile_infer, wait_quiet, write_results
from serve import Server, build_llama_server, free_port
from speculative import INSTRUCTION, STORY, with_typos
from vs_llamacpp import bundled_model, infer_exe


def prompts(clients: int, whole: bool) -> list[str]:
    paragraphs = STORY.split("\n\n")
    texts = (
        [STORY] * clients if whole else [paragraphs[i % len(paragraphs)] for i in range(clients)]
    )
    return [INSTRUCTION + with_typos(t) for t in texts]


async def ask(client: httpx.AsyncClient, url: str, model: str, text: str, tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    response = await client.post(url, json=body)
    response.raise_for_status()
    answer = response.json()
    return {
        "text": answer["choices"][0]["message"]["content"],
        "tokens": int(answer["usage"]["completion_tokens"]),
    }


async def load(port: int, model: str, texts: list[str], tokens: int) -> tuple[float, list[dict]]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    fresh = httpx.Limits(max_keepalive_connections=0)  # llama-server drops idle connections
    async with httpx.AsyncClient(timeout=900, limits=fresh) as client:
        await ask(client, url, model, texts[0], 4)  # warm-up: compute buffers, first graph
        start = time.perf_counter()
        answers = await asyncio.gather(*(ask(client, url, model, t, tokens) for t in texts))
        return time.perf_counter() - start, list(answers)


def commands(args: argparse.Namespace, model: Path, draft: Path, port: int) -> dict[str, list]:
    infer = [
        infer_exe(), "serve", str(model), "--port", str(port), "--parallel", str(args.parallel),
        "--ctx-size", str(args.ctx_size), "--no-prompt-cache",
        *(["--deterministic"] if args.deterministic else []),
    ]  # fmt: skip
    llama = [
        str(build_llama_server()), "-m", str(model), "--port", str(port),
        "-np", str(args.parallel), "-c", str(args.ctx_size * args.parallel), "--no-webui",
        "--cache-ram", "0",
    ]  # fmt: skip
    infer_max = ["--draft-max", str(args.draft_max)] if args.draft_max else []
    infer_max += ["--draft-always"] if args.always else []
    llama_max = ["--spec-draft-n-max", str(args.draft_max)] if args.draft_max else []
    return {
        "infer plain": infer,
        "infer lookup": [*infer, "--draft", "lookup", *infer_max],
        "infer model": [*infer, "--draft", str(draft), *infer_max],
        "llama-server plain": llama,
        "llama-server lookup": [*llama, "--spec-type", "ngram-simple", *llama_max],
        # -md alone loads the draft model but drafts nothing: --spec-type defaults to none
        "llama-server model": [
            *llama,
            "-md",
            str(draft),
            "--spec-type",
            "draft-simple",
            *llama_max,
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--draft-model", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--paragraphs", type=int, default=1, help="1: a paragraph each; 0: all")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx-size", type=int, default=2048, help="per slot")
    ap.add_argument("--draft-max", type=int, default=None, help="both sides' draft cap")
    ap.add_argument("--always", action="store_true", help="infer drafts at every step")
    ap.add_argument(
        "--deterministic", action="store_true", help="infer serve --deterministic, every mode"
    )
    ap.add_argument("--modes", default="plain,lookup,model")
    ap.add_argument("--no-quiet", action="store_true", help="do not wait for a quiet machine")
    add_json_arg(ap, "serve_draft")
    args = ap.parse_args()
    model = args.model or bundled_model()
    draft = args.draft_model or model
    compile_infer()
    port = free_port()
    cmds = commands(args, model, draft, port)
    modes = args.modes.split(",")
    names = [n for n in cmds if n.split()[-1] in modes]
    texts = prompts(args.clients, args.paragraphs == 0)
    samples: dict[str, list[float]] = {n: [] for n in names}
    answers: dict[str, list[str]] = {}
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else list(reversed(names)):
            with Server(name.replace(" ", "-"), cmds[name], port):
                if not args.no_quiet:
                    wait_quiet()
                wall, out = asyncio.run(load(port, str(model), texts, args.tokens))
            tps = sum(a["tokens"] for a in out) / wall
            samples[name].append(tps)
            answers[name] = [a["text"] for a in out]
            print(f"round {rnd + 1} {name:20} {tps:7.1f} tok/s ({wall:.1f} s)", file=sys.stderr)
    report = summarise(samples, answers)
    print(json.dumps(report["speedups"], indent=2))
    rest = {k: v for k, v in vars(args).items() if k not in ("json", "model", "draft_model")}
    settings = {"model": model.name, "draft_model": draft.name, **rest}
    # without the quiet-machine gate (--no-quiet, INFER_BENCH_NO_WAIT=1) or with fewer than 3
    # rounds the figures are a smoke run's
    no_wait = os.environ.get("INFER_BENCH_NO_WAIT") == "1"
    smoke = args.no_quiet or no_wait or args.rounds < 3
    write_results(args.json, "serve_draft.py", settings, report, smoke=smoke)


def summarise(samples: dict[str, list[float]], answers: dict[str, list[str]]) -> dict[str, Any]:
    median = {n: statistics.median(v) for n, v in samples.items() if v}
    speedups, same = {}, {}
    for server in ("infer", "llama-server"):
        plain = median.get(f"{server} plain")
        for mode in ("lookup", "model"):
            name = f"{server} {mode}"
            if plain and name in median:
                speedups[name] = round(median[name] / plain, 3)
                same[name] = answers[name] == answers[f"{server} plain"]
    return {
        "aggregate_tps": {n: [round(x, 2) for x in v] for n, v in samples.items()},
        "median_tps": {n: round(v, 2) for n, v in median.items()},
        "speedups": speedups,  # drafting over the same server's plain decoding
        "same_answers_as_plain": same,
    }


if __name__ == "__main__":
    main()
