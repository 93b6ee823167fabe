"""What Ollama's listings say about the models a server can run (`/api/tags`, `/api/show`,
`/api/ps`), from the local store as `infer list` and `infer show` know it: sizes, sha256
digests and the GGUF header's facts. Never loads weights, never touches the network.

Clients are strict about these shapes: Zed requires `name, modified_at, size, digest` and
`details.{format, family, parameter_size, quantization_level}` as strings; Copilot reads
`model_info["<arch>.context_length"]` and `capabilities`. A model whose file cannot be read
still lists, with empty strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InferError
from .backend import ModelInfo
from .ollama_protocol import model_ref, ollama_name

# Architectures that make vectors, not text (llama.cpp's encoder-only and non-causal ones).
ENCODERS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert", "neo-bert"}
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Facts:
    """One model as Ollama's listings describe it; strings are "" where unknown."""

    size: int = 0
    digest: str = ""  # hex sha256 of the model file (of the parts' digests for a split set)
    modified: float = 0.0  # Unix seconds
    architecture: str = ""
    parameters: int = 0
    quantization: str = ""
    context_length: int | None = None
    template: str = ""
    license: str = ""
    encoder: bool = False  # vectors only
    metadata: tuple[tuple[str, Any], ...] = ()  # the header's scalar keys
    media: tuple[str, ...] = ()  # "vision", "audio": what its projector takes (projector.py)
    projector: tuple[tuple[str, Any], ...] = ()  # the projector header's scalar keys

    @property
    def capabilities(self) -> list[str]:
        """As Ollama lists them: "embedding" marks a model that only makes vectors (clients
        keep such models out of their chat pickers), though /api/embed takes text models too;
        "vision" (and "audio") come after the text ones, as Ollama appends them."""
        if self.encoder:
            return ["embedding"]
        found = ["completion", "tools"] if self.template else ["completion"]
        keys = {k for k, _ in self.metadata}
        if all(f"tokenizer.ggml.fim_{t}_token_id" in keys for t in ("pre", "suf", "mid")):
            found.append("insert")  # `suffix` works: fill-in-the-middle tokens (Ollama's word)
        return [*found, *self.media]


def facts(info: ModelInfo) -> Facts:
    """The facts of a model `backend.models()` lists (cached per file, size and mtime)."""
    from ..models.resolve import resolve

    try:
        resolved = resolve(info.id)
        stat = resolved.path.stat()
        key = (resolved.name, str(resolved.path), stat.st_size, stat.st_mtime_ns)
        return _facts(*key, info.created)
    except (InferError, OSError):  # a file gone or unreadable since it was listed
        return Facts(modified=float(info.created))


@lru_cache(maxsize=256)
def _facts(name: str, path: str, size: int, mtime_ns: int, created: int) -> Facts:
    from ..models.gguf import read_header
    from ..models.projector import projector_for
    from ..models.resolve import resolve

    resolved = resolve(name)
    try:
        h = read_header(path)
    except InferError:
        return Facts(size=size, modified=float(created or mtime_ns / 1e9))
    size, digest = _size_and_digest(resolved, Path(path), size)
    arch = h.architecture
    license_ = h.metadata.get("general.license")
    scalars = _scalars(h.metadata)
    return Facts(
        size=size,
        digest=digest,
        modified=float(created or mtime_ns / 1e9),
        architecture=arch,
        parameters=h.parameter_count,
        quantization=h.quantization or "",
        context_length=h.context_length,
        template=h.chat_template or "",
        license=license_ if isinstance(license_, str) else "",
        encoder=arch in ENCODERS or h.arch_value("attention.causal") is False,
        metadata=scalars,
        **_projector_facts(projector_for(Path(path))),
    )


def _projector_facts(projector: Path | None) -> dict[str, Any]:
    """What the model's projector adds: Ollama's `vision` capability and `projector_info`."""
    from ..models.gguf import read_header
    from ..models.projector import capabilities_or_none

    media = tuple(capabilities_or_none(projector))
    if projector is None or not media:
        return {}
    return {"media": media, "projector": _scalars(read_header(projector).metadata)}


def _scalars(metadata: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (k, v)
        for k, v in metadata.items()
        if isinstance(v, str | int | float | bool) and k != "tokenizer.chat_template"
    )


def _size_and_digest(resolved: Any, path: Path, size: int) -> tuple[int, str]:
    """The store's own sha256 where it has one (a pulled or quantized model); a bundled or
    named file is hashed once (cached with its facts)."""
    if resolved.manifest is not None:
        files = resolved.manifest.files
        if len(files) == 1:
            return files[0].size, files[0].sha256
        joined = "".join(f.sha256 for f in files).encode()
        return resolved.manifest.size, hashlib.sha256(joined).hexdigest()
    if resolved.quantized is not None:
        return resolved.quantized.size, resolved.quantized.sha256
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return size, digest.hexdigest()


def parameter_size(count: int) -> str:
    """Ollama's way to write a parameter count: "135M", "1.7B"."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K" if count else ""


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def details(f: Facts) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": f.architecture,
        "families": [f.architecture] if f.architecture else None,
        "parameter_size": parameter_size(f.parameters),
        "quantization_level": f.quantization,
    }


def tag(info: ModelInfo, f: Facts) -> dict[str, Any]:
    """An /api/tags entry."""
    name = ollama_name(info.id)
    return {
        "name": name,
        "model": name,
        "modified_at": _time(f.modified),
        "size": f.size,
        "digest": f.digest,
        "details": details(f),
    }


def process(info: ModelInfo, f: Facts) -> dict[str, Any]:
    """An /api/ps entry: a loaded model, when it unloads (far ahead: when nothing will),
    its context per sequence."""
    expires = info.expires_at if info.expires_at is not None else 4102444800.0  # 2100
    return {
        **tag(info, f),
        "expires_at": _time(expires),
        "size_vram": 0,
        "context_length": info.context or f.context_length or 0,
    }


def show(info: ModelInfo, f: Facts) -> dict[str, Any]:
    """An /api/show answer: the header's facts as Ollama's `model_info` keys."""
    arch = f.architecture
    model_info: dict[str, Any] = dict(f.metadata)
    model_info["general.architecture"] = arch
    model_info["general.parameter_count"] = f.parameters
    model_info.setdefault("general.basename", model_ref(info.id))
    if f.context_length:
        model_info[f"{arch}.context_length"] = f.context_length
    return {
        "license": f.license,
        "modelfile": f"# served by infer\nFROM {info.id}\n",
        "parameters": "",
        "template": f.template,
        "details": details(f),
        "model_info": model_info,
        "capabilities": f.capabilities,
        "modified_at": _time(f.modified),
        **({"projector_info": dict(f.projector)} if f.projector else {}),
    }


def find(models: list[ModelInfo], ref: str) -> ModelInfo | None:
    """The listed model a name (as Ollama clients send it, resolved with model_ref) means."""
    for m in models:
        if m.id == ref or model_ref(m.id) == ref:
            return m
    return None
