"""`infer serve` against llama.cpp's `llama-server`: the same model, slots and load generator.

    python benchmarks/serve.py [--model PATH] [--clients 1,4,8] [--requests 2] [--rounds 3]
                               [--prompt-words 48] [--tokens 128] [--parallel 8] [--json FILE]

llama-server is built from the llama.cpp source that the installed llama-cpp-python's sdist
vendors (as vs_llamacpp.py builds llama-bench; cached in ~/.cache/infer-bench). Each server runs
alone (started, measured, stopped), with the same slots (`--parallel N` / `-np N`), the same
context per slot, and its default threads. For each concurrency C, C clients each send
`--requests` streaming /v1/completions requests one after another: a distinct prompt of about
`--prompt-tokens` tokens (so no prefix cache helps), `--tokens` tokens out (`ignore_eos`, so
both generate exactly that many). Reported per server and C: the aggregate (all generated
tokens / wall time from the first request to the last answer; the median of the rounds) and
time to first token over every request of every round: the median, and the 95th percentile
where the pool holds at least MIN_P95 requests, else the maximum (recorded as such). Rounds
interleave the servers (A B, B A …); ratios are infer / llama-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import add_json_arg, compile_infer, run, wait_quiet, write_results
from vs_llamacpp import build_llamacpp, bundled_model, cache_root, infer_exe

TEXT = (
    "the river bends past an old mill where a miller keeps bread warm for travellers who walk "
    "from the hills at dusk carrying lanterns and stories of storms that broke the bridges"
)
WORDS = TEXT.split()


def build_llama_server() -> Path:
    """llama-server from the same vendored llama.cpp (the build folder of llama-bench, with
    the server target switched on)."""
    bin_dir = build_llamacpp()
    server = bin_dir / "llama-server"
    if server.exists():
        return server
    build = bin_dir.parent
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    source = cache_root() / build.parent.name / "sdist" / "vendor" / "llama.cpp"
    run(["cmake", "-S", str(source), "-B", str(build), *generator, "-DLLAMA_BUILD_SERVER=ON"])
    run(["cmake", "--build", str(build), "--target", "llama-server", "-j", "2"])
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prompt(i: int, n_words: int) -> str:
    words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(n_words)]
    return f"Story {i}: " + " ".join(words)


class Server:
    def __init__(self, name: str, cmd: list[str], port: int) -> None:
        self.name, self.cmd, self.port = name, cmd, port
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}: {self.cmd}")
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:  # it died under load: say how
            print(f"{self.name} exited with {self.proc.returncode}; log: {self.log.name}",
                  file=sys.stderr)  # fmt: skip
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, text: str, tokens: int
) -> tuple[float, int, int]:
    """(seconds to the first token, generated tokens, prompt tokens) of one streamed request."""
    body = {
        "model": model,
        "prompt": text,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, usage = None, {}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if ttft is None and choices and choices[0].get("text"):
                ttft = time.perf_counter() - start
    return ttft or 0.0, int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0))


async def load(
    port: int, model: str, clients: int, requests: int, n_words: int, tokens: int, seed: int
) -> tuple[float, list[tuple[float, int, int]]]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    # A fresh connection per request: llama-server closes idle keep-alive connections, and a
    # reused closed one fails the request ("Server disconnected without sending a response").
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=fresh) as client:

        async def user(c: int) -> list[tuple[float, int, int]]:
            return [
                await one_request(
                    client, url, model, prompt(seed + c * requests + r, n_words), tokens
                )
                for r in range(requests)
            ]

        start = time.perf_counter()
        results = await asyncio.gather(*(user(c) for c in range(clients)))
        wall = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    return wall, flat


MIN_P95 = 20  # requests in the pool before its 95th percentile means anything


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=2, help="per client, one after another")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-words", type=int, default=48, help="about 64 tokens with SmolLM2")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=1024, help="per slot")
    add_json_arg(ap, "serve")
    args = ap.parse_args()
    model = args.model or bundled_model()
    server_bin = build_llama_server()
    compile_infer()
    levels = [int(c) for c in args.clients.split(",")]
    port = free_port()
    commands = {
        "infer": [
            infer_exe(), "serve", str(model), "--port", str(port),
            "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size),
            "--no-prompt-cache",
        ],
        "llama-server": [
            str(server_bin), "-m", str(model), "--port", str(port), "-np", str(args.parallel),
            "-c", str(args.ctx_size * args.parallel), "--no-webui",
        ],
    }  # fmt: skip
    env_note = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "INFER_"))}
    # Per (server, clients): each round's aggregate, and every request's TTFT over all rounds:
    # a p95 needs the pool (2-8 requests a round would make "p95" the maximum).
    aggregates: dict[tuple[str, int], list[float]] = {}
    ttfts: dict[tuple[str, int], list[float]] = {}
    prompts: dict[tuple[str, int], list[int]] = {}
    seed = 0
    for rnd in range(args.rounds):
        order = list(commands) if rnd % 2 == 0 else list(reversed(commands))
        for name in order:
            with Server(name, commands[name], port):
                for clients in levels:
                    wait_quiet()
                    wall, flat = asyncio.run(
                        load(
                            port,
                            str(model),
                            clients,
                            args.requests,
                            args.prompt_words,
                            args.tokens,
                            seed,
                        )
                    )
                    seed += 1000
                    generated = sum(r[1] for r in flat)
                    aggregates.setdefault((name, clients), []).append(generated / wall)
                    ttfts.setdefault((name, clients), []).extend(r[0] for r in flat)
                    prompts.setdefault((name, clients), []).extend(r[2] for r in flat)
                    print(
                        f"round {rnd + 1} {name:12} clients={clients}: "
                        f"{generated / wall:.1f} tok/s ({generated} tokens)",
                        file=sys.stderr,
                    )
    results: dict[str, dict[str, object]] = {}
    for clients in levels:
        results[str(clients)] = {}
        for name in commands:
            key = (name, clients)
            pool = ttfts[key]
            results[str(clients)][name] = {
                "aggregate_tps": statistics.median(aggregates[key]),
                "aggregate_rounds": aggregates[key],
                "ttft_p50": statistics.median(pool),
                # a 95th percentile only from enough requests; below that, the maximum
                "ttft_p95": percentile(pool, 0.95) if len(pool) >= MIN_P95 else None,
                "ttft_max": max(pool),
                "ttft_n": len(pool),
                "prompt_tokens": statistics.mean(prompts[key]),
            }
        i, s = results[str(clients)]["infer"], results[str(clients)]["llama-server"]
        print(f"{clients} clients: infer {i}\n  llama-server {s}")
    settings = {
        "model": model.name,
        "clients": levels,
        "requests": args.requests,
        "rounds": args.rounds,
        "prompt_words": args.prompt_words,
        "tokens": args.tokens,
        "parallel": args.parallel,
        "ctx_size": args.ctx_size,
    }
    write_results(args.json, "serve.py", settings, results, env=env_note, min_p95=MIN_P95)


if __name__ == "__main__":
    main()
