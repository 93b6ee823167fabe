"""The load probe: before `infer serve` loads a model file into its own process, a child process
loads it first, so that a file llama.cpp aborts on (a GGML_ASSERT in its vocabulary or tensor
loader, a C++ exception that ends in std::terminate, a crash) ends the child, not the server
that is answering everyone else.

The child (`python -m infer.runtime.llama.probe`) does what the server is about to do with the
file: load the weights (mmap'd, no GPU layers: the weights are mapped, not read), the LoRA
adapters and the projector given with it, make a small context and decode one token through
it on one thread, as the server's warm-up does. It exits 0, or 1 with ggml's abort line
(llama/aborts.py) or an error line on stderr; a signal ends it otherwise. The verdict is kept
per file identity (path, size, mtime_ns of every file loaded), so a file is probed once per
server process and a file replaced by a new pull is probed again.

`infer run` and `chat` need no probe: an abort there ends only the command, with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineError, InferError
from ..params import LoadOptions, LoraAdapter

# A probe that runs longer than this is taken as a failure (a hung load would otherwise hold
# the server's one load at a time forever). Loading is a mapping and a one-token decode: a huge
# model on a slow disk is the only thing near it.
TIMEOUT_S = 600.0

ERROR_PREFIX = "infer: error: "
# The child's exit status for a load infer refused cleanly (an InferError: a bad adapter, a file
# llama.cpp declined with an error code): the caller's own load refuses it the same way, with
# its own error type, so the probe lets it go ahead.
REFUSED = 3


@dataclass(frozen=True)
class ProbeFailed:
    """Why a probe failed: llama.cpp's own line (or the signal), without the `infer: error:`."""

    reason: str
    timed_out: bool = False


_verdicts: dict[tuple[Any, ...], ProbeFailed | None] = {}
_lock = threading.Lock()


def identity(path: Path, options: LoadOptions) -> tuple[Any, ...]:
    """What makes two loads the same load: every file's path, size and modification time."""
    files = [path, *(Path(a.path) for a in options.lora)]
    if options.mmproj is not None:
        files.append(options.mmproj)
    out: list[Any] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((str(f), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(f), None, None))  # the load itself will say what is missing
    return tuple(out)


def check_loadable(path: Path, options: LoadOptions) -> None:
    """EngineError naming llama.cpp's reason when `path` (with `options`' adapters and
    projector) makes llama.cpp abort or crash in a child process; nothing when it loads, or when
    infer refuses it cleanly there (the caller's load then raises that error itself). Probed
    once per file identity in this process."""
    key = identity(path, options)
    with _lock:
        if key in _verdicts:
            verdict = _verdicts[key]
        else:
            verdict = run_probe(path, options)
            if verdict is None or not verdict.timed_out:  # a busy machine may do better later
                _verdicts[key] = verdict
    if verdict is not None:
        raise EngineError(verdict.reason)


def run_probe(path: Path, options: LoadOptions) -> ProbeFailed | None:
    """Run the child once; None when it loaded and decoded."""
    spec = {
        "path": str(path),
        "lora": [[a.path, a.scale] for a in options.lora],
        "mmproj": None if options.mmproj is None else str(options.mmproj),
        "verbose": options.verbose,  # the message's hint depends on it
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeFailed(f"loading {path.name} took over {TIMEOUT_S:.0f} s in a test load", True)
    except OSError:  # no process could be started (out of memory?): load as before, unprobed
        return None
    if options.verbose:  # llama.cpp's log of the test load, as --verbose shows the real one's
        sys.stderr.write(done.stderr.decode("utf-8", "replace"))
    if done.returncode in (0, REFUSED):
        return None
    return ProbeFailed(reason_of(done.returncode, done.stderr, path))


def reason_of(returncode: int, stderr: bytes, path: Path) -> str:
    """The child's last error line, or the signal that ended it."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    said = next((ln for ln in reversed(lines) if ln.startswith(ERROR_PREFIX)), None)
    if said is not None:
        return said[len(ERROR_PREFIX) :]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        # A C++ exception that reached std::terminate says what it was on the line before.
        what = next((ln.strip() for ln in reversed(lines) if "what():" in ln), "")
        return f"llama.cpp crashed ({name}) while loading {path.name}" + (
            f": {what}" if what else ""
        )
    last = lines[-1] if lines else f"exit status {returncode}"
    return f"a test load of {path.name} failed: {last}"


# -- the child ------------------------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> None:
    from ..models.gguf import read_header
    from .embedder import Embedder, embedding_tokens, is_embedding_model
    from .model import load_model

    path = Path(spec["path"])
    options = LoadOptions(
        ctx_size=64,  # a context is made and one token decoded: the size does not matter
        # One thread: a one-token decode needs no more, and more would spin against the
        # server's own decode threads at every barrier (on 2 busy cores, 1 thread took 0.04 s
        # where 2 took 1 to 7 s).
        threads=1,
        verbose=bool(spec.get("verbose")),
        gpu_layers=0,
        batch_size=64,
        lora=tuple(LoraAdapter(p, s) for p, s in spec.get("lora") or ()),
        mmproj=Path(spec["mmproj"]) if spec.get("mmproj") else None,
    )
    model = load_model(path, read_header(path), options)
    if is_embedding_model(model):  # the server computes vectors with an Embedder instead
        with Embedder(model, pooling=None, n_ctx=64) as embedder:
            embedder.embed([embedding_tokens(model, "a")[:64]])
        model.close()
        return
    context = model.new_context(1, 64, 64)
    token = max(model.bos_id, 0)
    context.add(0, [token], True)
    context.decode()
    context.close()
    model.close()


def main(argv: list[str]) -> int:
    try:
        _child(json.loads(argv[0]))
    except InferError as e:  # refused cleanly: the caller's own load refuses it too
        sys.stderr.write(f"{ERROR_PREFIX}{e}\n")
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
