"""How many layers to offload to the GPU by default: all that fit in its free memory.

llama.cpp puts the last N repeating layers on the GPU (and, with all of them, the output layer
too), each with its share of the KV cache; if they do not fit, loading fails. So, as Ollama does,
the default is computed rather than "all": each layer's weights (summed from the GGUF tensor
table) plus its f16 KV cache for the context, against the free memory the GPU devices report,
keeping a reserve for llama.cpp's compute buffers. An explicit --gpu-layers is used as given.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContextTooLargeError

if TYPE_CHECKING:
    from ..models.gguf import GGUFHeader

RESERVE_BYTES = 512 << 20  # compute buffers and the CUDA/Metal context itself
RESERVE_FRACTION = 0.05  # and a margin that grows with the device
_DEVICE_KINDS = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "ACCEL"}  # enum ggml_backend_dev_type
_GPU_KINDS = ("GPU", "iGPU")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def gpu_free_memory(ll: Any) -> int | None:
    """Free bytes over the GPU devices llama.cpp sees (RPC servers' among them); None when there
    is none (a CPU build) or the library does not say."""
    gpus = [d for d in devices(ll) or [] if d.kind in _GPU_KINDS]
    return sum(d.free for d in gpus) if gpus else None


def has_offload_devices(ll: Any) -> bool:
    """Whether llama.cpp has a device to offload layers to: a GPU, or an RPC server's device
    (they count as GPUs). llama_supports_gpu_offload() cannot say: it is true for any build with
    the RPC backend, servers or not."""
    found = devices(ll)
    if found is None:
        return bool(ll.llama_supports_gpu_offload())
    return any(d.kind in _GPU_KINDS for d in found)


@dataclass(frozen=True)
class Device:
    name: str  # llama.cpp's name: CPU, CUDA0, RPC0…
    description: str  # for an RPC device: its server's HOST:PORT
    kind: str  # CPU, GPU, iGPU, ACCEL
    free: int
    total: int


def devices(ll: Any) -> list[Device] | None:
    """Every device llama.cpp has registered (local backends, then RPC servers added); None when
    the bindings lack the ggml device API."""
    try:
        lib = _typed(ll._lib)
    except AttributeError:
        return None
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=_DEVICE_KINDS.get(lib.ggml_backend_dev_type(dev), "?"),
                free=free.value,
                total=total.value,
            )
        )
    return found


def _typed(lib: Any) -> Any:
    """`lib` with ggml's device calls typed (once)."""
    if not getattr(lib, "_infer_devices_typed", False):
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, res, args in (
            ("ggml_backend_dev_count", sz, []),
            ("ggml_backend_dev_get", vp, [sz]),
            ("ggml_backend_dev_name", cp, [vp]),
            ("ggml_backend_dev_description", cp, [vp]),
            ("ggml_backend_dev_type", ctypes.c_int, [vp]),
            ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        lib._infer_devices_typed = True
    return lib


@dataclass(frozen=True)
class DeviceShare:
    """The part of a loaded model one device holds."""

    device: str  # llama.cpp's device name: CPU, CUDA0, RPC0…
    where: str  # an RPC device's server (HOST:PORT); "" for a local one
    layers: int  # repeating layers, plus the output layer where it is
    model_bytes: int  # weights in its buffers

    def describe(self) -> str:
        name = f"{self.device} {self.where}" if self.where else self.device
        return f"{name} {self.layers} layers ({self.model_bytes / 2**20:.1f} MiB)"


_ASSIGNED = re.compile(r"layer\s+\d+ assigned to device (\S+?),")
_BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_RPC_BUFFER = re.compile(r"^RPC(\d+)\[(.*)\]$")


def device_split(log: str, rpc: dict[str, str] | None = None) -> list[DeviceShare]:
    """Which device holds how many layers and how much of the weights, from llama.cpp's log of
    the load ("layer N assigned to device X", "X model buffer size = M MiB"): there is no API
    that says. `rpc`: each RPC device's server (device name -> HOST:PORT), as llama.cpp names an
    RPC buffer by the server and the device's index there ("RPC0[10.0.0.2:50052]"). Empty when
    the log had no such lines."""
    rpc = rpc or {}
    layers: dict[str, int] = {}
    for name in _ASSIGNED.findall(log):
        layers[name] = layers.get(name, 0) + 1
    sizes: dict[str, float] = {}
    for buffer, mib in _BUFFER.findall(log):
        device = _buffer_device(buffer, rpc)
        sizes[device] = sizes.get(device, 0.0) + float(mib)
    names = list(dict.fromkeys([*layers, *sizes]))
    names.sort(key=lambda n: n == "CPU")  # the devices first, the CPU (holding the rest) last
    return [
        DeviceShare(n, rpc.get(n, ""), layers.get(n, 0), int(sizes.get(n, 0.0) * 2**20))
        for n in names
    ]


def _buffer_device(buffer: str, rpc: dict[str, str]) -> str:
    match = _RPC_BUFFER.match(buffer)
    if match:
        index, endpoint = int(match.group(1)), match.group(2)
        on_server = sorted((n for n, e in rpc.items() if e == endpoint), key=_number)
        return on_server[index] if index < len(on_server) else f"RPC[{endpoint}]"
    if buffer.startswith("CPU") or buffer.endswith("_Host"):
        return "CPU"  # CPU_Mapped, CPU_REPACK, CUDA_Host: host memory
    return buffer


def _number(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


def describe_split(shares: list[DeviceShare]) -> str:
    """The split in words, e.g. "RPC0 10.0.0.2:50052 15 layers (40.1 MiB), CPU 1 layers
    (13.4 MiB)"; "" when everything is on this machine's CPU."""
    if all(s.device == "CPU" for s in shares):
        return ""
    return ", ".join(s.describe() for s in shares)


def layer_bytes(header: GGUFHeader, n_ctx: int) -> tuple[list[int], int]:
    """(bytes of each repeating layer: weights + f16 KV cache for `n_ctx` tokens, bytes of the
    output layer). A split model's first file lists only its own tensors: the total is then
    spread evenly over the layers, from the files' sizes."""
    n_layer = header.arch_int("block_count")
    weights = [0] * n_layer
    output = 0
    for t in header.tensors:
        match = _BLOCK.match(t.name)
        if match and int(match.group(1)) < n_layer:
            weights[int(match.group(1))] += t.nbytes
        elif t.name.startswith("output"):  # output.weight, output_norm.weight
            output += t.nbytes
    if not any(t.name == "output.weight" for t in header.tensors):
        # Tied embeddings: llama.cpp puts a copy of token_embd on the GPU as the output layer.
        output += sum(t.nbytes for t in header.tensors if t.name == "token_embd.weight")
    if header.split_count > 1 and n_layer:
        total = sum(p.stat().st_size for p in _split_parts(header))
        weights = [total // (n_layer + 1)] * n_layer
        output = max(output, total // (n_layer + 1))
    kv = kv_bytes_per_layer(header) * n_ctx
    return [w + kv for w in weights], output


def layers_that_fit(layers: list[int], output: int, free: int) -> int:
    """llama.cpp's n_gpu_layers for `free` bytes: the last layers first, as llama.cpp offloads
    them; len(layers) + 1 (every layer and the output layer) when all fit."""
    budget = free - RESERVE_BYTES - int(free * RESERVE_FRACTION)
    n = 0
    for size in reversed(layers):
        if size > budget:
            return n
        budget -= size
        n += 1
    return n + 1 if output <= budget else n


def default_gpu_layers(ll: Any, header: GGUFHeader, n_ctx: int) -> int | None:
    """All layers that fit in the GPUs' free memory; None when that cannot be known (llama.cpp
    then gets "all", as before)."""
    free = gpu_free_memory(ll)
    if free is None:
        return None
    layers, output = layer_bytes(header, n_ctx)
    if not layers:
        return None
    return layers_that_fit(layers, output, free)


def kv_bytes_per_layer(header: GGUFHeader) -> int:
    """Bytes of one layer's f16 K and V for one token."""
    n_head = header.arch_int("attention.head_count")
    n_embd = header.arch_int("embedding_length")
    if not (n_head and n_embd):
        return 0
    head_kv = header.arch_int("attention.head_count_kv", n_head)
    k_len = header.arch_int("attention.key_length", n_embd // n_head)
    v_len = header.arch_int("attention.value_length", n_embd // n_head)
    return head_kv * (k_len + v_len) * 2  # f16 K and V


def kv_cache_bytes(header: GGUFHeader, n_ctx: int) -> int:
    """Bytes of the f16 KV cache llama.cpp allocates for `n_ctx` tokens (it rounds the context
    up to a multiple of 256)."""
    n_layer = header.arch_int("block_count")
    return n_layer * kv_bytes_per_layer(header) * (-(-n_ctx // 256) * 256)


def available_memory() -> int | None:
    """Bytes of RAM that can be allocated without swapping: MemAvailable on Linux, else the
    physical memory (sysconf); None when neither says."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - Windows
        return None


def check_kv_fits(ll: Any, header: GGUFHeader, n_ctx: int, *, gpu: bool) -> None:
    """Raise ContextTooLargeError when the KV cache for `n_ctx` tokens exceeds the memory it
    could live in: available RAM, plus the GPUs' free memory when layers are offloaded. A bound
    that only catches the impossible (weights and compute buffers come on top)."""
    need = kv_cache_bytes(header, n_ctx)
    ram = available_memory()
    if not need or ram is None:
        return
    room = ram + ((gpu_free_memory(ll) or 0) if gpu else 0)
    if need > room:
        per_token = need // (-(-n_ctx // 256) * 256)
        raise ContextTooLargeError(n_ctx, need, room, room // per_token // 256 * 256)


def _split_parts(header: GGUFHeader) -> list[Path]:
    """The files of a split model that exist beside its first part."""
    from ..models.selection import (
        split_part,
    )  # only split models need it: kept off the start-up path

    parts = split_part(header.path.name)
    if parts is None:
        return [header.path]
    prefix, _, count = parts
    names = (f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))
    return [p for p in (header.path.with_name(n) for n in names) if p.exists()]
