"""`pull`: list a Hub repository, choose the model's file(s), download and verify what the
cache lacks, then record the model. Concurrent pulls share the work through locks: the second
one waits for the first one's download of a file and then finds it in the cache."""

from __future__ import annotations

import functools
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import DiskFullError, HubError, ModelFileError, OfflineError
from ..progress import NullProgress, PullProgress
from . import blob_store, hub, hub_cache
from .gguf import read_header
from .projector import capabilities, choose_projector
from .refs import HubRef
from .selection import Choice, RemoteFile, choose, quant_label

# Room left for everything else on the disk when deciding whether a download fits.
DISK_MARGIN = 64 << 20


def pull(
    ref: HubRef, *, progress: PullProgress | None = None, offline: bool | None = None
) -> hub_cache.Manifest:
    """Download the model `ref` names into the cache (what is already there is not fetched
    again) and return its manifest. Always asks the Hub which commit `ref` means now."""
    progress = progress or NullProgress()
    if ref.revision == "main":  # the default branch: the same model as no revision at all
        ref = replace(ref, revision=None)
    s = hub.settings(offline)
    if s.offline:
        raise OfflineError(f"cannot pull {ref}: offline mode is on (HF_HUB_OFFLINE)")
    listing = hub.list_repo(s, ref.repo, ref.revision)
    choice = choose(listing.files, ref)
    if choice.note:
        progress.note(choice.note)
    mmproj = choose_projector(listing.files, choice.primary.path)
    wanted = [*choice.files, *([mmproj] if mmproj else [])]
    try:
        waiting = functools.partial(progress.note, "waiting for a running `infer rm` to finish")
        with blob_store.lock("gc", shared=True, on_wait=waiting):  # keeps rm off our fresh blobs
            _check_space(wanted)
            # The projector is fetched and checked like a part: the manifest, written last,
            # names either the model with its projector or nothing at all.
            digests = [_fetch(s, listing, f, progress) for f in wanted]
            manifest = _record(ref, listing, choice, digests, mmproj)
    finally:
        hub_cache.collect_garbage(wait=False)  # blobs of an older commit, or of a rejected file
    return manifest


def _part_key(f: RemoteFile) -> str:
    return f.sha256 or f"git-{f.git_oid}"


def _check_space(wanted: list[RemoteFile]) -> None:
    needed = 0
    for f in wanted:
        if f.sha256 and blob_store.has_blob(f.sha256, f.size):
            continue
        part = blob_store.part_path(_part_key(f))
        needed += f.size - (part.stat().st_size if part.exists() else 0)
    where = blob_store.root()
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if needed > 0 and needed + DISK_MARGIN > free:
        raise DiskFullError(where, needed, free)


def _fetch(
    s: hub.HubSettings, listing: hub.RepoListing, f: RemoteFile, progress: PullProgress
) -> str:
    """One file into blobs/, unless it is there already; return its sha256."""
    if f.sha256 and blob_store.has_blob(f.sha256, f.size):
        progress.note(f"{f.path}: already in the cache")
        return f.sha256
    if not (f.sha256 or f.git_oid):
        raise HubError(f"the Hub publishes no checksum for {f.path}; infer does not use it")
    key = _part_key(f)

    def waiting() -> None:
        progress.note(f"{f.path}: waiting for another infer pull of the same file")

    with blob_store.lock(f"file-{key}", on_wait=waiting):
        if f.sha256 and blob_store.has_blob(f.sha256, f.size):  # the other pull finished it
            return f.sha256
        part = blob_store.part_path(key)
        part.parent.mkdir(parents=True, exist_ok=True)
        sha256 = hub.download(s, listing.repo, listing.commit, f, part, progress)
        blob_store.install(part, sha256)
        return sha256


def _record(
    ref: HubRef,
    listing: hub.RepoListing,
    choice: Choice,
    digests: list[str],
    mmproj: RemoteFile | None,
) -> hub_cache.Manifest:
    """Write the manifest. The model answers to the reference pulled, to its canonical name
    (owner/repo:QUANT, or hf://owner/repo/file when the file name has no quant) and to its
    file."""
    primary = choice.primary.path
    n = len(choice.files)
    files = tuple(
        hub_cache.CachedFile(f.path, d, f.size)
        for f, d in zip(choice.files, digests[:n], strict=True)
    )
    projector = None
    if mmproj is not None:
        projector = hub_cache.CachedFile(mmproj.path, digests[n], mmproj.size)
        _check_projector(blob_store.blob_path(digests[n]))
    quant = quant_label(primary)
    by_file = HubRef(listing.repo, None, ref.revision, primary)
    canonical = HubRef(listing.repo, quant, ref.revision) if quant else by_file
    manifest = hub_cache.Manifest(
        name=str(canonical),
        repo=listing.repo,
        revision=ref.revision,
        commit=listing.commit,
        files=files,
        refs=tuple(sorted({hub_cache.ref_key(r) for r in (ref, canonical, by_file)})),
        pulled_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        license=listing.license,
        summary=_summary([blob_store.blob_path(d) for d in digests[:n]]),
        mmproj=projector,
    )
    hub_cache.save(manifest)
    return manifest


def _check_projector(path: Path) -> None:
    """A projector that does not read as one is refused before it counts as part of a model."""
    try:
        capabilities(path)
    except ModelFileError as e:
        raise ModelFileError(e.path, f"downloaded, but {e.reason}") from None


def _summary(parts: list[Path]) -> dict[str, Any]:
    """Header facts `infer list` shows, read once here (the header reader also rejects a file
    that is not a sound GGUF before it counts as a model)."""
    try:
        headers = [read_header(p) for p in parts]
    except ModelFileError as e:
        raise ModelFileError(e.path, f"downloaded, but {e.reason}") from None
    first = headers[0]
    return {
        "architecture": first.architecture,
        "quantization": first.quantization,
        "parameters": sum(h.parameter_count for h in headers),
        "context_length": first.context_length,
    }
