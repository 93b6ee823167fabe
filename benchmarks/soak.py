"""Soak: N clients of mixed traffic against `infer serve` with two models, bounded by a
duration and a request count, loopback only.

The two models are the bundled SmolLM2 by its alias and the same file by its path (two loaded
models, each its own decode thread). Each client loops over a weighted mix: chat and
completions (streamed and not), embeddings, JSON-schema answers, tool calls, Ollama's
/api/chat, Anthropic's /v1/messages, the Responses API, streams cancelled after their first
chunk, slow readers, and invalid requests (a 4xx expected). Reported: requests by kind and
status, 5xx, whether every temperature-0 request's text equals its first answer, p50/p99 time
to first token (streams) and total time, the server's RSS / open files / threads at minute 2
(or half-way, for a shorter run) and at the end, and /metrics totals against the client's
counts.

    python benchmarks/soak.py --clients 16 --duration 600 --max-requests 100000

Writes benchmarks/results/soak.json (common.write_results; --json elsewhere), which
benchmarks/render.py renders into benchmarks/README.md. A run shorter than 10 minutes (or under
INFER_BENCH_NO_WAIT=1) is recorded as a smoke run: the issue's figures need >= 10 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from common import add_json_arg, write_results

PROMPTS = ["Say hi", "Name a colour", "What is 2+2?", "Translate 'Hola' to English"]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MIX = {  # kind: weight
    "chat": 14,
    "chat_stream": 14,
    "completion": 8,
    "completion_stream": 8,
    "embeddings": 6,
    "json_schema": 6,
    "tools": 6,
    "ollama": 6,
    "anthropic": 6,
    "responses": 6,
    "cancel": 6,
    "slow_reader": 4,
    "invalid": 10,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def resources(pid: int) -> dict[str, Any]:
    fields = dict(
        ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln
    )
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def request_for(kind: str, model: str, prompt: str, tokens: int) -> tuple[str, dict[str, Any]]:
    """(path, body) of one request of `kind`."""
    messages = [{"role": "user", "content": prompt}]
    base = {"model": model, "temperature": 0, "max_tokens": tokens}
    if kind in ("chat", "chat_stream", "cancel", "slow_reader"):
        body = {**base, "messages": messages, "stream": kind != "chat"}
        return "/v1/chat/completions", body
    if kind in ("completion", "completion_stream"):
        return "/v1/completions", {**base, "prompt": prompt, "stream": kind != "completion"}
    if kind == "embeddings":
        return "/v1/embeddings", {"model": model, "input": [prompt, prompt + "!"]}
    if kind == "json_schema":
        fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
        return "/v1/chat/completions", {**base, "messages": messages, "response_format": fmt}
    if kind == "tools":
        return "/v1/chat/completions", {**base, "messages": messages, "tools": [TOOL]}
    if kind == "ollama":
        options = {"temperature": 0, "num_predict": tokens}
        return "/api/chat", {
            "model": model,
            "messages": messages,
            "stream": False,
            "options": options,
        }
    if kind == "anthropic":
        return "/v1/messages", {**base, "messages": messages}
    if kind == "responses":
        body = {"model": model, "input": prompt, "temperature": 0, "max_output_tokens": tokens}
        return "/v1/responses", body
    bad = random.choice(
        [
            {"model": model, "messages": "not a list"},
            {"model": model, "messages": messages, "temperature": -3},
            {"model": 7, "messages": messages},  # "" is the served model (llama-server)
            {"model": model, "messages": messages, "max_tokens": "many"},
            {"model": model, "messages": messages, "n": 10_000},
        ]
    )
    return "/v1/chat/completions", bad


def answer_text(kind: str, data: Any) -> str | None:
    """The text of a temperature-0 answer, for the same-answer check (None: not comparable)."""
    try:
        if kind in ("chat", "json_schema"):
            return str(data["choices"][0]["message"]["content"])
        if kind == "completion":
            return str(data["choices"][0]["text"])
        if kind == "ollama":
            return str(data["message"]["content"])
        if kind == "anthropic":
            return "".join(b.get("text", "") for b in data["content"])
    except (KeyError, IndexError, TypeError):
        return None
    return None


class Soak:
    def __init__(self, url: str, models: list[str], tokens: int) -> None:
        self.url, self.models, self.tokens = url, models, tokens
        self.kinds: Counter[str] = Counter()
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.first: dict[tuple[str, str, str], str] = {}
        self.same, self.differ = 0, 0
        self.examples_differ: list[dict[str, str]] = []
        self.sent = 0

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        model = random.choice(self.models)
        prompt = random.choice(PROMPTS)
        path, body = request_for(kind, model, prompt, self.tokens)
        self.kinds[kind] += 1
        t = time.perf_counter()
        try:
            if body.get("stream"):
                status = await self.stream(client, kind, path, body, t)
            else:
                r = await client.post(self.url + path, json=body)
                status = str(r.status_code)
                if r.status_code == 200:
                    self.check_same(kind, model, prompt, r)
        except httpx.HTTPError as e:
            status = type(e).__name__
        self.statuses[kind][status] += 1
        self.total.append(time.perf_counter() - t)

    async def stream(
        self, client: httpx.AsyncClient, kind: str, path: str, body: dict[str, Any], t: float
    ) -> str:
        async with client.stream("POST", self.url + path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return str(r.status_code)
            async for chunk in r.aiter_bytes():
                if chunk and len(self.ttft) < 10**6 and t >= 0:
                    self.ttft.append(time.perf_counter() - t)
                    t = -1.0  # only the first chunk counts
                if kind == "cancel":
                    return "cancelled"  # leaving the block closes the connection mid-stream
                if kind == "slow_reader":
                    await asyncio.sleep(0.2)
        return "200"

    def check_same(self, kind: str, model: str, prompt: str, r: httpx.Response) -> None:
        text = answer_text(kind, r.json())
        if text is None:
            return
        key = (kind, model, prompt)
        first = self.first.setdefault(key, text)
        if text == first:
            self.same += 1
        else:
            self.differ += 1
            if len(self.examples_differ) < 5:
                self.examples_differ.append({"kind": kind, "first": first, "now": text})

    async def client(self, deadline: float, budget: list[int]) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        async with httpx.AsyncClient(timeout=300) as client:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                await self.one(client, random.choices(kinds, weights)[0])


async def metrics(url: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=60) as client:
        text = (await client.get(url + "/metrics")).text
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("infer_requests_total{"):
            code = line.split('"')[1]
            out[code] = int(float(line.split()[-1]))
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from infer.runtime import resolve

    path = str(resolve("smollm2").path)
    models = ["smollm2", path]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        tempfile.TemporaryDirectory() as home,
        tempfile.NamedTemporaryFile("w", prefix="soak-serve-", suffix=".log", delete=False) as log,
    ):
        env = {**os.environ, "INFER_HOME": home, "HF_HUB_OFFLINE": "1"}
        flags = ["--port", str(port), "--parallel", str(args.parallel), "--ctx-size", "1024"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "infer", "serve", *models, *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        try:
            async with httpx.AsyncClient() as c:
                for _ in range(1200):
                    if proc.poll() is not None:
                        raise SystemExit(f"infer serve exited {proc.returncode} (see {log.name})")
                    try:
                        if (await c.get(url + "/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            before = await metrics(url)
            soak = Soak(url, models, args.tokens)
            start = time.monotonic()
            deadline = start + args.duration
            budget = [args.max_requests]
            checkpoint = min(120.0, args.duration / 2)
            clients = [
                asyncio.create_task(soak.client(deadline, budget)) for _ in range(args.clients)
            ]
            await asyncio.sleep(checkpoint)
            at_checkpoint = resources(proc.pid)
            await asyncio.gather(*clients)
            elapsed = time.monotonic() - start
            await asyncio.sleep(1)  # the server's last access-log records
            at_end = resources(proc.pid)
            after = await metrics(url)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    counted = {c: after.get(c, 0) - before.get(c, 0) for c in set(after) | set(before)}
    client_codes: Counter[str] = Counter()
    for per_kind in soak.statuses.values():
        for status, n in per_kind.items():
            if status.isdigit():
                client_codes[status] += n
    server_errors = sum(n for code, n in client_codes.items() if code.startswith("5"))
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "requests": sum(soak.kinds.values()),
        "by_kind": {k: dict(v) for k, v in sorted(soak.statuses.items())},
        "5xx": server_errors,
        "temperature_0": {
            "same": soak.same,
            "differ": soak.differ,
            "examples": soak.examples_differ,
        },
        "ttft_s": {"p50": percentile(soak.ttft, 50), "p99": percentile(soak.ttft, 99)},
        "total_s": {"p50": percentile(soak.total, 50), "p99": percentile(soak.total, 99)},
        "resources": {f"at_{round(checkpoint)}s": at_checkpoint, "end": at_end},
        "metrics_vs_client": {
            "metrics": {c: n for c, n in sorted(counted.items()) if n},
            "client": dict(sorted(client_codes.items())),
            # a cancelled stream is a 200 to the server; the first /metrics read counts too
            "match": all(
                counted.get(code, 0)
                == n
                + (
                    (sum(v.get("cancelled", 0) for v in soak.statuses.values())) + 1
                    if code == "200"
                    else 0
                )
                for code, n in client_codes.items()
            ),
        },
        "server_alive": alive,
        "server_log": log.name,  # the access log: one line per request
        "mean_request_s": round(statistics.mean(soak.total), 3) if soak.total else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=600, help="seconds")
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=16, help="max tokens per answer")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    add_json_arg(ap, "soak")
    args = ap.parse_args()
    random.seed(args.seed)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    settings = {k: getattr(args, k) for k in ("clients", "duration", "max_requests", "tokens",
                                               "parallel", "seed")}  # fmt: skip
    # the figures need >= 10 minutes: anything shorter only shows that it runs
    smoke = args.duration < 600 or os.environ.get("INFER_BENCH_NO_WAIT") == "1"
    write_results(args.json, "soak.py", settings, result, smoke=smoke)


if __name__ == "__main__":
    main()
