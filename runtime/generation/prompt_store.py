"""The prompt cache's files: where they are, how big they may get, their trailer, listing and
LRU eviction. Entries are written and restored by prompt_cache.py, which describes the format;
this module needs no llama.cpp (for `infer cache list|clear`)."""

from __future__ import annotations

import array
import contextlib
import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import files, paths
from ..errors import StorageError, UsageError

# Prompts shorter than this are neither saved nor looked up. Evaluating 256 tokens takes about a
# second on a CPU with a small model (~250 tok/s here) and far less on a GPU, while every entry
# costs disk (tokens x KV bytes per token: 23 kB for SmolLM2-135M, ~128 kB for an 8B model) and a
# directory scan per run; short prompts also rarely recur, so they would only churn the cache.
MIN_TOKENS = 256
DEFAULT_MAX_BYTES = 10**9  # total size of all entries; decimal units, like `infer list`
SUFFIX = ".kv"
TRAILER = b"INFERPC1"  # magic at the very end of an entry
TAIL = struct.Struct("<I8s")  # JSON length, magic
_MAX_META = 1 << 16
_FIELDS = [("model", str), ("key", str), ("tokens", int), ("state_bytes", int), ("crc32", int)]
_FIELDS += [("magic", int), ("version", int)]
_STALE_TEMP_S = 3600  # a temp file or link this old belongs to a process that died
_TEMP = re.compile(r"^\.(?:tmp|load)-(\d+)-[0-9a-f]+$")
_CHUNK = 1 << 22


def root() -> Path:
    return paths.cache_dir() / "prompt-cache"


def max_bytes() -> int:
    """The bound on the cache's total size: INFER_PROMPT_CACHE_SIZE (`2G`, `500MB`, `1GiB`,
    bytes; `0` saves nothing), else 1 GB."""
    text = os.environ.get("INFER_PROMPT_CACHE_SIZE", "").strip()
    return parse_size(text) if text else DEFAULT_MAX_BYTES


def min_tokens() -> int:
    text = os.environ.get("INFER_PROMPT_CACHE_MIN_TOKENS", "").strip()
    if not text:
        return MIN_TOKENS
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"INFER_PROMPT_CACHE_MIN_TOKENS must be a positive integer (got {text!r})")
    return int(text)


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", text.strip().lower())
    if not m:
        raise UsageError(f"INFER_PROMPT_CACHE_SIZE must be a size like 500MB or 2G (got {text!r})")
    number, unit, binary = m.groups()
    scale = 1024 ** " kmgt".index(unit) if binary and unit else _UNITS[unit]
    return int(float(number) * scale)


@dataclass
class Entry:
    """One saved prompt state, as `infer cache list` shows it."""

    path: Path
    model: str
    key: str
    tokens: int
    size: int
    last_used: float  # the file's mtime: touched on every hit, for LRU eviction


def read_meta(f: Any, size: int) -> dict[str, Any] | None:
    """Our trailer's record, or None when the file is not a complete entry."""
    if size < TAIL.size:
        return None
    f.seek(size - TAIL.size)
    length, magic = TAIL.unpack(f.read(TAIL.size))
    if magic != TRAILER or length > _MAX_META or length + TAIL.size > size:
        return None
    f.seek(size - TAIL.size - length)
    try:
        meta = json.loads(f.read(length))
    except ValueError:
        return None
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in _FIELDS):
        return None
    return meta if meta["state_bytes"] == size - TAIL.size - length else None


def append_meta(f: Any, state_bytes: int, meta: dict[str, Any]) -> int:
    """Write the trailer after llama.cpp's `state_bytes`; returns the entry's size."""
    blob = json.dumps(meta).encode()
    f.seek(state_bytes)
    f.write(blob + TAIL.pack(len(blob), TRAILER))
    f.truncate()
    return state_bytes + len(blob) + TAIL.size


def read_tokens(f: Any, meta: dict[str, Any]) -> list[int] | None:
    """The tokens in llama.cpp's header (magic, version, count, tokens), checked against ours."""
    f.seek(0)
    head = f.read(12)
    if len(head) < 12:
        return None
    magic, version, n = struct.unpack("<III", head)
    if [magic, version, n] != [meta["magic"], meta["version"], meta["tokens"]]:
        return None
    if 12 + 4 * n > meta["state_bytes"]:
        return None
    tokens = array.array("i")
    data = f.read(4 * n)
    if len(data) != 4 * n:
        return None
    tokens.frombytes(data)
    return tokens.tolist()


def checksum(f: Any, length: int) -> int:
    f.seek(0)
    value, left = 0, length
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        value = zlib.crc32(chunk, value)
        left -= len(chunk)
    return value


def unlink(path: Path) -> None:
    with contextlib.suppress(OSError):  # already gone (evicted by another run): as wanted
        path.unlink()


def temp_owner(name: str) -> int | None:
    """The process that writes the temp file or reader's link `name` (".tmp-<pid>-…",
    ".load-<pid>-…"), if it is one."""
    m = _TEMP.match(name)
    return int(m[1]) if m else None


def sweep() -> None:
    """Delete temp files and links left by processes that died while writing or reading (their
    pid is in the name), and any older than an hour (a process of another machine sharing the
    folder, or a reused pid)."""
    now = time.time()
    for path in root().glob("*/.*"):
        owner = temp_owner(path.name)
        try:  # ctime: a reader's hard link has the entry's old mtime but a fresh ctime
            dead = owner is not None and not files.alive(owner)
            if dead or now - path.lstat().st_ctime > _STALE_TEMP_S:
                path.unlink()
        except OSError:
            continue


def entries() -> list[Entry]:
    """Every complete entry, least recently used first. Never raises for a bad file."""
    found = []
    for path in root().glob(f"*/*{SUFFIX}"):
        try:
            with files.open_regular(path) as f:
                st = os.fstat(f.fileno())
                meta = read_meta(f, st.st_size)
        except OSError:
            continue
        if meta is not None:
            model, key, n = meta["model"], meta["key"], meta["tokens"]
            found.append(Entry(path, model, key, n, st.st_size, st.st_mtime))
    return sorted(found, key=lambda e: e.last_used)


def clear() -> tuple[int, int]:
    """Remove every entry (and stray files); returns (entries, bytes) removed. Raises
    StorageError naming the first file that could not be removed (a read-only cache), after
    removing what it could."""
    found, failed = entries(), None
    base = root()
    for path in sorted(base.glob("*/*")):  # entries, temp files, and whatever else is there
        owner = temp_owner(path.name)
        if owner is not None and files.alive(owner):
            continue  # a run is writing or reading it right now
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            failed = failed or StorageError(path, e, "remove")
    for folder in base.glob("*"):
        with contextlib.suppress(OSError):  # not empty: a run is writing into it right now
            folder.rmdir()
    if failed is not None:
        raise failed
    return len(found), sum(e.size for e in found)


def evict(limit: int, keep: Path | None = None) -> None:
    """Delete least recently used entries until all of them fit in `limit` bytes, and temp
    files left by processes that died while writing."""
    sweep()
    found = []
    for path in root().glob(f"*/*{SUFFIX}"):
        try:
            st = path.stat()
        except OSError:
            continue
        found.append((path == keep, st.st_mtime, st.st_size, path))
    total = sum(size for _, _, size, _ in found)
    # The oldest go first; `keep` (just written) last.
    for _, _, size, path in sorted(found):
        if total <= limit:
            break
        unlink(path)
        total -= size
