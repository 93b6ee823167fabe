"""Models quantized on this machine by `infer quantize`: a small store beside the Hub cache.

    <cache_dir>/quantized/
        blobs/<sha256>          GGUF files, named by their digest
        manifests/<id>.json     one per model: its name (MODEL:TYPE), type, file digest and size,
                                and the model it was made from
        tmp/<pid>-<rand>.part   the quantizer's output while it runs: never a model

The same rules as the Hub cache: a model exists only once its manifest is written, and a manifest
is written only after its file was checked, hashed and renamed into blobs/ (atomic renames), so a
failed or interrupted quantization leaves nothing that counts as a model. It is a store of its own
because the Hub cache's garbage collector deletes every blob no Hub manifest names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import files, paths
from ..errors import BadReferenceError, UnknownQuantTypeError, storage
from . import hub_cache
from .refs import AliasRef, HubRef, parse_ref

# The types llama.cpp's quantizer makes without an importance matrix, with their approximate
# bits per weight (for the disk-space estimate; a K-quant "mix" keeps a few tensors at Q6_K).
TYPES: dict[str, float] = {
    "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5, "Q5_1": 6.0, "Q5_0": 5.5,
    "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.3,
    "Q3_K_L": 4.3, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q2_K": 3.4, "F16": 16.0, "BF16": 16.0,
    "F32": 32.0,
}  # fmt: skip
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize has them
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^(\d+)-[0-9a-f]{16}\.part$")


@dataclass(frozen=True)
class QuantizedModel:
    """One model made by `infer quantize`."""

    name: str  # what a user types: "owner/repo:Q4_K_M", "smollm2:Q8_0"
    type: str  # "Q4_K_M"
    sha256: str
    size: int
    source: str  # the name of the model it was made from
    source_path: str
    base: str  # the name without ":TYPE", kept for quantizing it again
    created_at: str  # ISO 8601, UTC
    alias: str | None = None  # the models.toml alias it came from: its defaults still apply
    repo: str | None = None  # the Hub repository it came from
    license: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # GGUF header facts for `infer list`

    @property
    def id(self) -> str:
        return hashlib.sha256((key(self.name) or self.name).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "format": 1}, indent=2)


def canonical_type(tag: str) -> str | None:
    """The canonical name of a type, any case ("q4_k_m" → "Q4_K_M", "Q4_K" → "Q4_K_M"); None
    for a type infer does not offer."""
    upper = tag.upper()
    upper = ALIASES.get(upper, upper)
    return upper if upper in TYPES else None


def parse_type(tag: str) -> str:
    found = canonical_type(tag)
    if found is None:
        raise UnknownQuantTypeError(tag, list(TYPES))
    return found


def root() -> Path:
    return paths.cache_dir() / "quantized"


def blob_path(sha256: str) -> Path:
    if not _HEX64.match(sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return root() / "blobs" / sha256


def model_path(m: QuantizedModel) -> Path:
    return blob_path(m.sha256)


def key(text: str) -> str | None:
    """The lookup key of a name like "Owner/Repo:q4_k_m" or "smollm2:q8_0": repository and
    alias names compare case-insensitively (as the Hub and models.toml do), the type by its
    canonical name. None when `text` cannot name a quantized model."""
    try:
        ref = parse_ref(text)
    except BadReferenceError:
        return None
    if isinstance(ref, HubRef):
        if not ref.quant or ref.revision or ref.filename:
            return None
        base, tag = ref.repo, ref.quant
    elif isinstance(ref, AliasRef):
        base, _, tag = ref.name.rpartition(":")
    else:
        return None
    canonical = canonical_type(tag)
    return f"{base.lower()}:{canonical}" if base and canonical else None


def _manifest_file(m: QuantizedModel) -> Path:
    return root() / "manifests" / f"{m.id}.json"


def _load(path: Path) -> QuantizedModel | None:
    """A manifest, validated like any input; None if it is unreadable or invalid."""
    try:
        with files.open_regular(path) as f:  # a FIFO would hang `infer list`
            data = json.loads(f.read().decode("utf-8"))
        data.pop("format", None)
        m = QuantizedModel(**data)
        if not (_HEX64.match(m.sha256) and isinstance(m.size, int) and m.size >= 0):
            return None
        if key(m.name) is None or path.stem != m.id or not isinstance(m.summary, dict):
            return None
        return m
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def models() -> list[QuantizedModel]:
    """Every quantized model, oldest first."""
    found = [m for p in sorted((root() / "manifests").glob("*.json")) if (m := _load(p))]
    return sorted(found, key=lambda m: m.created_at)


def find(text: str) -> QuantizedModel | None:
    """The quantized model `text` names, if any. Reads local files only."""
    wanted = key(text)
    if wanted is None:
        return None
    return next((m for m in models() if key(m.name) == wanted), None)


def is_complete(m: QuantizedModel) -> bool:
    try:
        return model_path(m).stat().st_size == m.size
    except OSError:
        return False


def new_part() -> Path:
    """A fresh (empty) file for the quantizer's output, named by this process so that one left
    behind by a killed run can be recognised and deleted (`clean_parts`)."""
    part = root() / "tmp" / f"{os.getpid()}-{secrets.token_hex(8)}.part"
    with storage(part.parent, "write to"):  # a read-only cache is found before the quantizer
        part.parent.mkdir(parents=True, exist_ok=True)
        part.touch(exist_ok=False)
    return part


def clean_parts() -> None:
    """Delete outputs of quantizations whose process is gone (killed, power cut)."""
    for part in (root() / "tmp").glob("*.part"):
        match = _PART.match(part.name)
        if match and not files.alive(int(match.group(1))):
            with suppress(OSError):  # a read-only cache: the run itself will say so
                part.unlink(missing_ok=True)


def install(part: Path, m: QuantizedModel) -> bool:
    """Move a checked output into blobs/ and record the model (replacing one of the same name);
    return whether a model of that name was replaced."""
    with storage(root()), hub_cache.lock("quantized"):
        dest = blob_path(m.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        manifest = _manifest_file(m)
        replaced = manifest.exists()
        hub_cache.atomic_write(manifest, m.to_json())
        _collect()
    return replaced


def remove(m: QuantizedModel) -> int:
    """Delete a model and its file unless another model shares it; return the bytes freed."""
    with hub_cache.lock("quantized"):
        _manifest_file(m).unlink(missing_ok=True)
        return _collect()


def _collect() -> int:
    kept = {m.sha256 for m in models()}
    freed = 0
    for blob in (root() / "blobs").glob("*"):
        if blob.name not in kept:
            with suppress(OSError):
                freed += blob.stat().st_size
                blob.unlink()
    return freed


def disk_usage() -> tuple[int, int]:
    """Bytes in model files, and in quantizations under way."""

    def total(d: Path, pattern: str) -> int:
        return sum(p.stat().st_size for p in d.glob(pattern) if p.is_file()) if d.is_dir() else 0

    return total(root() / "blobs", "*"), total(root() / "tmp", "*.part")
