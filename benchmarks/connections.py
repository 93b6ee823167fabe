"""Abusive connections against `infer serve` (docs/serve.md, "Limits"), loopback only.

Starts `infer serve smollm2` on a free port with the default limits (or the flags given after
`--`), then, phase by phase, measures a normal request's latency (a short temperature-0 chat)
while the server is under each abuse, and the server's RSS / open files / threads after it:

  baseline     nothing else going on
  idle         500 keep-alive connections that had one request answered and then sit idle
  slowloris    100 connections sending their headers a byte every 0.5 s (when are they cut?)
  big_header   a 1 MB header (status; the normal request after it)
  non_reader   2 streamed answers (fewer than --parallel) whose clients never read (are they cut and
               their slots freed?)
  burst        10,000 chat requests fired at once from up to --burst-concurrency sockets
               (statuses: 200 / 503 with Retry-After / connection errors; the normal request
               in the middle of it)

    python benchmarks/connections.py [--json FILE] [--burst 10000] [-- --max-connections 1000 ...]

Writes benchmarks/results/connections.json (common.write_results), which benchmarks/render.py
renders into benchmarks/README.md. The figures are one run's; under INFER_BENCH_NO_WAIT=1 (or
on a shared machine) a smoke figure only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import add_json_arg, write_results

HERE = Path(__file__).resolve().parent
CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 8,
    "temperature": 0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(method: str, path: str, body: dict[str, Any] | None = None, extra: str = "") -> bytes:
    raw = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if raw:
        head += f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
    return head.encode() + b"\r\n" + raw


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


class Serve:
    def __init__(self, flags: list[str], home: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "INFER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infer", "serve", "smollm2", "--port", str(self.port), *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    async def wait_ready(self) -> None:
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise SystemExit(f"infer serve exited {self.proc.returncode}")
            try:
                status, _, _ = await self.call("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise SystemExit("infer serve did not become ready")

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request(method, path, body))
            return await read_response(reader)
        finally:
            writer.close()

    async def latency(self) -> float | None:
        """Seconds for the normal request (None: it failed)."""
        t = time.perf_counter()
        try:
            status, _, _ = await asyncio.wait_for(
                self.call("POST", "/v1/chat/completions", CHAT), 300
            )
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return None
        return time.perf_counter() - t if status == 200 else None

    def resources(self) -> dict[str, Any]:
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
        return {
            "alive": self.proc.poll() is None,
            "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"]),
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def latencies(s: Serve, n: int = 3) -> dict[str, Any]:
    values = [await s.latency() for _ in range(n)]
    ok = [v for v in values if v is not None]
    return {"median_s": round(statistics.median(ok), 3) if ok else None, "failed": n - len(ok)}


async def idle(s: Serve, n: int) -> dict[str, Any]:
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(request("GET", "/health"))
        await read_response(reader)
        conns.append(writer)
    result = {"connections": n, "normal_request": await latencies(s), **s.resources()}
    for w in conns:
        w.close()
    return result


async def slowloris(s: Serve, n: int) -> dict[str, Any]:
    async def one() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        t = time.perf_counter()
        data = request("GET", "/v1/models", extra="X-Slow: " + "a" * 400 + "\r\n")
        try:
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
                if reader.at_eof():
                    break
            await asyncio.wait_for(reader.read(), 30)
        except (OSError, asyncio.TimeoutError):
            pass
        writer.close()
        return time.perf_counter() - t

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(1)
    normal = await latencies(s)
    cut = await asyncio.gather(*tasks)
    return {
        "connections": n,
        "normal_request": normal,
        "cut_after_s": {"min": round(min(cut), 1), "max": round(max(cut), 1)},
        **s.resources(),
    }


async def big_header(s: Serve) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(request("GET", "/v1/models", extra="X-Big: " + "a" * 1_000_000 + "\r\n"))
    try:
        status, _, _ = await read_response(reader)
    except (OSError, asyncio.IncompleteReadError):
        status = 0
    writer.close()
    return {"status": status, "normal_request": await latencies(s), **s.resources()}


async def non_reader(s: Serve, n: int) -> dict[str, Any]:
    before = s.resources()
    socks = []
    body = {**CHAT, "max_tokens": 100_000, "stream": True, "ignore_eos": True}
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.port))
        sock.sendall(request("POST", "/v1/chat/completions", body))
        socks.append(sock)
    await asyncio.sleep(2)
    normal = await latencies(s)
    during = s.resources()
    for sock in socks:
        sock.close()
    return {"streams": n, "normal_request": normal, "before": before, "during": during}


async def burst(s: Serve, total: int, concurrency: int) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    retry_after = 0
    limit = asyncio.Semaphore(concurrency)
    body = {**CHAT, "max_tokens": 4}

    async def one() -> None:
        nonlocal retry_after
        async with limit:
            try:
                status, headers, _ = await asyncio.wait_for(
                    s.call("POST", "/v1/chat/completions", body), 600
                )
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                statuses[type(e).__name__] += 1
                return
            statuses[str(status)] += 1
            if status == 503 and "retry-after" in headers:
                retry_after += 1

    t = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(total)]
    await asyncio.sleep(1)
    t_normal = time.perf_counter()
    try:
        normal_status, _, _ = await s.call("POST", "/v1/chat/completions", CHAT)
    except (OSError, asyncio.IncompleteReadError) as e:
        normal_status = type(e).__name__
    normal_during = {"status": normal_status, "s": round(time.perf_counter() - t_normal, 3)}
    peak = s.resources()
    await asyncio.gather(*tasks)
    return {
        "requests": total,
        "concurrency": concurrency,
        "seconds": round(time.perf_counter() - t, 1),
        "statuses": dict(statuses),
        "503_with_retry_after": retry_after,
        "normal_request_during": normal_during,  # a 503 too while the queue is full
        "normal_request_after": await latencies(s),
        "during": peak,
        "after": s.resources(),
    }


async def run(args: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        s = Serve(flags, Path(home))
        try:
            await s.wait_ready()
            out: dict[str, Any] = {}
            out["baseline"] = {"normal_request": await latencies(s, 5), **s.resources()}
            out["idle"] = await idle(s, args.idle)
            out["slowloris"] = await slowloris(s, args.slowloris)
            out["big_header"] = await big_header(s)
            out["non_reader"] = await non_reader(s, args.non_readers)
            out["burst"] = await burst(s, args.burst, args.burst_concurrency)
            out["end"] = s.resources()
            return out
        finally:
            s.stop()


def main() -> None:
    argv = sys.argv[1:]
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--slowloris", type=int, default=100)
    ap.add_argument("--non-readers", type=int, default=2)
    ap.add_argument("--burst", type=int, default=10_000)
    ap.add_argument("--burst-concurrency", type=int, default=2000)
    add_json_arg(ap, "connections")
    args = ap.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    result = asyncio.run(run(args, flags))
    print(json.dumps(result, indent=2))
    settings = {
        "idle": args.idle,
        "slowloris": args.slowloris,
        "non_readers": args.non_readers,
        "burst": args.burst,
        "burst_concurrency": args.burst_concurrency,
        "serve_flags": " ".join(flags) or None,
    }
    write_results(args.json, "connections.py", settings, result)


if __name__ == "__main__":
    main()
