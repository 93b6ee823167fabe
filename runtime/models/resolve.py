"""Turn a model reference into a local GGUF path: a file, a bundled package file, or the cache.

`resolve` never touches the network (a cached model runs offline without a single request);
`ensure_local` is `resolve` plus a pull when a Hub model is missing and offline mode is off."""

from __future__ import annotations

import difflib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InferError, ModelFileError, ModelNotFoundError, UsageError
from ..progress import PullProgress
from . import hub_cache, quantized_store
from .quantized_store import QuantizedModel
from .refs import AliasRef, HubRef, PathRef, parse_ref
from .registry import ModelDefaults, ModelSpec, bundled_path, load_registry


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: where its (first) file is and what the user called it."""

    path: Path
    name: str
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    spec: ModelSpec | None = None
    manifest: hub_cache.Manifest | None = None  # for a model from the Hub cache
    quantized: QuantizedModel | None = None  # for a model made by `infer quantize`


class NotDownloadedError(InferError):
    """A Hub model that is not in the local cache."""

    def __init__(
        self,
        ref: HubRef,
        alias: str | None = None,
        *,
        offline: bool = False,
        offline_by: str = "HF_HUB_OFFLINE",
    ) -> None:
        self.ref, self.alias, self.offline = ref, alias, offline
        target = alias or str(ref)
        if offline:
            message = (
                f"model '{target}' is not in the cache and offline mode is on ({offline_by}); "
                f"when online, run: infer pull {target}"
            )
        else:
            message = f"model '{target}' is not downloaded; run: infer pull {target}"
        super().__init__(message)


class DamagedManifestError(NotDownloadedError):
    """The cache has a manifest for the model that does not read as one: pulling rewrites it
    (so `ensure_local` repairs it as it pulls a missing model)."""

    def __init__(self, ref: HubRef, alias: str | None, damaged: hub_cache.Damaged) -> None:
        self.ref, self.alias, self.offline, self.damaged = ref, alias, False, damaged
        target = alias or str(ref)
        InferError.__init__(
            self,
            f"the cache's manifest of '{target}' is damaged ({damaged.reason}: {damaged.path}); "
            f"run: infer pull {target} to repair it, or infer rm {target}",
        )


def resolve(text: str) -> ResolvedModel:
    """Resolve a reference (alias, path, Hub reference) to a local file. Never touches the
    network: a Hub model must already be in the cache."""
    ref = parse_ref(text)
    if isinstance(ref, PathRef):
        if not ref.path.exists():
            raise ModelFileError(ref.path, _missing(ref.path))
        return ResolvedModel(ref.path, str(ref.path))
    if isinstance(ref, HubRef):
        try:
            manifest = _cached(ref)
        except NotDownloadedError:
            local = _quantized(text)  # "owner/repo:TYPE" made by `infer quantize`
            if local is None:
                raise
            return local
        return ResolvedModel(hub_cache.model_path(manifest), manifest.name, manifest=manifest)
    return _resolve_alias(ref)


def _missing(path: Path) -> str:
    """Why a path that does not exist() is unusable: Path.exists() is False for a symlink loop
    and a dangling link too, which "no such file" would misdescribe."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (too many levels of symbolic links)"
        if os.path.islink(path):
            return f"a broken symlink (to {os.readlink(path)}, which does not exist)"
        if e.errno != errno.ENOENT:
            return f"cannot read: {e.strerror or e}"
    return "no such file"


def _quantized(text: str) -> ResolvedModel | None:
    """A model made by `infer quantize`, with the defaults of the alias it was made from."""
    m = quantized_store.find(text)
    if m is None or not quantized_store.is_complete(m):
        return None
    spec = load_registry().get(m.alias) if m.alias else None
    defaults = spec.defaults if spec else ModelDefaults()
    return ResolvedModel(quantized_store.model_path(m), m.name, defaults, quantized=m)


def quantized_target(text: str) -> QuantizedModel | None:
    """For `rm`: the quantized model `text` runs, if it runs one (an alias or a Hub model of
    the same name comes first); also one whose file went missing, so that it can be removed."""
    try:
        return resolve(text).quantized
    except InferError:
        return quantized_store.find(text)


def ensure_local(
    text: str, *, progress: PullProgress | None = None, offline: bool | None = None
) -> ResolvedModel:
    """`resolve`, pulling a missing Hub model first (progress goes to `progress`). Offline
    (`offline=True`, or HF_HUB_OFFLINE when `offline` is None) a missing model is an error
    naming the `infer pull` command."""
    from . import hub

    try:
        return resolve(text)
    except NotDownloadedError as e:
        if hub.settings(offline).offline:
            by = "--offline" if offline else "HF_HUB_OFFLINE"  # the flag, when given, decided
            raise NotDownloadedError(e.ref, e.alias, offline=True, offline_by=by) from None
        from .pull import pull

        pull(e.ref, progress=progress, offline=False)
    return resolve(text)


def hub_target(text: str) -> tuple[HubRef, ModelSpec | None]:
    """The Hub reference behind a reference (an alias maps to its `hub` entry) for `pull` and
    `rm`; a local path or a bundled-only alias has none."""
    ref = parse_ref(text)
    if isinstance(ref, HubRef):
        return ref, None
    if isinstance(ref, PathRef):
        raise UsageError(f"'{text}' is a local file, not a Hub model")
    spec = _spec(ref)
    if spec.hub is None:
        raise UsageError(f"model '{spec.name}' is bundled with a Python package, not on the Hub")
    return spec.hub, spec


def _spec(ref: AliasRef) -> ModelSpec:
    registry = load_registry()
    spec = registry.get(ref.name) or registry.get(ref.name.lower())
    if spec is None:
        names = sorted(registry)
        close = difflib.get_close_matches(ref.name.lower(), names, n=3, cutoff=0.6)
        raise ModelNotFoundError(ref.name, names, close)
    return spec


def _resolve_alias(ref: AliasRef) -> ResolvedModel:
    try:
        spec = _spec(ref)
    except ModelNotFoundError:
        local = _quantized(ref.name)  # "alias:TYPE" or "file-stem:TYPE" from `infer quantize`
        if local is None:
            raise
        return local
    if spec.bundled:
        path = bundled_path(spec.bundled)
        if path is not None:
            return ResolvedModel(path, spec.name, spec.defaults, spec)
    if spec.hub is None:
        package = spec.bundled.partition("/")[0] if spec.bundled else "?"
        raise InferError(f"model '{spec.name}' needs the Python package '{package}' installed")
    manifest = _cached(spec.hub, spec.name)
    return ResolvedModel(hub_cache.model_path(manifest), spec.name, spec.defaults, spec, manifest)


def _cached(ref: HubRef, alias: str | None = None) -> hub_cache.Manifest:
    """The cached model a Hub reference names, from local files only. A manifest whose files
    went missing (deleted by hand) counts as not downloaded: pulling again repairs it."""
    manifest = hub_cache.find(ref)
    if manifest is None and (damaged := hub_cache.find_damaged(ref)) is not None:
        raise DamagedManifestError(ref, alias, damaged)
    if manifest is None or not hub_cache.is_complete(manifest):
        raise NotDownloadedError(ref, alias)
    return manifest
