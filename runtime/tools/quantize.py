"""`infer quantize`: a new cached model MODEL:TYPE, made by llama.cpp's quantizer.

The quantizer (`llama_model_quantize`) runs in a child process, not in this one, because:
- it cannot be interrupted (no abort callback): on Ctrl-C the child is killed and its half-written
  output deleted, instead of waiting minutes for a large model;
- a failed GGML_ASSERT inside it aborts the whole process: here that is a one-line error;
- it reports progress only through llama.cpp's log, which the child writes to a pipe that this
  process reads line by line ("[  12/ 272] blk.0.attn_q.weight - ...").
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from ..errors import (
    Interrupted,
    ModelFileError,
    NotEnoughSpaceError,
    OptionError,
    QuantizeError,
    RequantizeError,
    UsageError,
    storage,
)
from ..files import pause_point
from ..llama.quantizer import ftype_value as ftype_value  # re-exported
from ..models import blob_store, hub_cache, quantized_store
from ..models.gguf import GGUFHeader, read_header
from ..models.quantized_store import TYPES, parse_type
from ..models.refs import AliasRef, HubRef, parse_ref
from ..models.registry import load_registry
from ..models.resolve import ResolvedModel, resolve
from ..params import physical_cores

# ggml tensor types with 8 or more bits per weight: F32, F16, Q8_0, Q8_1, Q8_K, I8…I64, F64, BF16.
_HIGH_BIT = {0, 1, 8, 9, 15, 24, 25, 26, 27, 28, 30}
_UNQUANTIZED = {0, 1, 28, 30}  # llama.cpp quantizes these without allow_requantize
DISK_MARGIN = 64 << 20
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_FAILED = re.compile(rb"failed to quantize: ([^\n]+)")
_FALLBACK = re.compile(rb"(\d+) of (\d+) tensor\(s\) required fallback")


class QuantizeProgress(Protocol):
    def tensor(self, index: int, total: int, name: str) -> None:
        """The quantizer started on tensor `index` (1-based) of `total`."""


@dataclass(frozen=True)
class QuantizeResult:
    model: quantized_store.QuantizedModel
    seconds: float
    source_size: int
    fallbacks: int  # tensors whose shape did not suit TYPE; llama.cpp chose a nearby type
    replaced: bool  # a model of the same name existed and was replaced


def is_low_bit(headers: list[GGUFHeader]) -> bool:
    """Whether any tensor is quantized below 8 bits (read from the header: no weights loaded)."""
    return any(t.type not in _HIGH_BIT for h in headers for t in h.tensors)


@dataclass(frozen=True)
class QuantizePlan:
    """A quantization checked and ready to run (see `plan`)."""

    source: ResolvedModel
    type: str
    name: str  # the new model's name, "BASE:TYPE"
    base: str
    headers: list[GGUFHeader]
    requantize: bool  # llama.cpp must be allowed to requantize (a Q8_0 source, or the flag)
    estimated_size: int

    @property
    def source_size(self) -> int:
        return sum(h.file_size for h in self.headers)

    @property
    def source_quantization(self) -> str:
        return self.headers[0].quantization


def plan(
    source: ResolvedModel | str, type_name: str, *, allow_requantize: bool = False
) -> QuantizePlan:
    """Check everything that can be checked before the quantizer runs: the type, the source's
    header (RequantizeError for a source already below 8 bits unless `allow_requantize`), the
    new name ("BASE:TYPE"; BASE is the alias, the Hub repository or the file's name) and the
    free disk space."""
    type_name = parse_type(type_name)
    source = resolve(source) if isinstance(source, str) else source
    headers = _headers(source)
    if is_low_bit(headers) and not allow_requantize:
        raise RequantizeError(source.name, headers[0].quantization)
    base = _base_name(source)
    name = f"{base}:{type_name}"
    _check_name_free(name)
    needed = estimate_size(headers, type_name)
    _check_space(needed)
    requantize = any(t.type not in _UNQUANTIZED for h in headers for t in h.tensors)
    return QuantizePlan(source, type_name, name, base, headers, requantize, needed)


def run(
    p: QuantizePlan, *, threads: int | None = None, progress: QuantizeProgress | None = None
) -> QuantizeResult:
    """Run the quantizer and add its output to the store. Nothing is added when it fails or
    is interrupted (Interrupted)."""
    if threads is not None and threads < 1:
        raise OptionError("threads", f"must be >= 1 (got {threads})")
    blob_store.clean_parts()
    part = blob_store.new_part()
    started = time.monotonic()
    try:
        fallbacks = _run(p.source.path, part, p.type, p.requantize, threads, progress)
        model = _record(p, part)
        seconds = time.monotonic() - started
        replaced = quantized_store.install(part, model)
    finally:
        part.unlink(missing_ok=True)  # gone already after a successful install; SIGTERM too
    return QuantizeResult(model, seconds, p.source_size, fallbacks, replaced)


def quantize(
    source: ResolvedModel | str,
    type_name: str,
    *,
    allow_requantize: bool = False,
    threads: int | None = None,
    progress: QuantizeProgress | None = None,
) -> QuantizeResult:
    """`plan` then `run`: quantize a local model to `type_name` as a new model "BASE:TYPE"."""
    checked = plan(source, type_name, allow_requantize=allow_requantize)
    return run(checked, threads=threads, progress=progress)


def _headers(source: ResolvedModel) -> list[GGUFHeader]:
    m = source.manifest
    if m is not None:
        return [read_header(hub_cache.snapshot_path(m.repo, m.commit, f.path)) for f in m.files]
    return [read_header(source.path)]


def _base_name(source: ResolvedModel) -> str:
    if source.quantized is not None:
        return source.quantized.base
    if source.spec is not None:
        return source.spec.name
    if source.manifest is not None:
        return source.manifest.repo
    # A local file: its stem, made into something that parses as an alias ("tiny:Q8_0").
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.path).name.removesuffix(".gguf"))
    return stem.strip(".-") or "model"


def _check_name_free(name: str) -> None:
    """The new name must not already mean something else: `resolve` prefers an alias and the Hub
    cache over a quantized model, so such a model could never be run by its name."""
    if quantized_store.key(name) is None:
        raise UsageError(f"cannot name the quantized model '{name}'")
    ref = parse_ref(name)
    if isinstance(ref, HubRef) and hub_cache.find(ref) is not None:
        raise UsageError(
            f"{name} is already in the cache, pulled from the Hub (to replace it: infer rm {name})"
        )
    if isinstance(ref, AliasRef):
        registry = load_registry()
        if ref.name in registry or ref.name.lower() in registry:
            raise UsageError(f"'{name}' is already an alias in models.toml")


def estimate_size(headers: list[GGUFHeader], type_name: str) -> int:
    """About how many bytes the output takes: matrices at TYPE's bits per weight, vectors (norms)
    as they are, plus the metadata; 10% extra for the tensors a K-quant mix keeps larger."""
    bpw = TYPES[type_name]
    total = 0
    for h in headers:
        total += h.data_offset
        for t in h.tensors:
            total += t.nbytes if len(t.shape) < 2 else int(math.prod(t.shape) * bpw / 8)
    return int(total * 1.1)


def _check_space(needed: int) -> None:
    where = blob_store.root()
    with storage(where, "write to"):
        where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if needed + DISK_MARGIN > free:
        raise NotEnoughSpaceError(where, needed, free)


def _run(
    src: Path,
    out: Path,
    type_name: str,
    requantize: bool,
    threads: int | None,
    progress: QuantizeProgress | None,
) -> int:
    """Run the quantizer in a child process; return how many tensors needed a fallback type."""
    code = "from infer.runtime.tools.quantize import child_main; child_main()"
    args = [str(src), str(out), type_name, str(threads or physical_cores()), str(int(requantize))]
    # A session of its own: the terminal's Ctrl-C reaches this process only, which kills the
    # child (in the finally below) and deletes its output.
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    failed, fallbacks, last = b"", 0, deque([b""], maxlen=3)
    try:
        for line in proc.stdout:
            if (m := _TENSOR_LINE.search(line)) and progress is not None:
                progress.tensor(int(m[1]), int(m[2]), m[3].decode(errors="replace"))
            if m and m[1] == b"1":
                pause_point("quantize")
            failed = m[1] if (m := _FAILED.search(line)) else failed
            fallbacks = int(m[1]) if (m := _FALLBACK.search(line)) else fallbacks
            if line.strip():
                last.append(line.strip())
        rc = proc.wait()
    except KeyboardInterrupt:
        raise Interrupted() from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if rc != 0:
        reason = failed or (f"crashed (signal {-rc}): ".encode() if rc < 0 else b"") + last[-1]
        raise QuantizeError(
            f"llama.cpp could not quantize {src.name}: {reason.decode(errors='replace')}"
        )
    return fallbacks


def _record(p: QuantizePlan, part: Path) -> quantized_store.QuantizedModel:
    """Check the output like any GGUF before it counts as a model, and describe it."""
    try:
        header = read_header(part)
    except ModelFileError as e:
        raise QuantizeError(f"the quantizer wrote an unusable file: {e.reason}") from None
    digest = hashlib.sha256()
    with part.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    source = p.source
    m, spec, q = source.manifest, source.spec, source.quantized
    # A file's name as typed ("./x.gguf") means nothing later: record where it is.
    path = str(Path(source.path).resolve())
    return quantized_store.QuantizedModel(
        name=p.name,
        type=p.type,
        sha256=digest.hexdigest(),
        size=part.stat().st_size,
        source=source.name if (m or spec or q) else path,
        source_path=path,
        base=p.base,
        created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        alias=spec.name if spec else (q.alias if q else None),
        repo=m.repo if m else (q.repo if q else None),
        license=m.license if m else (q.license if q else None),
        summary={
            "architecture": header.architecture,
            "quantization": header.quantization,
            "parameters": header.parameter_count,
            "context_length": header.context_length,
        },
    )


def child_main() -> None:
    """The child process: argv = SRC OUT TYPE THREADS REQUANTIZE. llama.cpp's log goes to stdout
    (a pipe to the parent); exit status 0 when the quantizer succeeded."""
    from ..llama.quantizer import quantize_file

    src, out, type_name, threads, requantize = sys.argv[1:6]
    rc = quantize_file(src, out, type_name, int(threads), requantize == "1")
    sys.exit(1 if rc else 0)
