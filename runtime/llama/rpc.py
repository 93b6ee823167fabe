"""llama.cpp's RPC backend: lend this machine's devices to another (`infer rpc-server`), and
spread a model's layers over other machines' devices (`--rpc HOST:PORT,...`).

Both sides are llama.cpp's own code (ggml-rpc), reached through the backend registry's proc
addresses as llama.cpp's tools reach them. Two of its habits shape this module:
- the client aborts the whole process when it cannot connect or when a server stops answering
  (GGML_ABORT in ggml-rpc.cpp). So every server is probed first, with the protocol's own HELLO,
  and turned into a one-line error when it is not there, busy or of another version; a server
  that goes away later is one line and exit 1 through ggml's abort callback (llama/aborts.py);
- a server serves one client at a time: a second client waits, silently, until the first one
  leaves. The probe's HELLO has a deadline, so a busy server is said to be busy.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from typing import Any

from ..errors import EngineError, InferError, OptionError
from ..params import split_endpoint
from .offload import Device, devices

# ggml-rpc.cpp: RPC_CMD_HELLO (pinned there: "must be always 14"), RPC_CONN_CAPS_SIZE, and the
# protocol major version a client of this build speaks.
_HELLO = 14
_CAPS = 24
_PROTO_MAJOR = 7
_PROBE_TIMEOUT_S = 5.0


class RpcError(InferError):
    """An RPC server that cannot be used, or a build without the RPC backend."""


def install_command() -> str:
    """The pip command that rebuilds llama-cpp-python with the RPC backend. --no-cache-dir:
    pip's wheel cache is keyed by the source alone and would hand back the build without it."""
    try:
        from importlib.metadata import version

        pinned = f"llama-cpp-python=={version('llama-cpp-python')}"
    except Exception:
        pinned = "llama-cpp-python"
    return (
        'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-deps --no-cache-dir '
        f'"{pinned}"'
    )


def _lib(ll: Any) -> Any:
    """The shared library, with the ggml registry calls this module uses typed (the device
    listing's are offload.devices')."""
    lib = ll._lib
    if not getattr(lib, "_infer_rpc_typed", False):
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        for name, res, args in (
            ("ggml_backend_reg_by_name", vp, [cp]),
            ("ggml_backend_reg_get_proc_address", vp, [vp, cp]),
            ("ggml_backend_register", None, [vp]),
            ("ggml_backend_dev_by_name", vp, [cp]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        lib._infer_rpc_typed = True
    return lib


def _rpc_reg(ll: Any) -> Any:
    """llama.cpp's RPC backend registration; RpcError naming the install command without it."""
    reg = _lib(ll).ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError(
            "this llama-cpp-python was built without llama.cpp's RPC backend; rebuild it with: "
            + install_command()
        )
    return reg


def _proc(ll: Any, name: str, prototype: Any) -> Any:
    address = _lib(ll).ggml_backend_reg_get_proc_address(_rpc_reg(ll), name.encode())
    if not address:
        raise RpcError(f"llama.cpp's RPC backend has no {name} (an unexpected build)")
    return prototype(address)


# -- the client side: --rpc ----------------------------------------------------------------------


def probe(endpoint: str, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Connect and exchange the protocol's HELLO, as llama.cpp's client will; RpcError in one
    line when that would fail (llama.cpp itself would abort the process)."""
    host, port = split_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise RpcError(f"RPC server {endpoint}: cannot resolve {host!r} ({e.strerror})") from None
    except TimeoutError:
        raise RpcError(f"RPC server {endpoint}: no answer within {timeout:g} s") from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise RpcError(f"RPC server {endpoint} is not reachable ({reason})") from None
    with sock:
        try:
            sock.sendall(bytes([_HELLO]) + struct.pack("<Q", _CAPS) + bytes(_CAPS))
            reply = _receive(sock, 8 + 4 + _CAPS)
        except TimeoutError:
            raise RpcError(
                f"RPC server {endpoint} did not answer within {timeout:g} s: it is busy with "
                "another client (an RPC server serves one client at a time)"
            ) from None
        except ConnectionError:  # reset: whatever listens there hung up on the HELLO
            reply = b""
        except OSError as e:
            raise RpcError(f"RPC server {endpoint}: {e.strerror or e}") from None
    size, major, minor, patch = struct.unpack_from("<QBBB", reply.ljust(11, b"\0"))
    if len(reply) < 12 or size != 4 + _CAPS:
        raise RpcError(
            f"{endpoint} is not an RPC server of this llama.cpp (protocol {_PROTO_MAJOR}.x): "
            "start it with `infer rpc-server` from the same infer install"
        )
    if major != _PROTO_MAJOR:
        raise RpcError(
            f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}, this llama.cpp "
            f"{_PROTO_MAJOR}.x: run the same llama.cpp version on both sides"
        )


def _receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


_added: set[str] = set()
_added_lock = threading.Lock()


def add_servers(ll: Any, endpoints: tuple[str, ...]) -> None:
    """Register each server's devices with llama.cpp (once per process), after probing it; a
    model loaded afterwards spreads its offloaded layers over them by their free memory."""
    add = _proc(
        ll, "ggml_backend_rpc_add_server", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
    )
    with _added_lock:
        for endpoint in endpoints:
            if endpoint in _added:
                continue
            probe(endpoint)
            reg = add(endpoint.encode())
            if not reg:
                raise RpcError(f"RPC server {endpoint} offers no devices")
            _lib(ll).ggml_backend_register(reg)
            _added.add(endpoint)


# -- devices ---------------------------------------------------------------------------------------


def rpc_servers(ll: Any) -> dict[str, str]:
    """Each RPC device's server: device name (RPC0…) -> HOST:PORT."""
    return {d.name: d.description for d in devices(ll) or [] if d.name.startswith("RPC")}


# -- the server side: infer rpc-server ------------------------------------------------------------


def server_devices(ll: Any, names: list[str]) -> list[Device]:
    """The devices to lend: those named, else (as llama.cpp's rpc-server chooses) every GPU and
    only the CPU when there is none. A name that is not a device is a UsageError listing them."""

    every = devices(ll) or []
    if names:
        by_name = {d.name.lower(): d for d in every}
        chosen = []
        for name in names:
            if name.lower() not in by_name:
                known = ", ".join(d.name for d in every)
                raise OptionError("device", f"{name!r} is not a device here (devices: {known})")
            chosen.append(by_name[name.lower()])
        return chosen
    accelerators = [d for d in every if d.kind in ("GPU", "iGPU") and not d.name.startswith("RPC")]
    return accelerators or [d for d in every if d.kind == "CPU"][:1]


def start_server(
    ll: Any, host: str, port: int, threads: int, lend: list[Device], cache_dir: str | None
) -> threading.Thread:
    """Run llama.cpp's RPC server on a thread of its own (its accept loop never returns while it
    serves; ctypes releases the GIL, so the main thread stays free for signals). The thread ends
    only when llama.cpp gives up, e.g. when it cannot listen."""
    start = _proc(
        ll,
        "ggml_backend_rpc_start_server",
        ctypes.CFUNCTYPE(
            None,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p),
        ),
    )
    lib = _lib(ll)
    handles = (ctypes.c_void_p * len(lend))(
        *(lib.ggml_backend_dev_by_name(d.name.encode()) for d in lend)
    )
    endpoint = f"{host}:{port}".encode()
    cache = cache_dir.encode() if cache_dir else None

    def serve() -> None:
        start(endpoint, cache, threads, len(lend), handles)

    thread = threading.Thread(target=serve, name="rpc-server", daemon=True)
    thread._infer_keep = (start, handles)  # type: ignore[attr-defined]  # alive with the thread
    thread.start()
    return thread


class RpcServer:
    """`infer rpc-server`'s llama.cpp side: the devices to lend, checked with the address before
    anything starts, then the server on its own thread."""

    def __init__(self, host: str, port: int, threads: int, device_names: list[str]) -> None:
        from .bindings import bindings

        self._ll = bindings()
        self._ll.llama_backend_init()
        self.host, self.port, self.threads = host, port, threads
        self.devices = server_devices(self._ll, device_names)
        check_listen(host, port)

    def start(self, cache_dir: str | None) -> threading.Thread:
        return start_server(self._ll, self.host, self.port, self.threads, self.devices, cache_dir)

    @staticmethod
    def leave(code: int) -> None:
        """Exit now, skipping the interpreter's teardown: the server thread is inside llama.cpp
        and may be serving a client."""
        os._exit(code)


def check_listen(host: str, port: int) -> None:
    """EngineError in one line when `host:port` cannot be listened on (llama.cpp would only print
    "Failed to create server socket")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise EngineError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
