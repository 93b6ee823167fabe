"""Prompt (KV) cache across runs: the llama.cpp state of a long prompt, saved to disk, so that a
later run sharing its prefix (the same system prompt, the same document with another question)
evaluates only the rest.

One file per entry, `<cache_dir>/prompt-cache/<key>/<sha256 of the tokens>.kv`, where `key`
hashes everything that changes the state: the model's identity, the llama.cpp build and the
options that change the numbers in the KV cache. The file is llama.cpp's sequence state file
(`llama_state_seq_save_file`: magic, version, token count, tokens, KV cells) followed by a
trailer of ours: a JSON record (model, key, sizes, CRC-32 of the state) + its length + a magic.
llama.cpp reads exactly its own part and ignores what follows, and keeping the checksum in the
same file means one atomic rename publishes an entry: no index or sidecar to keep in step.

The checksum is not optional: llama.cpp ABORTS the process (GGML_ASSERT) on a truncated state
file, so nothing reaches `llama_state_seq_load_file` before its size and CRC are checked.
Writers never modify a published file (temp file + rename); a reader hard-links the file to a
private name first, so what it checked is what llama.cpp reads even if the name is replaced or
evicted meanwhile.

A hit is exact: the restored KV cache is the one the saving run computed, and the rest of the
prompt is decoded on top of it just as the same process would when reusing its KV cache in
memory (tests/test_prompt_cache.py checks the same tokens come out). It need not match a run
without the cache bit for bit: that one decodes the tail in a bigger batch, and llama.cpp's
numbers depend slightly on the batch size (its server's README says so of `cache_prompt`).
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import open_regular, pause_point
from ..llama.tokens import common_prefix
from .prompt_store import (
    SUFFIX,
    append_meta,
    checksum,
    evict,
    max_bytes,
    min_tokens,
    read_meta,
    read_tokens,
    root,
    sweep,
    unlink,
)

if TYPE_CHECKING:
    from ..llama.interface import Context
    from ..models.resolve import ResolvedModel


def model_identity(model: ResolvedModel) -> dict[str, Any]:
    """What tells this model's weights apart, without hashing gigabytes on every run: the Hub's
    sha256 of each file for a model from the cache, else the file's real path, size and mtime
    (a changed file is a different model)."""
    if model.manifest is not None:
        return {"sha256": [f.sha256 for f in model.manifest.files]}
    real = model.path.resolve()
    st = real.stat()
    return {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# What a best-effort cache meets and survives: OSError (a full disk, a read-only or vanished
# cache folder, an entry evicted by another run meanwhile) and struct.error (a file cut short
# between its size check and the read). llama.cpp refusing a state file is a return code, and a
# damaged entry fails its checks: neither raises.
EXPECTED_ERRORS = (OSError, struct.error)
MAX_REMEMBERED = 4096  # entries whose tokens a PromptCache keeps in memory (a few MB at most)


class PromptCache:
    """For one model, on the engine interface's Context: `restore` before decoding a prompt into
    an empty sequence, `save` once the sequence holds exactly the prompt (the engine does both
    for its own context; the server for its slots). Both are best-effort: any failure leaves
    the sequence as if there were no cache (never a crash, never a wrong state); with
    INFER_DEBUG=1 a failure other than the expected ones (EXPECTED_ERRORS) is raised."""

    def __init__(self, model: ResolvedModel) -> None:
        self.model = model
        self.min_tokens = min_tokens()  # read now: a bad value is a usage error at load time
        self.max_bytes = max_bytes()
        self._model: dict[str, Any] | None = None  # model_identity, read once
        self.last_error: str | None = None  # why the last restore/save gave up (debugging)
        self._base: list[int] | None = None  # tokens of the entry the last restore loaded
        self._base_path: Path | None = None
        # What _tokens_of read of each entry: (inode, size, mtime) -> its tokens.
        self._read: dict[Path, tuple[tuple[int, int, int], list[int] | None]] = {}
        sweep()  # temp files of runs that were killed while saving

    def key(self, ctx: Context) -> str:
        """The model's identity and everything else the saved numbers depend on (the
        context's identity: library, state format, micro-batch size, offload)."""
        # The model's part once (it reads the file's identity); the context's every time: a
        # server's context changes its LoRA scales between requests.
        if self._model is None:
            self._model = model_identity(self.model)
        blob = json.dumps({"model": self._model, **ctx.identity()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def folder(self, ctx: Context) -> Path:
        return root() / self.key(ctx)

    def restore(self, ctx: Context, seq: int, prompt: list[int], least: int | None = None) -> bool:
        """Fill sequence `seq` from the entry sharing the longest prefix with `prompt`, when
        one shares at least `least` tokens of it (`min_tokens` unless given); True if one was
        loaded. Without one the sequence is left as it was. The caller then trims what
        follows the common prefix and decodes only the rest of the prompt."""
        self._base = self._base_path = None
        least = self.min_tokens if least is None else least
        if len(prompt) < least:
            return False
        try:
            for path, tokens in self._candidates(ctx, prompt, least)[:3]:
                if self._load(ctx, seq, path, tokens):
                    self._base, self._base_path = tokens, path
                    return True
        except BaseException as e:
            ctx.remove(seq)  # whatever reached the KV cache: `tokens(seq)` must stay true
            if not isinstance(e, Exception):
                raise
            self._give_up("restore", e)
        return False

    def _give_up(self, doing: str, e: Exception) -> None:
        """A cache never fails a run: the expected failures (the disk, a file changed under
        us) are only recorded. Anything else is a bug in infer, recorded too, but raised with
        INFER_DEBUG=1 so that it can be seen."""
        self.last_error = f"{doing}: {type(e).__name__}: {e}"
        if not isinstance(e, EXPECTED_ERRORS) and os.environ.get("INFER_DEBUG"):
            raise e

    def _candidates(
        self, ctx: Context, prompt: list[int], least: int
    ) -> list[tuple[Path, list[int]]]:
        """Usable entries, the longest common prefix first (then the most recently used)."""
        key, scored = self.key(ctx), []
        for path in self.folder(ctx).glob(f"*{SUFFIX}"):
            try:
                st, tokens = self._tokens_of(path, key)
            except OSError:
                continue  # evicted by another run meanwhile
            if tokens is None:
                unlink(path)  # truncated, foreign or not ours: make room for a good one
                continue
            usable = common_prefix(tokens, prompt, len(prompt) - 1)
            if usable >= least and len(tokens) <= ctx.n_ctx_seq:
                scored.append((usable, st.st_mtime, path, tokens))
        scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
        return [(path, tokens) for _, _, path, tokens in scored]

    def _tokens_of(self, path: Path, key: str) -> tuple[os.stat_result, list[int] | None]:
        """An entry's tokens (None: not a usable entry of `key`). Entries never change once
        published (a new one is a new file, by rename), so what was read of a file is
        remembered by its inode, size and modification time (an inode number is reused): a
        server looks up every joining prompt, and reads each entry's head once, not once per
        request."""
        with open_regular(path) as f:  # never a FIFO: it would block the run
            st = os.fstat(f.fileno())
            known = self._read.get(path)
            if known is not None and known[0] == (st.st_ino, st.st_size, st.st_mtime_ns):
                return st, known[1]
            meta = read_meta(f, st.st_size)
            tokens = read_tokens(f, meta) if meta and meta.get("key") == key else None
        if len(self._read) >= MAX_REMEMBERED:
            self._read.clear()
        self._read[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), tokens)
        return st, tokens

    def _load(self, ctx: Context, seq: int, path: Path, tokens: list[int]) -> bool:
        private = path.with_name(f".load-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.link(path, private)  # the inode checked below is the one llama.cpp reads
        except FileNotFoundError:
            return False
        except OSError:
            private = path  # a file system without hard links: check and load in place
        try:
            if not self._intact(ctx, private, tokens):
                unlink(path)
                return False
            if not ctx.restore(seq, private, tokens):
                unlink(path)
                return False
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: the last to be evicted
            return True
        finally:
            if private != path:
                unlink(private)

    def _intact(self, ctx: Context, path: Path, tokens: list[int]) -> bool:
        with open_regular(path) as f:
            meta = read_meta(f, os.fstat(f.fileno()).st_size)
            if meta is None or meta.get("key") != self.key(ctx):
                return False
            if read_tokens(f, meta) != tokens:
                return False
            return checksum(f, int(meta["state_bytes"])) == meta.get("crc32")

    def save(
        self, ctx: Context, seq: int, prompt: list[int], evaluated: int, least: int | None = None
    ) -> bool:
        """Save sequence `seq`, which holds exactly `prompt`, when this run evaluated enough of
        it to be worth an entry (`least`, else `min_tokens`): a run that found most of its
        prompt here adds little. True if an entry was written."""
        least = self.min_tokens if least is None else least
        if min(len(prompt), evaluated) < least or self.max_bytes <= 0:
            return False
        if list(ctx.tokens(seq)) != prompt:
            return False
        try:
            final = self._write(ctx, seq, prompt)
        except Exception as e:  # a full disk or a read-only cache dir: still answer
            self._give_up("save", e)
            return False
        if final is None:
            return False
        base = self._base
        if self._base_path not in (None, final) and base and prompt[: len(base)] == base:
            unlink(self._base_path)  # superseded: the new entry holds all of it and more
        evict(self.max_bytes, keep=final)
        return True

    def _write(self, ctx: Context, seq: int, prompt: list[int]) -> Path | None:
        folder = self.folder(ctx)
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(array.array("i", prompt).tobytes()).hexdigest()[:32]
        final = folder / f"{digest}{SUFFIX}"
        tmp = folder / f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            n = len(prompt)
            state_bytes = ctx.save(seq, tmp)
            if not state_bytes:
                self.last_error = "save: llama.cpp could not write the state"
                return None
            with open(tmp, "r+b") as f:
                magic, version, _ = struct.unpack("<III", f.read(12))
                meta = {
                    "format": 1,
                    "model": self.model.name,
                    "key": self.key(ctx),
                    "tokens": n,
                    "state_bytes": state_bytes,
                    "magic": magic,
                    "version": version,
                    "crc32": checksum(f, state_bytes),
                    "created": time.time(),
                }
                size = append_meta(f, state_bytes, meta)
            if size > self.max_bytes:
                return None  # larger than the whole cache may be
            pause_point("prompt-cache-save")
            os.replace(tmp, final)
            return final
        finally:
            unlink(tmp)  # nothing left behind but a published entry, even on SIGTERM
