"""Workloads where a server's prompt cache decides the speed: `infer serve` against llama-server.

    python benchmarks/workloads.py [--model PATH] [--rounds 3] [--parallel 4] [--ctx-size 2048]
                                   [--workloads chat,document,restart]
                                   [--llama-server-args="--cache-ram 0"] [--quick] [--json FILE]

(a) chat: 8 users × 6 turns each, every user's conversation growing by its question and the
    answer each turn (the users at once, each user's turns one after another);
(b) document: a ~2,000-token text and 20 questions about it from 4 clients (5 each, one after
    another), the text first in every prompt so all share it;
(c) (b) again after the server restarted: infer's prompt cache is on disk, llama-server's in its
    slots (and host memory), so only infer can skip re-reading the document.

Both servers run the bundled model with the same slots and cells (`--parallel 4 --ctx-size 2048`
/ `-np 4 -c 8192`, split KV cache), their default threads, and their best cache settings: infer's
prompt cache (its default) under a home of its own per round, llama-server's
`--cache-reuse 256 -sps 0.10` (slot similarity) and its default host-memory cache (`--cache-ram`).
Requests are streamed /v1/chat/completions at temperature 0. Reported per workload and server:
the total time (the median of the rounds) and the time to first token over every request of
every round: the 95th percentile when the pool holds at least MIN_P95 requests, else the maximum
(`ttft_stat` says which), and what each server says it did on its `/metrics` (llama-server's
`llamacpp:*` series, which infer serves too): the prompt tokens it read (not those its caches
gave) and its decodes. Rounds interleave the servers (A B, B A …). `--llama-server-args` adds
flags to llama-server's (`--cache-ram 0`: its cache in its slots only). `--quick` is a smoke
run (small counts, one round): its figures are not measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import add_json_arg, compile_infer, wait_quiet, write_results
from serve import MIN_P95, Server, build_llama_server, free_port, percentile
from vs_llamacpp import bundled_model, infer_exe

SYSTEM = "You are a helpful assistant. Answer briefly and precisely."
NAMES = ["Ashford", "Brook", "Calder", "Dunmore", "Elm", "Fenwick", "Glen", "Harrow", "Ives"]
THINGS = ["lanterns", "barrels", "sheep", "boats", "bells", "looms", "carts", "kilns"]
TOPICS = [
    "the history of bread", "how rivers form", "why the sky is blue", "the rules of chess",
    "how bees make honey", "the life of a lighthouse keeper", "how bridges carry weight",
    "what makes a good map",
]  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    users: int
    turns: int
    facts: int  # sentences of the document: ~24 tokens each (80: ~1,900, within a 2,048-cell slot)
    questions: int
    clients: int
    tokens: int  # max_tokens of every answer


FULL = Sizes(users=8, turns=6, facts=80, questions=20, clients=4, tokens=48)
QUICK = Sizes(users=4, turns=2, facts=30, questions=8, clients=4, tokens=16)


def fact(i: int) -> tuple[str, str]:
    """The i-th sentence of the document, and a question it answers."""
    town, thing = NAMES[i % len(NAMES)], THINGS[(i // len(NAMES)) % len(THINGS)]
    count = (i * 37) % 90 + 10
    place = f"{town} {i}"
    return (
        f"In the village of {place}, the old miller keeps {count} {thing} by the river mill.",
        f"How many {thing} does the miller of {place} keep?",
    )


def document(n: int) -> str:
    return " ".join(fact(i)[0] for i in range(n))


async def ask(
    client: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, str]], tokens: int
) -> tuple[float, str, int]:
    """(seconds to the first token, the answer, prompt tokens) of one streamed chat request."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, parts, usage = None, [], {}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    parts.append(text)
    elapsed = time.perf_counter() - start
    return (
        (ttft if ttft is not None else elapsed),
        "".join(parts),
        int(usage.get("prompt_tokens", 0)),
    )


Samples = tuple[float, list[float], list[int]]  # wall time, TTFTs, prompt tokens
# What a server says it did, from its /metrics: prompt tokens read, decodes.
WORK = {"prompt_tokens_read": "llamacpp:prompt_tokens_total", "decodes": "llamacpp:n_decode_total"}


def work(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("llamacpp:"))
    return {name: float(values[series]) for name, series in WORK.items()}


async def chat(port: int, model: str, sizes: Sizes) -> Samples:
    """(a): each user's turns one after another, the users at once."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    fresh = httpx.Limits(max_keepalive_connections=0)  # llama-server drops idle keep-alives
    async with httpx.AsyncClient(timeout=900, limits=fresh) as client:

        async def user(u: int) -> list[tuple[float, int]]:
            messages = [{"role": "system", "content": f"{SYSTEM} You are talking to user {u}."}]
            out = []
            for t in range(sizes.turns):
                topic = TOPICS[(u + t) % len(TOPICS)]
                messages.append({"role": "user", "content": f"Tell me about {topic}. (turn {t})"})
                ttft, text, prompt = await ask(client, url, model, messages, sizes.tokens)
                messages.append({"role": "assistant", "content": text})
                out.append((ttft, prompt))
            return out

        start = time.perf_counter()
        results = await asyncio.gather(*(user(u) for u in range(sizes.users)))
        wall = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    return wall, [r[0] for r in flat], [r[1] for r in flat]


async def questions(port: int, model: str, sizes: Sizes) -> Samples:
    """(b) and (c): the questions shared out among the clients, each client's in turn."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    text = document(sizes.facts)
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=900, limits=fresh) as client:

        async def client_run(c: int) -> list[tuple[float, int]]:
            out = []
            for q in range(c, sizes.questions, sizes.clients):
                question = fact((q * 7) % sizes.facts)[1]
                messages = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"{text}\n\nQuestion: {question}"},
                ]
                ttft, _, prompt = await ask(client, url, model, messages, sizes.tokens)
                out.append((ttft, prompt))
            return out

        start = time.perf_counter()
        results = await asyncio.gather(*(client_run(c) for c in range(sizes.clients)))
        wall = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    return wall, [r[0] for r in flat], [r[1] for r in flat]


def commands(
    args: argparse.Namespace, model: Path, server: Path, port: int
) -> dict[str, list[str]]:
    return {
        "infer": [
            infer_exe(), "serve", str(model), "--port", str(port),
            "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size),
        ],
        "llama-server": [
            str(server), "-m", str(model), "--port", str(port), "-np", str(args.parallel),
            "-c", str(args.ctx_size * args.parallel), "--no-webui",
            "--cache-reuse", "256", "-sps", "0.10", "--metrics",
            *args.llama_server_args.split(),
        ],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4, help="slots of each server")
    ap.add_argument("--ctx-size", type=int, default=2048, help="cells per slot")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small counts, one round")
    ap.add_argument("--workloads", default="chat,document,restart", help="restart: after document")
    ap.add_argument("--llama-server-args", default="", help="more flags for llama-server")
    add_json_arg(ap, "workloads")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    rounds = 1 if args.quick else args.rounds
    model = args.model or bundled_model()
    server_bin = build_llama_server()
    compile_infer()
    port = free_port()
    cmds = commands(args, model, server_bin, port)
    walls: dict[tuple[str, str], list[float]] = {}
    ttfts: dict[tuple[str, str], list[float]] = {}
    prompts: dict[tuple[str, str], list[int]] = {}
    did: dict[tuple[str, str], list[dict[str, float]]] = {}
    chosen = args.workloads.split(",")
    runs = [
        w for w in ("chat", "document") if w in chosen or (w == "document" and "restart" in chosen)
    ]

    def record(name: str, workload: str, samples: Samples) -> None:
        wall, ttft, prompt = samples
        walls.setdefault((name, workload), []).append(wall)
        ttfts.setdefault((name, workload), []).extend(ttft)
        prompts.setdefault((name, workload), []).extend(prompt)
        did.setdefault((name, workload), []).append(work(port))
        print(f"{name:12} {workload:9} {wall:7.2f} s  max ttft {max(ttft):.2f} s  "
              f"{did[(name, workload)][-1]}", file=sys.stderr)  # fmt: skip

    for rnd in range(rounds):
        for name in cmds if rnd % 2 == 0 else list(reversed(cmds)):
            with tempfile.TemporaryDirectory(prefix="workloads-home-") as home:
                # infer's prompt cache lives in its home: fresh each round, kept over (c)'s restart
                os.environ["INFER_HOME"] = home
                for workload in runs:
                    with Server(name, cmds[name], port):
                        wait_quiet()
                        go = chat if workload == "chat" else questions
                        record(name, workload, asyncio.run(go(port, str(model), sizes)))
                if "restart" in chosen:
                    with Server(name, cmds[name], port):  # restarted: (c)
                        wait_quiet()
                        record(name, "restart", asyncio.run(questions(port, str(model), sizes)))
    results: dict[str, dict[str, object]] = {}
    for workload in [w for w in ("chat", "document", "restart") if w in chosen]:
        results[workload] = {}
        for name in cmds:
            key = (name, workload)
            pool = ttfts[key]
            enough = len(pool) >= MIN_P95
            results[workload][name] = {
                "total_s": statistics.median(walls[key]),
                "total_rounds": walls[key],
                "ttft": percentile(pool, 0.95) if enough else max(pool),
                "ttft_stat": "p95" if enough else "max",
                "ttft_p50": statistics.median(pool),
                "ttft_n": len(pool),
                "prompt_tokens_mean": statistics.mean(prompts[key]),
                **{k: statistics.median(d[k] for d in did[key]) for k in WORK},
            }
        i, s = results[workload]["infer"], results[workload]["llama-server"]
        print(f"{workload}: infer {i}\n  llama-server {s}")
    settings = {
        "model": model.name,
        "rounds": rounds,
        "quick": args.quick,
        "parallel": args.parallel,
        "ctx_size": args.ctx_size,
        **{f: getattr(sizes, f) for f in Sizes.__dataclass_fields__},
        "llama_server_flags": " ".join(["--cache-reuse 256 -sps 0.10", args.llama_server_args]),
    }
    write_results(args.json, "workloads.py", settings, results, min_p95=MIN_P95)


if __name__ == "__main__":
    main()
