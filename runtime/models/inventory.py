"""What `infer list` and `infer show` report, as plain dicts with stable field names (the CLI
prints them as tables or JSON). Metadata comes from GGUF headers, never from loading weights."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from . import blob_store, hub_cache, quantized_store
from .gguf import read_header
from .projector import capabilities_or_none, projector_for
from .registry import ModelSpec, load_registry
from .resolve import ResolvedModel, bundled_path


def _aliases() -> dict[str, list[str]]:
    """Manifest id → the models.toml aliases that run it (an alias whose bundled file is
    installed runs that file instead, so it is not listed against the cache)."""
    found: dict[str, list[str]] = {}
    for spec in load_registry().values():
        if spec.hub is None or (spec.bundled and bundled_path(spec.bundled)):
            continue
        m = hub_cache.find(spec.hub)
        if m is not None:
            found.setdefault(m.id, []).append(spec.name)
    return found


def _files(m: hub_cache.Manifest) -> list[dict[str, Any]]:
    return [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.files]


def _media(model: Path) -> dict[str, Any]:
    """The model's projector and what it takes in besides text ("vision", "audio"), from the
    projector's header."""
    mmproj = projector_for(model)
    return {
        "mmproj": str(mmproj) if mmproj else None,
        "capabilities": capabilities_or_none(mmproj),
    }


def cached_models() -> dict[str, Any]:
    """Every model in the cache, newest first, and the cache's disk use."""
    aliases = _aliases()
    good, damaged = hub_cache.scan()
    models = [_damaged_row(d) for d in damaged]
    for m in reversed(good):
        models.append(
            {
                "name": m.name,
                "repo": m.repo,
                "revision": m.revision,
                "commit": m.commit,
                "quantization": m.summary.get("quantization") or _header_quant(m),
                "size": m.size,
                "modified": m.pulled_at,
                "path": str(hub_cache.model_path(m)),
                "aliases": sorted(aliases.get(m.id, [])),
                "complete": hub_cache.is_complete(m),
                "files": _files(m),
                **_media(hub_cache.model_path(m)),
            }
        )
    models += _quantized_models()
    models.sort(key=lambda row: str(row["modified"]), reverse=True)  # stable: newest first
    blobs, partial = blob_store.disk_usage()  # one store: a file both kinds use counts once
    q_blobs, q_partial = quantized_store.disk_usage()  # a cache not yet migrated
    return {
        "models": models,
        "total_bytes": blobs + q_blobs,
        "partial_bytes": partial + q_partial,
        "cache_dir": str(hub_cache.root()),
    }


def _found_size_and_time(blobs: Iterable[str], manifest: Path) -> tuple[int, str]:
    """A damaged manifest's blobs' size on disk (those still there) and when it was written."""
    size = 0
    for digest in blobs:
        with suppress(OSError):
            size += blob_store.blob_path(digest).stat().st_size
    try:
        mtime = datetime.fromtimestamp(manifest.stat().st_mtime, timezone.utc)
        return size, mtime.isoformat(timespec="milliseconds")
    except OSError:
        return size, ""


def _damaged_row(d: hub_cache.Damaged) -> dict[str, Any]:
    """A manifest that does not read as one, with the fields of a model plus `damaged` (the
    reason): `rm` removes it and `pull` repairs it, so `list` must show it."""
    size, modified = _found_size_and_time(d.blobs, d.path)
    return {
        "name": d.name or d.repo,
        "repo": d.repo,
        "revision": None,
        "commit": None,
        "quantization": None,
        "size": size,
        "modified": modified,
        "path": str(d.path),
        "aliases": [],
        "complete": False,
        "files": [],
        "mmproj": None,
        "capabilities": [],
        "damaged": d.reason,
    }


def _quantized_models() -> list[dict[str, Any]]:
    """Models made by `infer quantize`, with the fields of a pulled one (no commit) plus
    `quantized_from`; damaged manifests as rows with `damaged` (the reason)."""
    good, damaged = quantized_store.scan()
    return [_damaged_quantized_row(d) for d in damaged] + [
        {
            "name": m.name,
            "repo": m.repo,
            "revision": None,
            "commit": None,
            "quantization": m.type,
            "size": m.size,
            "modified": m.created_at,
            "path": str(quantized_store.model_path(m)),
            "aliases": [],
            "complete": quantized_store.is_complete(m),
            "files": [{"path": m.sha256, "sha256": m.sha256, "size": m.size}],
            "quantized_from": m.source,
            **_media(quantized_store.model_path(m)),
        }
        for m in good
    ]


def _damaged_quantized_row(d: quantized_store.DamagedQuantized) -> dict[str, Any]:
    size, modified = _found_size_and_time(d.blobs, d.path)
    return {
        "name": d.name or f"quantized/{d.path.stem}",
        "repo": None,
        "revision": None,
        "commit": None,
        "quantization": None,
        "size": size,
        "modified": modified,
        "path": str(d.path),
        "aliases": [],
        "complete": False,
        "files": [],
        "damaged": d.reason,
        "quantized": True,
    }


def _header_quant(m: hub_cache.Manifest) -> str | None:
    try:
        return read_header(hub_cache.model_path(m)).quantization
    except ModelFileError:  # a broken entry still lists; `show` reports the error
        return None


def aliases() -> list[dict[str, Any]]:
    """Every models.toml alias and whether it can run now (bundled, cached) or needs a pull."""
    rows = []
    for spec in sorted(load_registry().values(), key=lambda s: s.name):
        bundled = bool(spec.bundled and bundled_path(spec.bundled))
        cached = spec.hub is not None and hub_cache.find(spec.hub) is not None
        status = "bundled" if bundled else "cached" if cached else "not downloaded"
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "hub": str(spec.hub) if spec.hub else None,
                "bundled": spec.bundled,
                "status": status,
                "capabilities": _alias_capabilities(spec) if status != "not downloaded" else [],
            }
        )
    return rows


def _alias_capabilities(spec: ModelSpec) -> list[str]:
    """What an alias's model takes besides text: its own `mmproj`, else its pulled model's."""
    if spec.mmproj is not None:
        return capabilities_or_none(spec.mmproj)
    found = bundled_path(spec.bundled) if spec.bundled else None
    m = hub_cache.find(spec.hub) if spec.hub is not None and found is None else None
    path = found or (hub_cache.model_path(m) if m is not None else None)
    return capabilities_or_none(projector_for(path)) if path is not None else []


def describe(resolved: ResolvedModel) -> dict[str, Any]:
    """Everything `infer show` prints, from the GGUF header(s) and the cache manifest."""
    m = resolved.manifest
    parts = [hub_cache.snapshot_path(m.repo, m.commit, f.path) for f in m.files] if m else []
    headers = [read_header(p) for p in parts or [resolved.path]]
    h = headers[0]
    license_ = h.metadata.get("general.license")
    return {
        "name": resolved.name,
        "path": str(resolved.path),
        "size": sum(x.file_size for x in headers),
        "architecture": h.architecture,
        "parameters": sum(x.parameter_count for x in headers),
        "quantization": h.quantization,
        "context_length": h.context_length,
        "layers": _int(h.arch_value("block_count")),
        "embedding_size": _int(h.arch_value("embedding_length")),
        "chat_template": h.chat_template,
        "license": license_ if isinstance(license_, str) else _license(resolved),
        "source": _source(resolved),
        **_media(Path(resolved.path)),
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _license(resolved: ResolvedModel) -> str | None:
    if resolved.manifest is not None:
        return resolved.manifest.license
    return resolved.quantized.license if resolved.quantized is not None else None


def _source(resolved: ResolvedModel) -> dict[str, Any]:
    q = resolved.quantized
    if q is not None:
        return {
            "type": "quantized",
            "from": q.source,
            "from_path": q.source_path,
            "repo": q.repo,
            "quantization": q.type,
            "sha256": q.sha256,
            "created_at": q.created_at,
        }
    m = resolved.manifest
    if m is not None:
        return {
            "type": "hub",
            "repo": m.repo,
            "revision": m.revision,
            "commit": m.commit,
            "files": _files(m),
            "pulled_at": m.pulled_at,
            "mmproj": asdict(m.mmproj) if m.mmproj else None,
        }
    if resolved.spec is not None and resolved.spec.bundled:
        return {"type": "bundled", "package": resolved.spec.bundled.partition("/")[0]}
    return {"type": "file", "path": str(Path(resolved.path).resolve())}
