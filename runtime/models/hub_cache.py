"""The Hub models in the local cache: their manifests and snapshot links, over the one blob store
(blob_store.py). No network here: reading it is all an offline run needs.

    <cache_dir>/hub/
        blobs/<sha256>                            the blob store's: every model file, pulled or
                                                  quantized, named by its digest
        snapshots/<owner>/<repo>/<commit>/<file>  links to blobs under the Hub's file names, so
                                                  llama.cpp finds the parts of a split model
        manifests/<owner>/<repo>/<id>.json        one per pulled model: the reference(s) that
                                                  name it, the commit, each file's sha256 and size
        tmp/, locks/                              the blob store's: downloads in progress
                                                  (resumable, never a model), flock files

A model exists only once its manifest is written, and a manifest is written only after every
blob it names has been verified and moved into blobs/ (atomic renames throughout), so a failed or
interrupted pull leaves nothing that counts as a model. Removing a model deletes its manifest,
then the blob store's collector deletes the blobs no manifest of any kind (Hub or quantized)
names. Every path is built from validated parts (repo names, file names, hex digests) and stays
inside the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import BadReferenceError, storage
from ..files import open_regular
from . import blob_store
from .blob_store import HEX64 as _HEX64
from .blob_store import atomic_write, lock
from .refs import HubRef, check_filename, parse_ref

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class CachedFile:
    path: str  # inside the repository
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """One pulled model. `refs` are the lookup keys (see ref_key) that resolve to it."""

    name: str
    repo: str
    revision: str | None
    commit: str
    files: tuple[CachedFile, ...]
    refs: tuple[str, ...]
    pulled_at: str  # ISO 8601, UTC
    license: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # from the GGUF header at pull time
    mmproj: CachedFile | None = None  # the multimodal projector pulled with it (projector.py)

    @property
    def id(self) -> str:
        key = f"{self.revision or ''}\0{self.files[0].path}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.all_files)

    @property
    def all_files(self) -> tuple[CachedFile, ...]:
        """The model's parts and its projector: every file the manifest keeps."""
        return self.files + ((self.mmproj,) if self.mmproj is not None else ())

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "format": 1}, indent=2)


def root() -> Path:
    return blob_store.root()


def _repo_parts(repo: str) -> tuple[str, str]:
    owner, _, name = repo.lower().partition("/")
    return owner, name


def snapshot_path(repo: str, commit: str, filename: str) -> Path:
    return root().joinpath("snapshots", *_repo_parts(repo), commit, *filename.split("/"))


def model_path(m: Manifest) -> Path:
    """The file to load: the first (or only) part."""
    return snapshot_path(m.repo, m.commit, m.files[0].path)


def mmproj_path(m: Manifest) -> Path | None:
    """The projector pulled with the model, if any."""
    return snapshot_path(m.repo, m.commit, m.mmproj.path) if m.mmproj is not None else None


def ref_key(ref: HubRef) -> str:
    """What a reference asks for, normalised: Hub repository names are case-insensitive, and so
    are quant tags; no revision means the default branch."""
    wanted = (
        f"file={ref.filename}"
        if ref.filename
        else f"quant={ref.quant.upper()}"
        if ref.quant
        else "default"
    )
    revision = "" if ref.revision in (None, "main") else ref.revision  # main: the default
    return f"{ref.repo.lower()}@{revision}#{wanted}"


@dataclass(frozen=True)
class Damaged:
    """A manifest file that does not read as one (truncated, hand-edited, refs that name
    nothing): not a model, but `infer list` shows it, `infer rm` removes it, `infer pull`
    rewrites it, and the blobs it mentions are kept until one of those happens."""

    path: Path
    repo: str  # from its folder (lower case)
    name: str | None  # the name it records, when that much can be read (a valid Hub name)
    refs: tuple[str, ...]
    blobs: frozenset[str]  # every sha256 the file mentions
    reason: str

    def matches(self, ref: HubRef) -> bool:
        """Whether `ref` may mean this model: by its refs or its name; with neither readable,
        any reference to its repository does."""
        named = _hub_ref(self.name)
        return ref_key(ref) in self.refs or named is None or ref_key(named) == ref_key(ref)


def _hub_ref(name: object) -> HubRef | None:
    try:
        ref = parse_ref(name) if isinstance(name, str) else None
    except BadReferenceError:
        return None
    return ref if isinstance(ref, HubRef) else None


class _Invalid(ValueError):
    pass


def _mmproj(raw: Any) -> CachedFile | None:
    """The manifest's projector entry (absent in manifests written before projectors)."""
    if raw is None:
        return None
    return CachedFile(str(raw["path"]), str(raw["sha256"]), int(raw["size"]))


def _parse(path: Path, data: Any) -> Manifest:
    """A manifest, validated like any input (a hand-edited one could name '../../x'); raises
    _Invalid (a ValueError) with the reason."""
    try:
        files = tuple(
            CachedFile(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in data["files"]
        )
        m = Manifest(
            str(data["name"]),
            str(data["repo"]),
            data.get("revision"),
            str(data["commit"]),
            files,
            tuple(data["refs"]),
            str(data["pulled_at"]),
            data.get("license"),
            dict(data.get("summary") or {}),
            _mmproj(data.get("mmproj")),
        )
        ref = parse_ref(m.repo)
    except KeyError as e:
        raise _Invalid(f"no {e.args[0]!r} field") from None
    except (TypeError, ValueError, AttributeError, BadReferenceError):
        raise _Invalid("a field has the wrong type") from None
    if not isinstance(ref, HubRef) or ref.quant or ref.revision or not files:
        raise _Invalid("bad repo or files")
    if (path.parent.parent.name, path.parent.name) != _repo_parts(m.repo):
        raise _Invalid(f"repo {m.repo} is not its folder's")
    for f in m.all_files:
        try:
            check_filename(f.path)
        except BadReferenceError:
            raise _Invalid("a file name that leaves the cache") from None
        if not _HEX64.match(f.sha256) or f.size < 0:
            raise _Invalid("a file's sha256 or size is invalid")
    if not _HEX40.match(m.commit) or not isinstance(m.revision, (str, type(None))):
        raise _Invalid("bad commit or revision")
    prefix = f"{m.repo.lower()}@"
    if not isinstance(data["refs"], list) or not m.refs:
        raise _Invalid("no refs")
    if not all(isinstance(r, str) and r.startswith(prefix) and "#" in r for r in m.refs):
        raise _Invalid("refs that name another model")
    if path.stem != m.id:
        raise _Invalid("its file name is not its id")
    return m


def _read(path: Path) -> Manifest | Damaged | None:
    """A manifest file, or what can be told of a damaged one; None if it vanished."""
    data: Any = None
    try:
        with open_regular(path) as f:  # a FIFO would hang `infer list`
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raw, reason = b"", f"unreadable ({e.strerror})"
    else:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise _Invalid("not a JSON object")
            return _parse(path, data)
        except _Invalid as e:
            reason = str(e)
        except ValueError:
            reason = "not JSON (truncated?)"
    repo = f"{path.parent.parent.name}/{path.parent.name}"
    name = data.get("name") if isinstance(data, dict) else None
    refs = data.get("refs") if isinstance(data, dict) else None
    named = _hub_ref(name)
    return Damaged(
        path,
        repo,
        name if named and named.repo.lower() == repo else None,
        tuple(r for r in refs if isinstance(r, str)) if isinstance(refs, list) else (),
        frozenset(h.decode() for h in re.findall(rb"[0-9a-f]{64}", raw)),
        reason,
    )


def scan(repo: str | None = None) -> tuple[list[Manifest], list[Damaged]]:
    """Every model in the cache (or in one repository), oldest pull first, and every damaged
    manifest."""
    base = root() / "manifests"
    pattern = "/".join(_repo_parts(repo)) + "/*.json" if repo else "*/*/*.json"
    good, damaged = [], []
    for path in sorted(base.glob(pattern)):
        found = _read(path)
        if isinstance(found, Manifest):
            good.append(found)
        elif found is not None:
            damaged.append(found)
    return sorted(good, key=lambda m: m.pulled_at), damaged


def manifests(repo: str | None = None) -> list[Manifest]:
    """Every model in the cache (or in one repository), oldest pull first."""
    return scan(repo)[0]


def find_damaged(ref: HubRef) -> Damaged | None:
    """A damaged manifest `ref` may name (when `find` finds no model)."""
    return next((d for d in scan(ref.repo)[1] if d.matches(ref)), None)


def find(ref: HubRef) -> Manifest | None:
    """The cached model a reference names, if any. Reads local files only."""
    key = ref_key(ref)
    candidates = manifests(ref.repo)
    for m in candidates:
        if key in m.refs:
            return m
    if ref.revision and _HEX40.match(ref.revision):  # a revision given as its commit id
        for m in candidates:
            if m.commit == ref.revision and ref_key(replace(ref, revision=m.revision)) in m.refs:
                return m
    return None


def is_complete(m: Manifest) -> bool:
    """Every file linked and of the recorded size (a cheap check: hashing GBs on every run
    would cost more than loading the model)."""
    for f in m.all_files:
        try:
            if snapshot_path(m.repo, m.commit, f.path).stat().st_size != f.size:
                return False
        except OSError:
            return False
    return True


def _link(m: Manifest, f: CachedFile) -> None:
    dest = snapshot_path(m.repo, m.commit, f.path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(blob_store.blob_path(f.sha256), dest.parent), tmp)
    os.replace(tmp, dest)


def _manifest_file(m: Manifest) -> Path:
    return root().joinpath("manifests", *_repo_parts(m.repo), f"{m.id}.json")


def save(m: Manifest) -> None:
    """Link the model's files and write its manifest. A reference names one model: any other
    manifest of the repository that claimed one of these refs gives it up."""
    with lock("manifests"):
        for f in m.all_files:
            _link(m, f)
        for other in manifests(m.repo):
            if other.id != m.id and set(other.refs) & set(m.refs):
                kept = tuple(r for r in other.refs if r not in m.refs)
                if kept:
                    atomic_write(_manifest_file(other), replace(other, refs=kept).to_json())
                else:  # nothing names it any more: it could be neither run nor removed
                    _manifest_file(other).unlink(missing_ok=True)
        atomic_write(_manifest_file(m), m.to_json())  # replaces a damaged one of this id


def remove(m: Manifest | Damaged, on_wait: Callable[[], None] | None = None) -> int:
    """Delete a model (or a damaged manifest) and every blob no other model (pulled or
    quantized) uses; return the bytes freed. Waits for running pulls and installs (calling
    `on_wait` first): their new blobs have no manifest yet."""
    with storage(root(), "update"), lock("gc", on_wait=on_wait):
        (m.path if isinstance(m, Damaged) else _manifest_file(m)).unlink(missing_ok=True)
        return _collect()


def collect_garbage(wait: bool = False) -> int:
    """Delete orphaned blobs and links. Without `wait`, give up at once if a writer is running
    (it holds the gc lock shared, and its new blobs have no manifest yet)."""
    try:
        with lock("gc", wait=wait):
            return _collect()
    except BlockingIOError:
        return 0


def _collect() -> int:
    """The blob store's collector, then the snapshot links no Hub manifest names."""
    freed = blob_store.collect()
    links = {snapshot_path(m.repo, m.commit, f.path) for m in manifests() for f in m.all_files}
    snapshots = root() / "snapshots"
    for dirpath, _dirnames, filenames in os.walk(snapshots, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            if p not in links:
                p.unlink(missing_ok=True)
        if Path(dirpath) != snapshots:
            with suppress(OSError):
                os.rmdir(dirpath)  # only succeeds when empty
    return freed
