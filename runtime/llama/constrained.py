"""The sampler chain that runs a grammar (GBNF checked by llama/grammar.py): llama.cpp's
grammar sampler around the plain chain, as rejection sampling, and lazily (llama/lazy.py) for
tool calls."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import Any

from ..params import GrammarTrigger
from .lazy import Watch, init_sampler


class _Grammar:
    """One sequence's constrained sampler: the plain chain (`inner`) picks a token from all
    candidates; only when the grammar rejects it are the candidates masked by the grammar and the
    pick made again (llama.cpp's common_sampler_sample without grammar_first). Masking every
    candidate each step costs a pass over the whole vocabulary per token (measured: 4 tok/s
    instead of 146 for a JSON schema on SmolLM2); the check of one token costs next to nothing."""

    __slots__ = ("dead", "eos", "grammar", "inner", "ll", "one", "one_arr", "saved", "watch")

    def __init__(
        self,
        ll: Any,
        inner: Any,
        grammar: Any,
        n_vocab: int,
        eos: int,
        greedy: bool,
        watch: Watch | None = None,
    ) -> None:
        self.ll, self.inner, self.grammar, self.eos = ll, inner, grammar, eos
        self.watch = watch  # a lazy grammar's trigger search, mirrored
        # A greedy chain only marks its pick: the candidates need no copy to pick again from.
        self.saved = None if greedy else (ll.llama_token_data * n_vocab)()
        self.one = (ll.llama_token_data * 1)()
        self.one_arr = ll.llama_token_data_array(self.one, 1, -1, False)
        self.dead = False  # no candidate fits: generation is ended, the grammar left alone

    def allows(self, token: int) -> bool:
        one = self.one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self.one_arr.size, self.one_arr.selected = 1, -1
        self.ll.llama_sampler_apply(self.grammar, ctypes.byref(self.one_arr))
        return one.logit != -math.inf

    def apply(self, cur_p: Any) -> None:
        ll, cur, saved = self.ll, cur_p.contents, self.saved
        n = int(cur.size) if saved is None else min(int(cur.size), len(saved))
        if saved is not None:
            ctypes.memmove(saved, cur.data, n * ctypes.sizeof(ll.llama_token_data))
        ll.llama_sampler_apply(self.inner, cur_p)
        watch = self.watch
        if watch is not None and not watch.awake:  # the grammar allows every token yet
            if watch.overshoots(cur.data[cur.selected].id):
                self._trigger_on_a_boundary(cur_p, n)
            return
        if self.allows(cur.data[cur.selected].id):
            return
        if saved is not None:
            ctypes.memmove(cur.data, saved, n * ctypes.sizeof(ll.llama_token_data))
        cur.size, cur.selected, cur.sorted = n, -1, False
        ll.llama_sampler_apply(self.grammar, cur_p)
        ll.llama_sampler_apply(self.inner, cur_p)
        if cur.selected < 0 or not self.allows(cur.data[cur.selected].id):
            # Nothing the vocabulary can spell continues the grammar (a character no token
            # has): end the answer rather than let llama.cpp abort on an impossible token.
            self.dead = True
            cur.selected = 0
            cur.data[0].id = self.eos

    def _trigger_on_a_boundary(self, cur_p: Any, n: int) -> None:
        """The pick again without the tokens that would wake the lazy grammar part-way through
        (see lazy.py): a few tries with the one picked left out, then all such candidates."""
        ll, cur, saved, watch = self.ll, cur_p.contents, self.saved, self.watch
        assert watch is not None
        out: set[int] = set()
        for attempt in range(5):
            out.add(cur.data[cur.selected].id)
            if saved is not None:
                ctypes.memmove(cur.data, saved, n * ctypes.sizeof(ll.llama_token_data))
            cur.size, cur.selected, cur.sorted = n, -1, False
            for i in range(n):
                token = cur.data[i].id
                if token in out or (attempt == 4 and watch.overshoots(token)):
                    cur.data[i].logit = -math.inf
            ll.llama_sampler_apply(self.inner, cur_p)
            if cur.selected >= 0 and not watch.overshoots(cur.data[cur.selected].id):
                return
        self.dead = True  # every candidate runs past a trigger: end the answer
        cur.selected = 0
        cur.data[0].id = self.eos

    def accept(self, token: int) -> None:
        self.ll.llama_sampler_accept(self.inner, token)
        if not self.dead:
            self.ll.llama_sampler_accept(self.grammar, token)
            if self.watch is not None:
                self.watch.accept(token)

    def reset(self) -> None:
        self.ll.llama_sampler_reset(self.inner)
        self.ll.llama_sampler_reset(self.grammar)
        if self.watch is not None:
            self.watch.reset()
        self.dead = False

    def free(self) -> None:
        self.ll.llama_sampler_free(self.inner)
        self.ll.llama_sampler_free(self.grammar)


_live: dict[int, _Grammar] = {}  # sampler address -> its state, until llama.cpp frees it
_iface: Any = None


def _state(smpl: Any) -> _Grammar:
    return _live[ctypes.cast(smpl, ctypes.c_void_p).value or 0]


def _interface(ll: Any) -> Any:
    """The llama_sampler_i every constrained sampler shares (kept for the process's life)."""
    global _iface
    if _iface is None:

        def free(smpl: Any) -> None:
            state = _live.pop(ctypes.cast(smpl, ctypes.c_void_p).value or 0, None)
            if state is not None:
                state.free()

        iface = ll.llama_sampler_i()
        iface.accept = ll.llama_sampler_i_accept(lambda s, t: _state(s).accept(t))
        iface.apply = ll.llama_sampler_i_apply(lambda s, p: _state(s).apply(p))
        iface.reset = ll.llama_sampler_i_reset(lambda s: _state(s).reset())
        iface.free = ll.llama_sampler_i_free(free)
        _iface = iface
    return _iface


def constrained_chain(
    ll: Any,
    vocab: Any,
    grammar_text: str,
    inner: Any,
    eos: int,
    *,
    greedy: bool = False,
    triggers: Sequence[GrammarTrigger] = (),
) -> Any:
    """A sampler chain that samples with `inner` (which it owns from here) under the grammar;
    None if llama.cpp cannot parse the grammar (the caller frees `inner` then). `greedy`: inner
    is llama.cpp's greedy sampler alone (it changes no candidate). `triggers` make the grammar
    lazy (llama/lazy.py): every token is allowed until one of them."""
    watch = None
    if triggers:
        grammar, watch = init_sampler(ll, vocab, grammar_text, triggers)
    else:
        grammar = ll.llama_sampler_init_grammar(vocab, grammar_text.encode("utf-8"), b"root")
    if not grammar:
        return None
    n_vocab = int(ll.llama_vocab_n_tokens(vocab))
    state = _Grammar(ll, inner, grammar, n_vocab, eos, greedy, watch)
    custom = ll.llama_sampler_init(ctypes.byref(_interface(ll)), None)
    _live[ctypes.cast(custom, ctypes.c_void_p).value or 0] = state
    # In a chain of its own: llama_sampler_sample gives a chain a reused candidate buffer.
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(chain, custom)
    return chain
