"""The one content-addressed store of model files, pulled and quantized alike. No network here.

    <cache_dir>/hub/
        blobs/<sha256>          every model file, named by the digest of its bytes: a file the Hub
                                serves and one `infer quantize` wrote share one blob when equal
        tmp/<key>.part          downloads in progress or interrupted (resumable; key = sha256)
        tmp/<pid>-<rand>.part   other writers' output while they run (the quantizer's)
        locks/<name>.lock       flock files: concurrent pulls, removals, installs, the migration
        manifests/…             Hub manifests (hub_cache.py: also snapshots/)
    <cache_dir>/quantized/
        manifests/<id>.json     manifests of quantized models (quantized_store.py)

(The folder keeps the name hub/ it had when only pulled models lived in it, so that existing
caches keep working; `adopt` moves the old separate quantized/blobs/ into it.)

A file becomes a blob only by an atomic rename of a finished, checked file into blobs/, so
nothing half-written ever counts as one. A manifest names the blobs of one model; a blob no
manifest of any kind names is garbage. The collector reads every manifest file under
`manifest_dirs()` the same way, whatever its kind: the blobs a manifest names are its `sha256`
field, the `sha256` of each entry of its `files` list and of its `mmproj` (projector); a
file that does not read that way (damaged) keeps every sha256-looking string in it, until it
is removed or rewritten. So a quantized model survives `infer rm` of a Hub model, and a blob
both kinds name stays until neither does.
Writers install a blob and then its manifest while holding the `gc` lock shared; the collector
holds it exclusively, so it never sees a fresh blob without its manifest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .. import files, paths
from ..errors import storage

HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PID_PART = re.compile(r"^(\d+)-[0-9a-f]{16}\.part$")


def root() -> Path:
    return paths.cache_dir() / "hub"


def blobs_dir() -> Path:
    return root() / "blobs"


def tmp_dir() -> Path:
    return root() / "tmp"


def manifest_dirs() -> tuple[Path, ...]:
    """Where the manifests of every kind live: the collector keeps any blob they name."""
    return root() / "manifests", paths.cache_dir() / "quantized" / "manifests"


def blob_path(sha256: str) -> Path:
    if not HEX64.match(sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return blobs_dir() / sha256


def has_blob(sha256: str, size: int) -> bool:
    try:
        return blob_path(sha256).stat().st_size == size
    except OSError:
        return False


def install(part: Path, sha256: str) -> Path:
    """Move a checked file (under tmp/, so on the same file system) into blobs/: atomic, the
    blob is either complete or absent. The caller holds the `gc` lock shared until the
    manifest naming it is written."""
    dest = blob_path(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    return dest


def part_path(key: str) -> Path:
    """Where a resumable download of `key` (its sha256) is written."""
    return tmp_dir() / f"{key}.part"


def new_part() -> Path:
    """A fresh, empty file under tmp/ named by this process, so that one left behind by a
    killed run can be recognised and deleted (`clean_parts`)."""
    part = _pid_part()
    with storage(part.parent, "write to"):  # a read-only cache is found before the writer runs
        part.parent.mkdir(parents=True, exist_ok=True)
        part.touch(exist_ok=False)
    return part


def _pid_part() -> Path:
    return tmp_dir() / f"{os.getpid()}-{secrets.token_hex(8)}.part"


def clean_parts(folder: Path | None = None) -> None:
    """Delete the `new_part` files of processes that are gone (killed, power cut)."""
    for part in (folder or tmp_dir()).glob("*.part"):
        match = _PID_PART.match(part.name)
        if match and not files.alive(int(match.group(1))):
            with suppress(OSError):  # a read-only cache: the run itself will say so
                part.unlink(missing_ok=True)


def atomic_write(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temp file named by this process, renamed over
    `path`, and deleted on any failure (SIGTERM included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# --- garbage collection -------------------------------------------------------------------------
def named_blobs(raw: bytes) -> set[str]:
    """The blobs one manifest file names (see the module docstring)."""
    try:
        data: Any = json.loads(raw)
        named = {data["sha256"]} if "sha256" in data else set()
        named.update(f["sha256"] for f in data.get("files") or ())
        if data.get("mmproj"):  # a Hub model's projector (hub_cache.Manifest.mmproj)
            named.add(data["mmproj"]["sha256"])
        if all(isinstance(d, str) and HEX64.match(d) for d in named):
            return named
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return {h.decode() for h in re.findall(rb"[0-9a-f]{64}", raw)}


def in_use() -> set[str]:
    """Every blob any manifest names, damaged ones included."""
    used: set[str] = set()
    for folder in manifest_dirs():
        for path in folder.rglob("*.json"):
            # A FIFO would hang the collector; an unreadable file names nothing (as before the
            # stores were one: `infer list` shows it damaged, `infer rm` removes it).
            with suppress(OSError), files.open_regular(path) as f:
                used |= named_blobs(f.read())
    return used


def collect() -> int:
    """Delete every blob no manifest names; return the bytes freed. The caller holds the
    `gc` lock (exclusively)."""
    used = in_use()
    freed = 0
    for blob in blobs_dir().glob("*"):
        if blob.name not in used:
            with suppress(OSError):
                freed += blob.stat().st_size
                blob.unlink()
    return freed


def disk_usage() -> tuple[int, int]:
    """Bytes in blobs, and in files being written (tmp/)."""
    return folder_size(blobs_dir()), folder_size(tmp_dir())


def folder_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*") if p.is_file()) if d.is_dir() else 0


# --- the old separate stores ------------------------------------------------------------------
def adopt(old_blobs: Path, old_tmp: Path) -> None:
    """Move the blobs of an old, separate store (`<cache>/quantized/blobs/`) into blobs/, delete
    the parts dead processes left in its `old_tmp`, then remove the emptied folders. Idempotent,
    and safe to interrupt or to run in two processes at once (they take turns): each file moves
    by one atomic rename, so it is always in one of the two folders and a reader looks in both
    (`legacy_or_blob`). Across file systems a file is copied to tmp/, its sha256 checked, and
    installed before the old one is deleted. A blob the store already has (the same bytes
    pulled from the Hub) is not stored twice."""
    if not (old_blobs.is_dir() or old_tmp.is_dir()):  # the common case: nothing to do
        return
    with lock("adopt"):
        for old in sorted(old_blobs.glob("*")):
            if HEX64.match(old.name) and old.is_file() and not old.is_symlink():
                _adopt_one(old)
        clean_parts(old_tmp)
        for folder in (old_blobs, old_tmp):
            with suppress(OSError):
                folder.rmdir()  # only when empty: a stray file stays for its owner to see


def _adopt_one(old: Path) -> None:
    dest = blob_path(old.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if dest.stat().st_size == old.stat().st_size:
            old.unlink()  # already here: the bytes of a Hub file, or an earlier run's copy
            return
    except FileNotFoundError:
        pass
    try:
        os.replace(old, dest)
    except FileNotFoundError:
        pass  # moved or removed by someone else (an older infer that takes no lock)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy_in(old, dest)


def _copy_in(old: Path, dest: Path) -> None:
    """Another file system: copy into tmp/, check the digest, install, then delete the old."""
    part = _pid_part()
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest = hashlib.sha256()
        with old.open("rb") as src, part.open("wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != old.name:
            return  # not the bytes its name promises: leave it where it is
        os.replace(part, dest)
        old.unlink()
    finally:
        part.unlink(missing_ok=True)


def legacy_or_blob(sha256: str, old_blobs: Path) -> Path:
    """Where a blob is now: in blobs/, or still in an old store's folder (a migration that was
    interrupted, or could not run on a read-only cache)."""
    dest = blob_path(sha256)
    if not dest.exists() and (old_blobs / sha256).is_file():
        return old_blobs / sha256
    return dest


# --- locks -------------------------------------------------------------------------------------
@contextmanager
def lock(
    name: str, *, shared: bool = False, wait: bool = True, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """An advisory file lock (flock) under locks/. With wait=False, raise BlockingIOError when
    it is held; otherwise call `on_wait()` once, then block."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    path = root() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def collect_garbage(wait: bool = False) -> int:
    """Delete orphaned blobs under the `gc` lock. Without `wait`, give up at once if a writer
    is running (it holds the lock shared, and its new blob has no manifest yet)."""
    try:
        with lock("gc", wait=wait):
            return collect()
    except BlockingIOError:
        return 0
