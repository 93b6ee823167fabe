"""llama.cpp's own llama-server as a reference for tests that compare answers with it: built
once from the installed llama-cpp-python's sdist (benchmarks/vs_llamacpp.py's build_llamacpp,
cached under ~/.cache/infer-bench), started on a free port, ready when /health says so."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def llama_server_binary() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from vs_llamacpp import build_llamacpp

    return Path(build_llamacpp(targets=("llama-server",))) / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """`llama-server -m MODEL ARGS` on a free port (2 threads, one slot unless ARGS say)."""

    def __init__(self, binary: Path, model: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--port", str(self.port), "-t", "2", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"llama-server exited {self.proc.returncode}"
            assert time.monotonic() < deadline, "llama-server did not become ready"
            time.sleep(0.1)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
