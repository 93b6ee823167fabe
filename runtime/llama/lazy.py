"""Lazy grammars (llama.cpp's `llama_sampler_init_grammar_lazy_patterns`): a grammar that stays
inactive, allowing every token, until the answer reaches a trigger (a tool call's start marker),
and from there holds the rest to the grammar. It is how `tool_choice: "auto"` keeps a call's
arguments valid while leaving a plain answer alone.

The triggers travel beside the grammar as SamplingParams.grammar_triggers (plain
`GrammarTrigger(word, at_start)` data); constrained_chain makes the grammar lazy when it has any.

When a trigger is found, llama.cpp feeds the grammar the answer from the trigger's start to
the end of the token that completed it. Text after the trigger in that same token is not
checked first, and a piece the grammar rejects there throws inside llama.cpp (which aborts the
process through ctypes). So the sampler mirrors the trigger search here and re-picks, leaving
out any token that would run past a trigger's end: the grammar then always starts on exactly
the trigger, which every lazy grammar begins with.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from typing import Any

from ..params import GrammarTrigger

_SPACE = b" \t\n\r\x0b\x0c"  # what std::regex's \s matches in a byte string
_ECMA_SPECIAL = re.compile(r"[.^$|()*+?\[\]{}\\/]")


def pattern(trigger: GrammarTrigger) -> str:
    """The ECMAScript pattern llama.cpp searches the answer so far with for `trigger`; its group
    is where the grammar's input starts."""
    word, at_start = trigger
    escaped = _ECMA_SPECIAL.sub(lambda m: "\\" + m.group(0), word)
    return f"^\\s*({escaped})" if at_start else f"({escaped})"


def init_sampler(
    ll: Any, vocab: Any, grammar: str, triggers: Sequence[GrammarTrigger]
) -> tuple[Any, Any]:
    """llama.cpp's lazy grammar sampler (NULL if it cannot parse the grammar) and the Watch
    that mirrors its trigger search. A word that is one token of the vocabulary (Qwen's
    `<tool_call>`) triggers as that token too."""
    tokens = [t for t in (_single_token(ll, vocab, word) for word, _ in triggers) if t is not None]
    patterns = [pattern(t).encode() for t in triggers]
    c_patterns = (ctypes.c_char_p * len(patterns))(*patterns)
    c_tokens = (ll.llama_token * max(1, len(tokens)))(*tokens)
    sampler = ll.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.encode("utf-8"), b"root", c_patterns, len(patterns), c_tokens, len(tokens)
    )
    return sampler, Watch(ll, vocab, triggers, set(tokens))


def _single_token(ll: Any, vocab: Any, word: str) -> int | None:
    """The token `word` is when the vocabulary has it as one token (special or user-defined,
    such as Qwen's `<tool_call>`), whose text is exactly `word`."""
    text = word.encode("utf-8")
    out = (ll.llama_token * 8)()
    if ll.llama_tokenize(vocab, text, len(text), out, 8, False, True) != 1:
        return None
    buf = ctypes.create_string_buffer(256)
    n = ll.llama_token_to_piece(vocab, out[0], buf, 256, 0, True)
    return int(out[0]) if buf.raw[: max(n, 0)] == text else None


class Watch:
    """The trigger search of llama.cpp's lazy grammar, mirrored over the accepted tokens'
    pieces, so that the sampler knows whether the grammar is awake yet and which picks would
    wake it part-way through a token."""

    __slots__ = ("_text", "awake", "buffer", "ll", "pieces", "tokens", "triggers", "vocab")

    def __init__(
        self, ll: Any, vocab: Any, triggers: Sequence[GrammarTrigger], tokens: set[int]
    ) -> None:
        self.ll, self.vocab, self.tokens = ll, vocab, tokens
        self.triggers = [(word.encode("utf-8"), at_start) for word, at_start in triggers]
        self.pieces: dict[int, bytes] = {}
        self._text = ctypes.create_string_buffer(256)
        self.reset()

    def reset(self) -> None:
        self.awake = False
        self.buffer = b""

    def piece(self, token: int) -> bytes:
        """The token's text as llama.cpp's grammar sees it (special tokens spelled out)."""
        known = self.pieces.get(token)
        if known is None:
            n = self.ll.llama_token_to_piece(self.vocab, token, self._text, 256, 0, True)
            known = self._text.raw[: max(n, 0)]
            self.pieces[token] = known
        return known

    def _end(self, text: bytes) -> int | None:
        """Where the first trigger in `text` ends; None without one."""
        ends = []
        for word, at_start in self.triggers:
            if at_start:
                body = text.lstrip(_SPACE)
                if body.startswith(word):
                    ends.append(len(text) - len(body) + len(word))
            else:
                at = text.find(word)
                if at >= 0:
                    ends.append(at + len(word))
        return min(ends) if ends else None

    def overshoots(self, token: int) -> bool:
        """Whether accepting `token` would wake the grammar with text after the trigger."""
        if self.awake or token in self.tokens:
            return False
        text = self.buffer + self.piece(token)
        end = self._end(text)
        return end is not None and end < len(text)

    def accept(self, token: int) -> None:
        if self.awake:
            return
        if token in self.tokens:
            self.awake = True
            return
        self.buffer += self.piece(token)
        if self._end(self.buffer) is not None:
            self.awake, self.buffer = True, b""
