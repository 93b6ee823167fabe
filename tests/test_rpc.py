"""llama.cpp RPC: `infer rpc-server` processes on loopback ports lend their CPU to `--rpc` on
run, chat, bench, perplexity and serve; every way a server can be missing fails in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infer.runtime.errors import UsageError
from infer.runtime.llama.offload import DeviceShare, describe_split, device_split
from infer.runtime.params import LoadOptions, parse_endpoints, split_endpoint

from .conftest import INFER, run_infer
from .test_serve import free_port

PROMPT = "Which city is the capital of France?"
GREEDY = ("--temperature", "0", "--max-tokens", "24", "--seed", "1")


def start_rpc_server(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """An `infer rpc-server` on a free loopback port, once it accepts connections."""
    port = free_port()
    assert INFER
    proc = subprocess.Popen(
        [INFER, "rpc-server", "--port", str(port), "--threads", "1", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("infer rpc-server did not start listening")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


@pytest.fixture(scope="module")
def two_servers() -> Iterator[list[str]]:
    procs = [start_rpc_server(), start_rpc_server()]
    yield [f"127.0.0.1:{port}" for _, port in procs]
    for proc, _ in procs:
        stop(proc)


# -- options and parsing -------------------------------------------------------------------------


def test_endpoints_are_checked_before_anything_loads() -> None:
    assert parse_endpoints("10.0.0.2:50052, 10.0.0.3:50052,10.0.0.2:50052") == (
        "10.0.0.2:50052",
        "10.0.0.3:50052",
    )
    assert parse_endpoints(None) == ()
    assert split_endpoint("gpu-box:1") == ("gpu-box", 1)
    for bad in ("10.0.0.2", "10.0.0.2:", ":50052", "host:port", "host:70000", "a b:1", "::1:5"):
        with pytest.raises(UsageError):
            split_endpoint(bad)
    with pytest.raises(UsageError):
        parse_endpoints(" , ")
    with pytest.raises(UsageError):
        LoadOptions(rpc=("nohost",)).validate()


LOAD_LOG = """\
load_tensors: layer   0 assigned to device CPU, is_swa = 0
load_tensors: layer   1 assigned to device RPC0, is_swa = 0
load_tensors: layer   2 assigned to device RPC0, is_swa = 0
load_tensors: layer   3 assigned to device RPC1, is_swa = 0
load_tensors: offloaded 3/4 layers to GPU
load_tensors:   CPU_Mapped model buffer size =    13.50 MiB
load_tensors: RPC0[127.0.0.1:50052] model buffer size =    20.00 MiB
load_tensors: RPC0[127.0.0.1:50053] model buffer size =    10.25 MiB
"""
SERVERS = {"RPC0": "127.0.0.1:50052", "RPC1": "127.0.0.1:50053"}


def test_the_split_is_read_from_llama_cpps_load_log() -> None:
    # llama.cpp names a buffer by the server and the device's index there, a layer's device
    # by its global name: both are the same device here.
    shares = device_split(LOAD_LOG, SERVERS)
    assert shares == [
        DeviceShare("RPC0", "127.0.0.1:50052", 2, 20 * 2**20),
        DeviceShare("RPC1", "127.0.0.1:50053", 1, int(10.25 * 2**20)),
        DeviceShare("CPU", "", 1, int(13.5 * 2**20)),
    ]
    assert describe_split(shares).startswith("RPC0 127.0.0.1:50052 2 layers (20.0 MiB), RPC1")
    cpu_only = device_split("load_tensors: layer 0 assigned to device CPU, is_swa = 0\n")
    assert describe_split(cpu_only) == ""


def test_a_build_without_rpc_names_the_command_that_rebuilds_it() -> None:
    from types import SimpleNamespace

    from infer.runtime.llama import rpc

    class NoRpcLib:
        def __getattr__(self, name: str) -> object:
            return SimpleNamespace(restype=None, argtypes=None, __call__=None)

        def ggml_backend_reg_by_name(self, name: bytes) -> int:
            return 0  # what llama.cpp answers for a backend it was built without

    lib = NoRpcLib()
    lib._infer_rpc_typed = True  # type: ignore[attr-defined]
    with pytest.raises(rpc.RpcError) as e:
        rpc.add_servers(SimpleNamespace(_lib=lib), ("127.0.0.1:50052",))
    message = str(e.value)
    assert "built without llama.cpp's RPC backend" in message
    assert 'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall' in message
    assert "--no-cache-dir" in message and "llama-cpp-python==" in message


def test_bad_rpc_values_are_usage_errors(tiny_model: Path) -> None:
    for value in ("nohost", "127.0.0.1:0", ","):
        r = run_infer("run", str(tiny_model), "hi", "--rpc", value)
        assert r.returncode == 2, r.stderr
        assert r.stderr.decode().count("\n") == 1 and "--rpc" in r.stderr.decode()


# -- servers that cannot be used -----------------------------------------------------------------


def test_an_unreachable_server_fails_in_one_line_before_loading(tiny_model: Path) -> None:
    port = free_port()  # nothing listens there
    r = run_infer("run", str(tiny_model), "hi", "--rpc", f"127.0.0.1:{port}")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert err.strip().count("\n") == 0, err
    assert f"127.0.0.1:{port} is not reachable" in err and "refused" in err.lower()
    assert r.stdout == b""


def test_an_unknown_host_fails_in_one_line(tiny_model: Path) -> None:
    r = run_infer("run", str(tiny_model), "hi", "--rpc", "no-such-host.invalid:50052")
    assert r.returncode == 1, r.stderr
    assert "cannot resolve 'no-such-host.invalid'" in r.stderr.decode()


def _serve_once(handler: object) -> tuple[int, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                handler(conn)  # type: ignore[operator]

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread


def test_something_else_on_the_port_is_not_taken_for_an_rpc_server(tiny_model: Path) -> None:
    port, _ = _serve_once(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    r = run_infer("run", str(tiny_model), "hi", "--rpc", f"127.0.0.1:{port}")
    assert r.returncode == 1, r.stderr
    assert "is not an RPC server of this llama.cpp" in r.stderr.decode()


def test_another_protocol_version_is_named(tiny_model: Path) -> None:
    def old_server(conn: socket.socket) -> None:
        conn.recv(64)
        conn.sendall(struct.pack("<QBBBB", 28, 3, 0, 0, 0) + bytes(24))

    port, _ = _serve_once(old_server)
    r = run_infer("run", str(tiny_model), "hi", "--rpc", f"127.0.0.1:{port}")
    assert r.returncode == 1, r.stderr
    assert "speaks protocol 3.0.0" in r.stderr.decode()


def test_a_busy_server_is_said_to_be_busy(tiny_model: Path) -> None:
    proc, port = start_rpc_server()
    try:
        # A first client holds the server: it serves one client at a time.
        holder = socket.create_connection(("127.0.0.1", port))
        holder.sendall(bytes([14]) + struct.pack("<Q", 24) + bytes(24))
        assert len(holder.recv(64)) == 36
        r = run_infer("run", str(tiny_model), "hi", "--rpc", f"127.0.0.1:{port}")
        assert r.returncode == 1, r.stderr
        assert "busy with another client" in r.stderr.decode()
        holder.close()
    finally:
        stop(proc)


# -- the model split over servers ----------------------------------------------------------------


def test_run_over_two_servers_gives_the_local_answer(
    bundled_model: Path, two_servers: list[str]
) -> None:
    local = run_infer("run", str(bundled_model), PROMPT, *GREEDY, timeout=300)
    assert local.returncode == 0, local.stderr
    remote = run_infer(
        "run", str(bundled_model), PROMPT, *GREEDY, "--rpc", ",".join(two_servers), "--stats",
        "--json", timeout=600,
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    record = json.loads(remote.stdout)
    assert record["text"] == local.stdout.decode().rstrip("\n")
    assert "Paris" in record["text"]
    split = record["stats"]["split"]
    assert f"RPC0 {two_servers[0]}" in split and f"RPC1 {two_servers[1]}" in split, split
    # The stats line on stderr says the same.
    assert f"layers on RPC0 {two_servers[0]}" in remote.stderr.decode()
    # Bit for bit over a longer answer: the servers run the same CPU code on the same numbers.
    story = ("run", str(bundled_model), "Write a short story about a robot.", "--temperature",
             "0", "-n", "64")  # fmt: skip
    here = run_infer(*story, timeout=300)
    there = run_infer(*story, "--rpc", ",".join(two_servers), timeout=600)
    assert here.returncode == there.returncode == 0, there.stderr
    assert len(here.stdout.split()) > 30 and here.stdout == there.stdout


def test_chat_over_a_server_in_a_terminal(two_servers: list[str]) -> None:
    import pexpect

    assert INFER
    child = pexpect.spawn(
        INFER, ["chat", "smollm2", "--rpc", two_servers[0], "--temperature", "0", "-n", "24"],
        encoding="utf-8", timeout=180, dimensions=(50, 200), env=dict(os.environ),
    )  # fmt: skip
    try:
        child.expect_exact(">>> ")
        child.sendline(PROMPT)
        child.expect_exact(">>> ")
        assert "Paris" in (child.before or "")
        child.sendline("And which country is it in?")  # the follow-up reuses the server's KV
        child.expect_exact(">>> ")
        assert "France" in (child.before or "")
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_gpu_layers_keeps_the_first_layers_on_this_machine(
    bundled_model: Path, two_servers: list[str]
) -> None:
    r = run_infer(
        "run", str(bundled_model), PROMPT, *GREEDY, "--rpc", two_servers[0], "--gpu-layers",
        "10", "--json", timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    split = json.loads(r.stdout)["stats"]["split"]
    assert f"RPC0 {two_servers[0]} 10 layers" in split and "CPU 21 layers" in split, split


def test_bench_and_perplexity_use_the_servers(
    bundled_model: Path, two_servers: list[str], tmp_path: Path
) -> None:
    rpc = ",".join(two_servers)
    r = run_infer(
        "bench", str(bundled_model), "-p", "16", "-n", "8", "-r", "1", "--rpc", rpc, "--json",
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    [result] = json.loads(r.stdout)
    assert "RPC0" in result["split"] and result["gpu_layers"] == result["layers_total"]
    assert result["generate_tokens_per_s"]["median"] > 0

    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    local = run_infer("perplexity", str(bundled_model), str(text), "--ctx-size", "128",
                      "--json", timeout=300)  # fmt: skip
    over = run_infer("perplexity", str(bundled_model), str(text), "--ctx-size", "128",
                     "--json", "--rpc", rpc, timeout=600)  # fmt: skip
    assert local.returncode == 0 and over.returncode == 0, over.stderr
    ppl_local, ppl_rpc = json.loads(local.stdout)["ppl"], json.loads(over.stdout)["ppl"]
    assert ppl_rpc == ppl_local  # the same computation, only elsewhere


def test_serve_over_servers_reports_the_split_and_answers(
    bundled_model: Path, two_servers: list[str]
) -> None:
    port = free_port()
    assert INFER
    proc = subprocess.Popen(
        [INFER, "serve", "smollm2", "--port", str(port), "--parallel", "1",
         "--rpc", ",".join(two_servers)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as h:
                    if h.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        body = {"model": "smollm2", "prompt": "The capital of France is",
                "max_tokens": 4, "temperature": 0}  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.load(response)
        assert answer["choices"][0]["text"].strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert f"RPC0 {two_servers[0]}" in err.decode(), err.decode()
    assert f"backend: CPU, RPC ({two_servers[0]}, {two_servers[1]})" in err.decode()


def test_a_server_that_goes_away_mid_answer_ends_the_run_in_one_line(
    bundled_model: Path,
) -> None:
    proc, port = start_rpc_server()
    assert INFER
    run = subprocess.Popen(
        [INFER, "run", str(bundled_model), "Write a very long story about a dragon.",
         "--temperature", "0", "--max-tokens", "2000", "--rpc", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert run.stdout is not None
        first = run.stdout.read(1)  # the answer has begun: layers live on the server
        assert first, run.stderr.read() if run.stderr else b""
        proc.kill()
        _, err = run.communicate(timeout=120)
    finally:
        stop(proc)
        if run.poll() is None:
            run.kill()
    text = err.decode()
    assert run.returncode == 1, text
    assert "infer: error: llama.cpp's RPC backend failed" in text
    assert "Traceback" not in text and "core dumped" not in text


# -- infer rpc-server ----------------------------------------------------------------------------


def test_rpc_server_on_a_lan_address_warns_and_stops_on_signals() -> None:
    proc, port = start_rpc_server("--host", "0.0.0.0")
    code, err = stop(proc, signal.SIGINT)
    assert code == 130, err
    assert "no authentication" in err and "0.0.0.0" in err
    proc, port = start_rpc_server()
    code, err = stop(proc, signal.SIGTERM)
    assert code == 143, err
    assert "no authentication" not in err
    assert f"use it with --rpc 127.0.0.1:{port}" in err
    assert proc.stdout is not None


def test_rpc_server_stdout_stays_empty() -> None:
    proc, port = start_rpc_server()
    socket.create_connection(("127.0.0.1", port)).close()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert out == b""


def test_rpc_server_bad_options() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    with busy:
        taken = busy.getsockname()[1]
        r = run_infer("rpc-server", "--port", str(taken))
        assert r.returncode == 1 and "cannot listen on 127.0.0.1" in r.stderr.decode()
    for args, needle in (
        (("--host", "::1"), "IPv4"),
        (("--port", "0"), "--port"),
        (("--device", "NoSuchDevice"), "is not a device here"),
        (("--threads", "0"), "--threads"),
    ):
        r = run_infer("rpc-server", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr.decode() and r.stderr.decode().count("\n") == 1


def test_rpc_server_cache_goes_to_infers_cache(infer_home: Path) -> None:
    proc, _ = start_rpc_server("--cache")
    code, err = stop(proc)
    assert code == 143
    assert (infer_home / "cache" / "rpc").is_dir() or "tensor cache in" in err
    assert os.fspath(infer_home) in err, err
