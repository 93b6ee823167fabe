"""A bounded GGUF header reader.

The native loader is a memory-safety surface (a 4-byte "GGUF" file crashed Ollama, CVE-2024-39720),
so every file is checked here first: counts, string lengths and tensor extents must lie inside the
file. It also gives `show`/`list` the metadata without loading weights.

It lives in models/, the lowest layer, because both sides read headers: models/ (pull checks a
download, inventory lists metadata) must never import llama/, while llama/ (the engine, offload)
may import models/. Pure Python: reading a header never loads llama.cpp.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

MAGIC = b"GGUF"
MAX_STRING = 16 << 20  # chat templates are KBs; a 16 MiB string is corruption
MAX_ARRAY_KEEP = 64  # arrays longer than this are summarised, not kept (token lists)
MAX_DIMS = 4

# ggml type id -> (elements per block, bytes per block), from ggml.c's type_traits.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17),
}  # fmt: skip
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
# general.file_type (llama_ftype) -> the name users see in file names.
FILE_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}  # fmt: skip

# GGUF value type id -> struct format (fixed-size scalars).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array (e.g. the token list), kept as its length only."""

    type: int
    count: int


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int
    nbytes: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def arch_int(self, key: str, default: int = 0) -> int:
        """An integer hyperparameter of the architecture (`default` when absent); the largest
        of a per-layer array (OpenELM's head counts). A value of another type is a
        ModelFileError naming the key: the file is not what llama.cpp would load."""
        value = self.arch_value(key)
        if value is None or value == []:
            return default
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            value = max(value)
        if not isinstance(value, int):
            kind = f"an array of {len(value)}" if isinstance(value, list) else type(value).__name__
            raise ModelFileError(
                self.path, f"metadata {self.architecture}.{key} is {kind}, not an integer"
            )
        return value

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def quantization(self) -> str:
        ftype = self.metadata.get("general.file_type")
        if isinstance(ftype, int) and ftype in FILE_TYPE_NAMES:
            return FILE_TYPE_NAMES[ftype]
        # No file_type key: name the most common tensor type by bytes.
        by_type: dict[int, int] = {}
        for t in self.tensors:
            by_type[t.type] = by_type.get(t.type, 0) + t.nbytes
        if not by_type:
            return "unknown"
        return GGML_TYPE_NAMES.get(max(by_type, key=lambda k: by_type[k]), "unknown")

    @property
    def split_count(self) -> int:
        value = self.metadata.get("split.count", 1)
        return int(value) if isinstance(value, int) else 1


class _Reader:
    """Cursor over a memory map; every read is bounds-checked against the file size."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, reason: str) -> ModelFileError:
        return ModelFileError(self.path, f"corrupt GGUF: {reason}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(self.path, f"truncated GGUF: file ends inside {what}")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        if n > MAX_STRING:
            raise self.fail(f"{what} claims a {n}-byte string")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.scalar("<Q", what)
        if n > MAX_STRING:
            raise self.fail(f"{what} claims a {n}-byte string")
        self.need(n, what)
        self.pos += n

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` strings, as `skip_string` would, in one tight loop: a vocabulary's token
        and merge lists hold ~100k strings, and a checked method call per string made them most
        of the header read (SmolLM2's whole read: 45 ms before, 13 ms this way). Anything amiss
        is walked again with `skip_string`, which raises the precise error."""
        unpack, buf, pos = _U64.unpack_from, self.buf, self.pos
        try:
            for _ in range(count):
                n = unpack(buf, pos)[0]
                if n > MAX_STRING:
                    break
                pos += 8 + n
            else:
                if pos <= self.size:
                    self.pos = pos
                    return
        except struct.error:  # a length field beyond the end of the file
            pass
        for _ in range(count):
            self.skip_string(what)

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what)
        raise self.fail(f"{what} has unknown value type {vtype}")

    def array(self, what: str) -> Any:
        etype = self.scalar("<I", what)
        count = self.scalar("<Q", what)
        if etype in _SCALARS:
            width = struct.calcsize(_SCALARS[etype])
            self.need(count * width, what)
            if count <= MAX_ARRAY_KEEP:
                values = struct.unpack_from(f"<{count}{_SCALARS[etype][1]}", self.buf, self.pos)
                self.pos += count * width
                return list(values)
            self.pos += count * width
            return ArraySummary(etype, count)
        if etype == _STRING:
            # Each element takes at least its 8-byte length: a larger count cannot fit the file.
            self.need(count * 8, what)
            if count <= MAX_ARRAY_KEEP:
                return [self.string(what) for _ in range(count)]
            self.skip_strings(count, what)
            return ArraySummary(etype, count)
        raise self.fail(f"{what} is an array of unsupported type {etype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Validate a GGUF file's header and tensor table; raise ModelFileError if anything is off."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; the size and type
        # come from the open descriptor, so the file checked is the file mapped.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                raise ModelFileError(path, "not a regular file")
            size = st.st_size
            if size < 4:
                raise ModelFileError(path, "not a GGUF file (too small)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, size)
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except IsADirectoryError:
        raise ModelFileError(path, "is a directory, not a GGUF file") from None
    except PermissionError:
        raise ModelFileError(path, "permission denied") from None
    except OSError as e:  # a symlink loop, a name too long, an I/O error...
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from None


def _parse(buf: mmap.mmap, path: Path, size: int) -> GGUFHeader:
    r = _Reader(buf, path)
    if bytes(buf[:4]) != MAGIC:
        raise ModelFileError(path, "not a GGUF file (bad magic number)")
    r.pos = 4
    version = r.scalar("<I", "version")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version}")
    n_tensors = r.scalar("<Q", "tensor count")
    n_kv = r.scalar("<Q", "metadata count")
    # Each key/value takes at least 12 bytes and each tensor info at least 24.
    if n_kv * 12 > size or n_tensors * 24 > size:
        raise r.fail(f"implausible counts ({n_kv} metadata entries, {n_tensors} tensors)")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        if key in metadata:  # llama.cpp refuses it too; later its reader would pick one
            raise r.fail(f"metadata key '{key}' appears twice")
        vtype = r.scalar("<I", f"metadata '{key}'")
        metadata[key] = r.value(vtype, f"metadata '{key}'")
    tensors = [_tensor_info(r, i) for i in range(n_tensors)]
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"invalid alignment {alignment!r}")
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    for t in tensors:
        if t.offset % alignment:
            raise r.fail(f"tensor '{t.name}' is not aligned")
        if data_offset + t.offset + t.nbytes > size:
            raise ModelFileError(
                path, f"truncated GGUF: tensor '{t.name}' extends past the end of the file"
            )
    _check_disjoint(r, tensors)
    return GGUFHeader(path, version, metadata, tensors, data_offset, size)


def _check_disjoint(r: _Reader, tensors: list[TensorInfo]) -> None:
    """Each tensor named once, each in bytes of its own: a crafted file whose tensors share
    names or data (one of Ollama's GGUF CVE shapes) is refused here, as llama.cpp's own reader
    refuses it, with the tensor named."""
    names: set[str] = set()
    end = 0
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.name in names:
            raise r.fail(f"tensor '{t.name}' appears twice")
        names.add(t.name)
        if t.offset < end:
            raise r.fail(f"tensor '{t.name}' overlaps the data of another tensor")
        end = t.offset + t.nbytes


def _tensor_info(r: _Reader, i: int) -> TensorInfo:
    name = r.string(f"tensor #{i} name")
    n_dims = r.scalar("<I", f"tensor '{name}'")
    if not 1 <= n_dims <= MAX_DIMS:
        raise r.fail(f"tensor '{name}' has {n_dims} dimensions")
    shape = tuple(r.scalar("<Q", f"tensor '{name}'") for _ in range(n_dims))
    ttype = r.scalar("<I", f"tensor '{name}'")
    offset = r.scalar("<Q", f"tensor '{name}'")
    if ttype not in GGML_TYPE_SIZES:
        raise r.fail(f"tensor '{name}' has unknown type {ttype}")
    block, block_bytes = GGML_TYPE_SIZES[ttype]
    for d in shape:
        if d <= 0 or d > 1 << 40:
            raise r.fail(f"tensor '{name}' has dimension {d}")
    n = math.prod(shape)
    if shape[0] % block:
        raise r.fail(f"tensor '{name}' row is not a whole number of {block}-element blocks")
    if n > 1 << 48:
        raise r.fail(f"tensor '{name}' is implausibly large")
    return TensorInfo(name, shape, ttype, offset, n // block * block_bytes)
