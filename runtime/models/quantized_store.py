"""Models quantized on this machine by `infer quantize`: their manifests, over the one blob store
(blob_store.py) that pulled models use too.

    <cache_dir>/quantized/
        manifests/<id>.json     one per model: its name (MODEL:TYPE), type, file digest and size,
                                and the model it was made from
    <cache_dir>/hub/
        blobs/<sha256>          the GGUF files (the blob store's, shared with pulled models)
        tmp/<pid>-<rand>.part   the quantizer's output while it runs: never a model

The same rules as the Hub cache: a model exists only once its manifest is written, and a manifest
is written only after its file was checked, hashed and renamed into blobs/ (atomic renames), so a
failed or interrupted quantization leaves nothing that counts as a model. The blob store's one
collector keeps every blob a Hub or a quantized manifest names.

Caches made before the stores were one have quantized/blobs/ (and quantized/tmp/): the first use
moves those files into the shared blobs/ (`blob_store.adopt`); until it has, a model's file is
found in either folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import files, paths
from ..errors import BadReferenceError, UnknownQuantTypeError, storage
from . import blob_store
from .refs import AliasRef, HubRef, parse_ref

# The types llama.cpp's quantizer makes without an importance matrix, with their approximate
# bits per weight (for the disk-space estimate; a K-quant "mix" keeps a few tensors at Q6_K).
TYPES: dict[str, float] = {
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.3,
    "Q3_K_L": 4.3,
    "Q3_K_M": 3.9,
    "Q3_K_S": 3.5,
    "Q2_K": 3.4,
    "F16": 16.0,
    "BF16": 16.0,
    "F32": 32.0,
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize has them
_HEX64 = blob_store.HEX64


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


def _old_blobs() -> Path:
    """Where quantized models' files were kept before the stores were one."""
    return root() / "blobs"


def model_path(m: QuantizedModel) -> Path:
    return blob_store.legacy_or_blob(m.sha256, _old_blobs())


def migrate() -> None:
    """Move an old cache's quantized/blobs/ into the shared blob store (once; a no-op after,
    at the cost of one stat). On a cache it cannot write, the files stay where they are and
    are found there."""
    with suppress(OSError):
        blob_store.adopt(_old_blobs(), root() / "tmp")


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


@dataclass(frozen=True)
class DamagedQuantized:
    """A quantized model's manifest that does not read as one (truncated, hand-edited): not a
    model, but `infer list` shows it and `infer rm NAME` removes it (its file name is the id of
    the name, so the name finds it even when its content is unreadable); the blobs it mentions
    are kept until then, as for the Hub cache's damaged manifests."""

    path: Path
    name: str | None  # the name it records, when that much can be read and is its file's
    blobs: frozenset[str]
    reason: str


def _load(path: Path) -> QuantizedModel | DamagedQuantized | None:
    """A manifest, validated like any input; what can be told of a damaged one; None if it
    vanished."""
    try:
        with files.open_regular(path) as f:  # a FIFO would hang `infer list`
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        return DamagedQuantized(path, None, frozenset(), f"unreadable ({e.strerror})")
    data: Any = None
    try:
        data = json.loads(raw.decode("utf-8"))
        fields = dict(data)
        fields.pop("format", None)
        m = QuantizedModel(**fields)
        if not (_HEX64.match(m.sha256) and isinstance(m.size, int) and m.size >= 0):
            reason = "its sha256 or size is invalid"
        elif key(m.name) is None or path.stem != m.id:
            reason = "its name is not its file's"
        elif not isinstance(m.summary, dict):
            reason = "a field has the wrong type"
        else:
            return m
    except (ValueError, TypeError, AttributeError):
        reason = "not a manifest (truncated?)"
    name = data.get("name") if isinstance(data, dict) else None
    own = isinstance(name, str) and _id(name) == path.stem
    return DamagedQuantized(
        path, name if own else None, frozenset(blob_store.named_blobs(raw)), reason
    )


def _id(name: str) -> str | None:
    k = key(name)
    return hashlib.sha256(k.encode()).hexdigest()[:16] if k else None


def scan() -> tuple[list[QuantizedModel], list[DamagedQuantized]]:
    """Every quantized model, oldest first, and every damaged manifest."""
    migrate()
    good, damaged = [], []
    for p in sorted((root() / "manifests").glob("*.json")):
        found = _load(p)
        if isinstance(found, QuantizedModel):
            good.append(found)
        elif found is not None:
            damaged.append(found)
    return sorted(good, key=lambda m: m.created_at), damaged


def models() -> list[QuantizedModel]:
    """Every quantized model, oldest first."""
    return scan()[0]


def find_damaged(text: str) -> DamagedQuantized | None:
    """The damaged manifest of the quantized model `text` names, if it is damaged; also by the
    name `infer list` gives one whose own name is unreadable (`quantized/<id>`)."""
    prefix, _, rest = text.partition("/")
    ident = rest if prefix == "quantized" and re.fullmatch(r"[0-9a-f]{16}", rest) else _id(text)
    if ident is None:
        return None
    found = _load(root() / "manifests" / f"{ident}.json")
    return found if isinstance(found, DamagedQuantized) else None


def remove_damaged(d: DamagedQuantized, on_wait: Callable[[], None] | None = None) -> int:
    """Delete a damaged manifest and every blob no other manifest names; the bytes freed."""
    with storage(blob_store.root(), "update"), blob_store.lock("gc", on_wait=on_wait):
        d.path.unlink(missing_ok=True)
        return blob_store.collect()


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


def install(part: Path, m: QuantizedModel) -> bool:
    """Move a checked output (a `blob_store.new_part`) into the blob store and record the model
    (replacing one of the same name); return whether a model of that name was replaced."""
    with storage(blob_store.root()), blob_store.lock("gc", shared=True):  # no GC in between
        blob_store.install(part, m.sha256)
        with blob_store.lock("quantized"):
            manifest = _manifest_file(m)
            replaced = manifest.exists()
            blob_store.atomic_write(manifest, m.to_json())
    blob_store.collect_garbage()  # the file of a model it replaced (later, if a pull runs)
    return replaced


def remove(m: QuantizedModel, on_wait: Callable[[], None] | None = None) -> int:
    """Delete a model, and its file unless another model (pulled or quantized) shares it;
    return the bytes freed. Waits for running pulls and installs (calling `on_wait` first)."""
    with storage(blob_store.root(), "update"), blob_store.lock("gc", on_wait=on_wait):
        _manifest_file(m).unlink(missing_ok=True)
        return blob_store.collect()


def disk_usage() -> tuple[int, int]:
    """Bytes still in the old folders (a cache not yet migrated): model files, and outputs of
    quantizations an old version left running."""
    return blob_store.folder_size(_old_blobs()), blob_store.folder_size(root() / "tmp")
