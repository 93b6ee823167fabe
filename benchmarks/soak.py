"""Soak: N clients of mixed traffic against `infer serve` with two models, bounded by a
duration and a request count, loopback only.

The two models are by default the bundled SmolLM2 by its alias and the same file by its path
(two loaded models, each its own decode thread); --models names others. Each client loops over
soak_mix.MIX: chat and completions (streamed and not), embeddings, JSON-schema answers, forced
tool calls, Ollama's /api/chat and /api/generate, Anthropic's /v1/messages and the Responses
API (each streamed and not), streams cancelled after their first piece of text and slow readers
(0.2 s per line) through any of those doors, and invalid requests over every door (each must
be a 4xx).

Reported: requests by kind and status; 5xx (and the server log's 5xx and bug lines); every
temperature-0 answer (whole or streamed) against the first answer to the same request; answers
of the wrong shape (a JSON-schema answer off its schema, a forced tool call missing); invalid
requests not refused with a 4xx; p50/p99 time to first token (streams: the first piece of text)
and total time, by kind too; the server's RSS / open files / threads at minute 2 (half-way in a
shorter run) and a second before the end (both under load, open connections alike) with their
growth in %, every 10 s between, and once the clients stopped; busy slots and queue depth once
the clients stopped (a stuck slot stays busy); /metrics' request counts against the client's;
the server log's 5xx and bug lines.

    python benchmarks/soak.py --clients 16 --duration 600 --max-requests 100000 \
        [--server-args="--deterministic"]

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
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from common import add_json_arg, write_results
from soak_mix import MIX, PROMPTS, Request, answer_text, build, problem, stream_piece

SLOW_READ_S = 0.2  # a slow reader's pause per line of its stream
SAMPLE_S = 10.0  # the server's resources are sampled this often


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


def growth(first: dict[str, Any], last: dict[str, Any]) -> dict[str, float | None]:
    """Each resource's change from `first` to `last`, in % of `first` (the goal: <= 5)."""
    return {k: round((last[k] - first[k]) / first[k] * 100, 1) if first[k] else None for k in first}


class Soak:
    """The clients' shared tally."""

    def __init__(self, url: str, models: list[str], tokens: int) -> None:
        self.url, self.models, self.tokens = url, models, tokens
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.codes: Counter[str] = Counter()  # every HTTP status the client received
        self.cancelled = 0
        self.ttft: dict[str, list[float]] = defaultdict(list)
        self.total: dict[str, list[float]] = defaultdict(list)
        self.first: dict[tuple[str, str, str], str] = {}
        self.same, self.differ = 0, 0
        self.examples_differ: list[dict[str, str]] = []
        self.problems: Counter[str] = Counter()
        self.problem_examples: list[str] = []

    def note_problem(self, text: str) -> None:
        self.problems[text.split(":")[0]] += 1
        if len(self.problem_examples) < 10:
            self.problem_examples.append(text[:300])

    async def one(self, client: httpx.AsyncClient, kind: str, rng: random.Random) -> None:
        model, prompt = rng.choice(self.models), rng.choice(PROMPTS)
        req = build(kind, model, prompt, self.tokens, rng)
        t = time.perf_counter()
        try:
            if req.stream:
                status = await self.stream(client, req, model, prompt, t)
            else:
                status = await self.whole(client, req, model, prompt)
        except httpx.HTTPError as e:
            status = type(e).__name__
            self.note_problem(f"{kind}: {status} ({req.path})")
        self.statuses[kind][status] += 1
        self.total[kind].append(time.perf_counter() - t)

    async def whole(self, client: httpx.AsyncClient, req: Request, model: str, prompt: str) -> str:
        if isinstance(req.body, bytes):
            headers = {"content-type": "application/json"}
            r = await client.post(self.url + req.path, content=req.body, headers=headers)
        else:
            r = await client.post(self.url + req.path, json=req.body)
        self.codes[str(r.status_code)] += 1
        if req.kind == "invalid":
            if not 400 <= r.status_code < 500:
                self.note_problem(f"invalid: {r.status_code} for {req.path} {req.body!r}")
        elif r.status_code == 200:
            data = r.json()
            if found := problem(req.kind, data):
                self.note_problem(found)
            self.check_same(req.kind, model, prompt, answer_text(req.kind, data))
        return str(r.status_code)

    async def stream(
        self, client: httpx.AsyncClient, req: Request, model: str, prompt: str, t: float
    ) -> str:
        assert isinstance(req.body, dict)
        async with client.stream("POST", self.url + req.path, json=req.body) as r:
            self.codes[str(r.status_code)] += 1
            if r.status_code != 200:
                await r.aread()
                return str(r.status_code)
            text = ""
            async for line in r.aiter_lines():
                piece = stream_piece(req.reads_as, line)
                if piece and not text:
                    self.ttft[req.kind].append(time.perf_counter() - t)
                text += piece
                if req.kind == "cancel" and text:
                    self.cancelled += 1  # leaving the block closes the connection mid-stream
                    return "cancelled"
                if req.kind == "slow_reader":
                    await asyncio.sleep(SLOW_READ_S)
        if req.kind != "cancel":  # a slow reader's answer is its door's streamed answer
            self.check_same(req.reads_as, model, prompt, text)
        return "200"

    def check_same(self, kind: str, model: str, prompt: str, text: str | None) -> None:
        if text is None:
            return
        first = self.first.setdefault((kind, model, prompt), text)
        if text == first:
            self.same += 1
        else:
            self.differ += 1
            if len(self.examples_differ) < 5:
                self.examples_differ.append({"kind": kind, "first": first, "now": text})

    async def client(self, deadline: float, budget: list[int], seed: int) -> None:
        rng = random.Random(seed)
        kinds, weights = list(MIX), list(MIX.values())
        async with httpx.AsyncClient(timeout=300) as client:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                await self.one(client, rng.choices(kinds, weights)[0], rng)


async def scrape(url: str) -> tuple[dict[str, int], dict[str, float]]:
    """/metrics: requests by status code, and the gauges (busy slots, queue depth)."""
    async with httpx.AsyncClient(timeout=60) as client:
        text = (await client.get(url + "/metrics")).text
    codes: dict[str, int] = {}
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("infer_requests_total{"):
            codes[line.split('"')[1]] = int(float(line.split()[-1]))
        elif line.startswith(("infer_busy_slots ", "infer_queue_depth ")):
            gauges[line.split()[0]] = float(line.split()[1])
    return codes, gauges


async def settle(url: str, timeout: float = 60) -> tuple[dict[str, float], int]:
    """Busy slots and queue depth once the clients stopped, waiting up to `timeout` s for them
    to reach 0 (a slot still busy then is stuck); and how many /metrics reads that took."""
    reads, gauges = 0, {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _, gauges = await scrape(url)
        reads += 1
        if not any(gauges.values()):
            break
        await asyncio.sleep(0.5)
    return gauges, reads


def read_log(path: str) -> dict[str, Any]:
    """The server log's 5xx access-log lines and the lines of a bug (a traceback, `error=`)."""
    lines = Path(path).read_text(errors="replace").splitlines()
    status = re.compile(r'" (5\d\d) ')
    loading = '"GET /health" 503'  # while the models load, before the soak begins: deliberate
    bad = [
        ln
        for ln in lines
        if (status.search(ln) and loading not in ln) or "Traceback" in ln or " error=" in ln
    ]
    return {"lines": len(lines), "5xx_or_bug_lines": len(bad), "examples": bad[:5]}


def serve_command(args: argparse.Namespace, models: list[str], port: int) -> list[str]:
    flags = ["--port", str(port), "--parallel", str(args.parallel), "--ctx-size", "1024"]
    # last: a flag given twice takes its last value, so --server-args may override ours
    return [sys.executable, "-m", "infer", "serve", *models, *flags, *args.server_args]


async def start(proc: subprocess.Popen[bytes], url: str, log: str) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(1200):
            if proc.poll() is not None:
                raise SystemExit(f"infer serve exited {proc.returncode} (see {log})")
            try:
                if (await c.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"infer serve did not become ready (see {log})")


async def drive(args: argparse.Namespace, soak: Soak, pid: int) -> dict[str, Any]:
    """The clients, with the server's resources sampled while they run."""
    start_t = time.monotonic()
    deadline = start_t + args.duration
    budget = [args.max_requests]
    checkpoint = min(120.0, args.duration / 2)
    clients = [
        asyncio.create_task(soak.client(deadline, budget, args.seed * 1000 + i))
        for i in range(args.clients)
    ]
    series: list[dict[str, Any]] = []
    at_checkpoint: dict[str, Any] | None = None
    at_end: dict[str, Any] | None = None
    while not all(c.done() for c in clients):
        # the end's sample is taken a second before the deadline, under the same load as the
        # checkpoint's (its open connections included), so that their growth compares alike
        wait = (
            min(SAMPLE_S, max(0.0, deadline - 1 - time.monotonic())) if at_end is None else SAMPLE_S
        )
        await asyncio.wait(clients, timeout=wait)
        now = time.monotonic()
        series.append({"s": round(now - start_t), **resources(pid)})
        if at_checkpoint is None and now - start_t >= checkpoint:
            at_checkpoint = series[-1]
        if at_end is None and now >= deadline - 1:
            at_end = series[-1]
    for c in clients:
        c.result()  # a bug in the client itself surfaces here
    return {
        "elapsed": time.monotonic() - start_t,
        "checkpoint": at_checkpoint or series[0],
        "end": at_end or series[-1],
        "series": series,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from infer.runtime import resolve

    models = args.models or ["smollm2", str(resolve("smollm2").path)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        tempfile.TemporaryDirectory() as home,
        tempfile.NamedTemporaryFile("w", prefix="soak-serve-", suffix=".log", delete=False) as log,
    ):
        env = {**os.environ, "INFER_HOME": home, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            serve_command(args, models, port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        try:
            await start(proc, url, log.name)
            before, _ = await scrape(url)
            soak = Soak(url, models, args.tokens)
            run_ = await drive(args, soak, proc.pid)
            gauges, reads = await settle(url)
            await asyncio.sleep(1)  # the server's last access-log records
            idle = resources(proc.pid)
            after, _ = await scrape(url)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return report(args, soak, run_, before, after, reads, gauges, idle, alive, log.name)


def report(
    args: argparse.Namespace,
    soak: Soak,
    run_: dict[str, Any],
    before: dict[str, int],
    after: dict[str, int],
    reads: int,
    gauges: dict[str, float],
    idle: dict[str, Any],
    alive: bool,
    log: str,
) -> dict[str, Any]:
    counted = {c: after.get(c, 0) - before.get(c, 0) for c in set(after) | set(before)}
    # The server counts our own /metrics reads (the first and those of `settle`) as 200s; the
    # last read does not count itself.
    expected = Counter(soak.codes) + Counter({"200": 1 + reads})
    codes = set(counted) | set(expected)
    checkpoint = run_["checkpoint"]
    all_ttft = [v for vs in soak.ttft.values() for v in vs]
    all_total = [v for vs in soak.total.values() for v in vs]
    server_errors = sum(n for code, n in soak.codes.items() if code.startswith("5"))
    return {
        "clients": args.clients,
        "models": args.models or ["smollm2", "smollm2 by its path"],
        "duration_s": round(run_["elapsed"], 1),
        "requests": sum(sum(v.values()) for v in soak.statuses.values()),
        "by_kind": {k: dict(v) for k, v in sorted(soak.statuses.items())},
        "5xx": server_errors,
        "cancelled_mid_stream": soak.cancelled,
        "temperature_0": {
            "same": soak.same,
            "differ": soak.differ,
            "examples": soak.examples_differ,
        },
        "problems": dict(soak.problems),
        "problem_examples": soak.problem_examples,
        "ttft_s": {"p50": percentile(all_ttft, 50), "p99": percentile(all_ttft, 99)},
        "total_s": {"p50": percentile(all_total, 50), "p99": percentile(all_total, 99)},
        "total_s_by_kind": {
            k: {"p50": percentile(v, 50), "p99": percentile(v, 99)}
            for k, v in sorted(soak.total.items())
        },
        "resources": {
            f"at_{checkpoint['s']}s": checkpoint,
            f"end (at_{run_['end']['s']}s)": run_["end"],
            "idle after": idle,
        },
        "growth_pct": growth(
            {k: checkpoint[k] for k in ("rss_mb", "open_files", "threads")}, run_["end"]
        ),
        "resource_series": run_["series"],
        "after_clients": {
            "busy_slots": gauges.get("infer_busy_slots"),
            "queue_depth": gauges.get("infer_queue_depth"),
        },
        "metrics_vs_client": {
            "metrics": {c: n for c, n in sorted(counted.items()) if n},
            "client": dict(sorted(expected.items())),
            "match": all(counted.get(c, 0) == expected.get(c, 0) for c in codes),
        },
        "server_alive": alive,
        "server_log": {"path": log, **read_log(log)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=600, help="seconds")
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=16, help="max tokens per answer")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", help="the served models (default: smollm2 twice)")
    ap.add_argument(
        "--server-args",
        type=shlex.split,
        default=[],
        help='more `infer serve` flags, one string (e.g. "--deterministic")',
    )
    add_json_arg(ap, "soak")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps({k: v for k, v in result.items() if k != "resource_series"}, indent=2))
    settings = {k: getattr(args, k) for k in ("clients", "duration", "max_requests", "tokens",
                                               "parallel", "seed")}  # fmt: skip
    settings["server_args"] = shlex.join(args.server_args) or None
    # the figures need >= 10 minutes: anything shorter only shows that it runs
    smoke = args.duration < 600 or os.environ.get("INFER_BENCH_NO_WAIT") == "1"
    write_results(args.json, "soak.py", settings, result, smoke=smoke)


if __name__ == "__main__":
    main()
