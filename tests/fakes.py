"""Scripted backends (runtime/llama/interface.py's Protocols) for tests without a model: a
Session that yields pre-set byte pieces for the token loop, and a Model whose Contexts follow a
rule, for scheduling, speculative acceptance and prompt-cache restore."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import Interrupted, MediaError
from infer.runtime.llama.offload import DeviceShare
from infer.runtime.media import Media
from infer.runtime.models.gguf import GGUFHeader
from infer.runtime.params import SamplingParams

if TYPE_CHECKING:
    from infer.runtime.llama.interface import Context, Model, Session


@dataclass
class FakeSession:
    """A Session (runtime/llama/interface.py) for the token-loop tests: it yields pre-set byte
    pieces (whatever the prompt) and records calls."""

    pieces: list[bytes] = field(default_factory=lambda: [b"Hello", b" world"])
    n_ctx: int = 128
    n_batch: int = 64
    interrupt_after: int | None = None  # set the cancel event after this many pieces
    calls: list[tuple[list[int], SamplingParams]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    prompt_eval_tokens: int = 0
    model: FakeModel = field(default_factory=lambda: FakeModel())
    closed: bool = False

    def __post_init__(self) -> None:
        self.context = FakeContext(1, self.n_ctx, self.n_batch)
        self.context.held[0] = self.tokens  # one list: the context's sequence 0 is the session
        self.model.contexts.append(self.context)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def decode_prompt(self, prompt: list[int], cancel: threading.Event) -> None:
        """Through sequence 0 of the context, as llama/session.py does: the common prefix is
        kept (all but the last token at most, so its logits are there to sample)."""
        ctx, common = self.context, 0
        limit = min(len(prompt) - 1, len(self.tokens))
        while common < limit and self.tokens[common] == prompt[common]:
            common += 1
        del self.tokens[common:]  # the cells only: the sequence keeps its sampler chain
        self.prompt_eval_tokens = len(prompt) - common
        for start in range(common, len(prompt), self.n_batch):
            ctx.add(0, prompt[start : start + self.n_batch], True)
            ctx.decode(cancel)

    def generate(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        *,
        ignore_eog: bool = False,
        on_sample: Callable[[int, Any], None] | None = None,
    ) -> Generator[bytes, None, None]:
        self.calls.append((prompt, sampling))
        self.decode_prompt(prompt, cancel)
        for i, piece in enumerate(self.pieces):
            if self.interrupt_after is not None and i >= self.interrupt_after:
                cancel.set()
            if cancel.is_set():
                raise Interrupted()
            if len(self.tokens) >= self.n_ctx:
                return
            self.tokens.append(0)
            if on_sample is not None:  # a row that makes the piece's first byte most likely
                from array import array

                row = array("f", bytes(4 * 256))
                row[piece[0] if piece else 0] = 1.0
                on_sample(piece[0] if piece else 0, row)
            yield piece

    def reset(self) -> None:
        self.tokens.clear()

    def sharing_cores(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()

    def close(self) -> None:
        self.closed = True


# --- the engine interface (runtime/llama/interface.py), scripted ------------------------------

EOG = 0


class FakeModel:
    """A Model whose "logits" are a rule: after token t comes t + 1, and after "z" (122) the
    end of generation. Tokens are the prompt's bytes, so "hi" is answered "jklmnopqrstuvwxyz".
    With temperature > 0 the sampler may skip a letter, seeded: choices with other seeds differ."""

    n_ctx = 128
    n_ctx_train = 4096
    n_vocab = 256
    n_layers = 1
    offloaded_layers = 0
    threads = 1
    chat_template: str | None = None
    bos_id = -1
    eos_id = EOG
    add_bos = False
    bos_text = ""
    eos_text = ""
    load_s = 0.0
    is_recurrent = False

    def __init__(self) -> None:
        self.header = GGUFHeader(Path("fake.gguf"), 3, {"general.architecture": "fake"})
        self.split: list[DeviceShare] = []
        self.adapters: list[Any] = []
        self.contexts: list[FakeContext] = []
        self.sessions: list[FakeSession] = []
        self.closed = False

    def tokenize(self, text: str, special: bool) -> list[int]:
        return list(text.encode())

    def tokenize_into_buffer(
        self, text: str, *, add_special: bool, special: bool
    ) -> tuple[Any, int]:
        tokens = self.tokenize(text, special)
        return tokens, len(tokens)

    def token_text(self, token: int) -> str:
        return chr(token) if token > 0 else ""

    def with_bos(self, tokens: list[int]) -> list[int]:
        return tokens

    def media_prompt(self, pieces: Sequence[list[int] | Media]) -> list[int]:
        raise MediaError("this model takes no images or audio: it has no projector (mmproj)")

    def piece(self, token: int) -> bytes:
        return bytes([token])

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def new_context(
        self, n_seq_max: int, n_ctx_seq: int, n_batch: int, *, flash_attn: bool | None = None
    ) -> FakeContext:
        ctx = FakeContext(n_seq_max, n_ctx_seq, n_batch)
        self.contexts.append(ctx)
        return ctx

    def new_session(self, n_ctx: int | None = None) -> FakeSession:
        session = FakeSession(n_ctx=n_ctx or self.n_ctx, model=self)
        self.sessions.append(session)
        return session

    def close(self) -> None:
        self.closed = True


class FakeContext:
    def __init__(self, n_seq_max: int, n_ctx_seq: int, n_batch: int) -> None:
        import random

        self._random = random
        self.n_seq_max, self.n_ctx_seq, self.n_batch = n_seq_max, n_ctx_seq, n_batch
        self.held: list[list[int]] = [[] for _ in range(n_seq_max)]
        self.queue: list[tuple[int, list[int], int]] = []  # (seq, tokens, rows with logits)
        self.rows: dict[int, list[int]] = {}  # batch row -> the sequence's tokens through it
        self.samplers: dict[int, tuple[SamplingParams, Any]] = {}
        self.decodes: list[list[tuple[int, int]]] = []  # per decode: (seq, tokens) in order
        self.copies: list[tuple[int, int]] = []
        self.restores: list[tuple[int, int]] = []  # (seq, tokens) restored from a saved state
        self.lora: tuple[float, ...] = ()  # the adapter scales applied (set_lora)
        self.decode_lora: list[tuple[float, ...]] = []  # per decode: the scales it ran with
        self.fail_next_decode = False
        # Tokens every decode holding them fails on, as llama.cpp refuses an id outside its
        # vocabulary (llama_decode returns -1 and keeps nothing of the batch).
        self.refuse: set[int] = set()
        self.step_delay = 0.0  # seconds each decode takes, for tests that act mid-answer
        self.closed = False

    def tokens(self, seq: int) -> list[int]:
        return self.held[seq]

    def room(self) -> int:
        return self.n_batch - sum(len(t) for _, t, _ in self.queue)

    def add(self, seq: int, tokens: Sequence[int], logits: int) -> int:
        queued = sum(len(t) for s, t, _ in self.queue if s == seq)
        if len(tokens) > self.room() or len(self.held[seq]) + queued + len(tokens) > self.n_ctx_seq:
            raise ValueError("does not fit")
        logits = min(int(logits), len(tokens))
        self.queue.append((seq, list(tokens), logits))
        return self.n_batch - self.room() - logits if logits else -1

    def add_media(self, seq: int, prompt: Sequence[int], start: int) -> int:
        raise ValueError("the fake context holds no media")

    def decode(self, cancel: threading.Event | None = None) -> None:
        queue, self.queue = self.queue, []
        if self.step_delay:
            import time

            time.sleep(self.step_delay)
        refused = any(tok in self.refuse for _, toks, _ in queue for tok in toks)
        if self.fail_next_decode or refused:
            self.fail_next_decode = False
            from infer.runtime.errors import EngineError

            raise EngineError(f"llama_decode failed on a batch (code {-1 if refused else 1})")
        if cancel is not None and cancel.is_set():
            raise Interrupted()
        self.decodes.append([(seq, len(t)) for seq, t, _ in queue])
        self.decode_lora.append(self.lora)
        self.rows, row = {}, 0
        for seq, toks, logits in queue:
            for i, tok in enumerate(toks):
                self.held[seq].append(tok)
                if i >= len(toks) - logits:
                    self.rows[row] = list(self.held[seq])
                row += 1

    def set_lora(self, scales: tuple[float, ...]) -> None:
        if self.queue:
            raise ValueError("adapter scales change between decodes only")
        self.lora = tuple(scales)

    def logits(self, row: int, n: int) -> Any:
        """n rows of 256 float32: 1.0 at the token the rule predicts (greedy), 0 elsewhere."""
        from array import array

        out = array("f", bytes(4 * 256 * n))
        for i in range(n):
            nxt = self.rows[row + i][-1] + 1
            out[256 * i + (EOG if nxt > ord("z") else nxt)] = 1.0
        return out

    def set_sampler(self, seq: int, params: SamplingParams, prompt: Sequence[int] = ()) -> None:
        self.samplers[seq] = (params, self._random.Random(params.seed))

    def sample(self, seq: int, row: int) -> int:
        params, rng = self.samplers[seq]
        nxt = self.rows[max(self.rows) if row == -1 else row][-1] + 1
        if params.temperature > 0:
            nxt += rng.randrange(2)
        return EOG if nxt > ord("z") else nxt

    def sample_probs(
        self, seq: int, row: int, n: int
    ) -> tuple[int, float, list[tuple[int, float]]]:
        # The rule's next token is certain at temperature 0; else it and the one after are
        # equally likely (the seeded skip of `sample`).
        params, _ = self.samplers[seq]
        token = self.sample(seq, row)
        if params.temperature <= 0:
            return token, 1.0, [(token, 1.0)][:n]
        nxt = self.rows[max(self.rows) if row == -1 else row][-1] + 1
        both = [EOG if t > ord("z") else t for t in (nxt, nxt + 1)]
        return token, 0.5, [(t, 0.5) for t in both][:n]

    def remove(self, seq: int, start: int = 0) -> None:
        del self.held[seq][start:]
        if start == 0:
            self.samplers.pop(seq, None)

    def copy(self, src: int, dst: int) -> None:
        self.copies.append((src, dst))
        self.held[dst] = list(self.held[src])

    def identity(self) -> dict[str, Any]:
        return {"fake": 1}

    def save(self, seq: int, path: Any) -> int:
        """A state file as llama.cpp lays one out: magic, version, token count, tokens."""
        import struct

        held = self.held[seq]
        data = struct.pack(f"<III{len(held)}i", 0x67677371, 1, len(held), *held)
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def restore(self, seq: int, path: Any, tokens: Sequence[int]) -> bool:
        import struct

        self.remove(seq)
        with open(path, "rb") as f:
            _, _, n = struct.unpack("<III", f.read(12))
            saved = list(struct.unpack(f"<{n}i", f.read(4 * n)))
        if saved != list(tokens):
            return False
        self.held[seq] = saved
        self.restores.append((seq, len(saved)))
        return True

    def sharing_cores(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()

    def close(self) -> None:
        self.closed = True


if TYPE_CHECKING:  # mypy checks that the fakes stand in for what they fake

    def _conforms(m: FakeModel, c: FakeContext, s: FakeSession) -> tuple[Model, Context, Session]:
        return m, c, s
