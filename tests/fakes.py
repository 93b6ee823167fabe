"""A scripted Engine for CLI-logic tests: it yields pre-set byte pieces and records calls."""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field

from infer.runtime.errors import Interrupted
from infer.runtime.params import SamplingParams


@dataclass
class FakeEngine:
    pieces: list[bytes] = field(default_factory=lambda: [b"Hello", b" world"])
    n_ctx: int = 128
    n_ctx_train: int = 256
    chat_template: str | None = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    )
    bos_text: str = "<s>"
    eos_text: str = "</s>"
    gpu_layers: int = 0
    load_s: float = 0.0
    interrupt_after: int | None = None  # set the cancel event after this many pieces
    calls: list[tuple[list[int], SamplingParams]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def tokenize(self, text: str, special: bool) -> list[int]:
        return list(text.encode())

    def with_bos(self, tokens: list[int]) -> list[int]:
        return tokens

    def generate(
        self, prompt: list[int], sampling: SamplingParams, cancel: threading.Event
    ) -> Generator[bytes, None, None]:
        self.calls.append((prompt, sampling))
        self.tokens = list(prompt)
        for i, piece in enumerate(self.pieces):
            if self.interrupt_after is not None and i >= self.interrupt_after:
                cancel.set()
            if cancel.is_set():
                raise Interrupted()
            if len(self.tokens) >= self.n_ctx:
                return
            self.tokens.append(0)
            yield piece

    def reset(self) -> None:
        self.tokens = []

    def close(self) -> None:
        pass
