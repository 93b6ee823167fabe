"""llama.cpp's own tools as references for tests that compare answers with them: built once
from the installed llama-cpp-python's sdist (benchmarks/vs_llamacpp.py's build_llamacpp, cached
under ~/.cache/infer-bench). `LlamaServer` is llama-server started on a free port, ready when
/health says so; `running_llama_server` and `running_infer_server` are the bodies of the
module-scoped fixtures that compare `infer serve` with it; `post_json` is the one JSON POST
those tests make; `whole_output` runs a command-line tool until its answer is whole."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from .test_serve import Server, free_port


def llamacpp_tool(name: str) -> Path:
    """The path of one of llama.cpp's tools (llama-server, llama-completion, llama-mtmd-cli),
    built on first use."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from vs_llamacpp import build_llamacpp

    return Path(build_llamacpp(targets=(name,))) / name


# llama.cpp's command-line tools print their answer through llama.cpp's logger thread, whose
# singleton is leaked on purpose (common/log.cpp: "this design may cause logs to be lost if
# not flushed before the program exits"): a short answer is often lost whole. Measured here,
# llama-mtmd-cli on test_vision's tiny model printed nothing in 15 of 30 runs for an 8-byte
# answer and in 3 of 30 for a 27-byte one (`--poll 0` did not change it). A tool's output is
# therefore taken again until it is whole: TRIES runs (about 0.3 s each) make a lost
# reference as likely as 0.5 ** TRIES.
TRIES = 30


def whole_output(cmd: list[str], whole: Callable[[bytes], bool], timeout: float = 300) -> bytes:
    """The stdout of `cmd` (which must succeed), run again until `whole` says it is complete;
    AssertionError with what was seen after TRIES runs."""
    seen: list[bytes] = []
    for _ in range(TRIES):
        result = subprocess.run(cmd, capture_output=True, timeout=timeout)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        if whole(result.stdout):
            return result.stdout
        seen.append(result.stdout)
    raise AssertionError(f"{Path(cmd[0]).name} printed no whole answer in {TRIES} runs: {seen}")


def llama_server_binary() -> Path:
    return llamacpp_tool("llama-server")


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


def running_llama_server(model: Path, *args: str) -> Iterator[str]:
    """A fixture's body: llama-server on `model` with ARGS while the fixture lives; its URL."""
    server = LlamaServer(llama_server_binary(), model, *args)
    try:
        yield server.url
    finally:
        server.stop()


def running_infer_server(home: Path, *args: str) -> Iterator[Server]:
    """A fixture's body: `infer serve smollm2` with 2 slots of 1024 cells (the shape the
    comparisons with llama-server use; ARGS add to it) while the fixture lives; it must stop
    cleanly."""
    s = Server("smollm2", "--parallel", "2", "--ctx-size", "1024", *args, home=home).wait_ready()
    yield s
    assert s.stop() == 0


def post_json(url: str, path: str, body: dict[str, Any], status: int = 200) -> Any:
    """POST `body` to `url + path`; the answer's JSON, once its status is `status`."""
    r = httpx.post(url + path, json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()
