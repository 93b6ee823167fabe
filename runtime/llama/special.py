"""The vocabulary's task tokens beyond BOS/EOS, read through llama.cpp's vocab functions as
llama-server reads them: the fill-in-the-middle tokens (tokenizer.ggml.fim_*_token_id) and what
a reranker's input is built of (SEP, add-EOS/add-SEP, the GGUF's "rerank" template).

Only llama/ may touch the loaded model's handles, so the prompt builders above (generation/
infill.py, the rerank input here) get plain ids from these functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .interface import Model
    from .weights import Weights

NULL = -1  # LLAMA_TOKEN_NULL


@dataclass(frozen=True)
class FimTokens:
    """A fill-in-the-middle model's markers; `rep` and `sep` are NULL (-1) when the model has
    no repo-level tokens (then extra context is separated by a plain-text snippet marker)."""

    pre: int
    suf: int
    mid: int
    rep: int = NULL
    sep: int = NULL


def fim_tokens(model: Model) -> FimTokens | None:
    """The model's FIM tokens, None unless it has all of prefix, suffix and middle (llama-server
    refuses /infill then, naming the missing ones)."""
    weights = cast("Weights", model)  # only llama.cpp's models reach here
    ll, vocab = weights._ll, weights._vocab
    ids = FimTokens(
        int(ll.llama_vocab_fim_pre(vocab)),
        int(ll.llama_vocab_fim_suf(vocab)),
        int(ll.llama_vocab_fim_mid(vocab)),
        int(ll.llama_vocab_fim_rep(vocab)),
        int(ll.llama_vocab_fim_sep(vocab)),
    )
    if NULL in (ids.pre, ids.suf, ids.mid):
        return None
    return ids


def missing_fim(model: Model) -> list[str]:
    """Which of the prefix, suffix and middle tokens the model lacks (empty: none)."""
    weights = cast("Weights", model)
    ll, vocab = weights._ll, weights._vocab
    wanted = {
        "prefix": ll.llama_vocab_fim_pre,
        "suffix": ll.llama_vocab_fim_suf,
        "middle": ll.llama_vocab_fim_mid,
    }
    return [name for name, get in wanted.items() if int(get(vocab)) == NULL]


def rerank_tokens(model: Model, query: str, document: str) -> list[int]:
    """One (query, document) pair as llama-server's format_prompt_rerank builds it: the GGUF's
    "rerank" chat template with {query} and {document} filled in (specials parsed), else
    [BOS] query [EOS] [SEP] document [EOS], each marker as the vocabulary asks for it (SEP when
    there is no EOS). The texts' own markup is never parsed into control tokens."""
    weights = cast("Weights", model)
    ll, vocab = weights._ll, weights._vocab
    template = ll.llama_model_chat_template(weights._model, b"rerank")
    if template:
        text = template.decode("utf-8", errors="replace")
        text = text.replace("{query}", query).replace("{document}", document)
        return model.tokenize(text, True)
    eos = int(ll.llama_vocab_eos(vocab))
    sep = int(ll.llama_vocab_sep(vocab))
    if eos == NULL:
        eos = sep
    add_eos = bool(ll.llama_vocab_get_add_eos(vocab))
    out: list[int] = []
    if model.add_bos:
        out.append(int(ll.llama_vocab_bos(vocab)))
    out += model.tokenize(query, False)
    if add_eos:
        out.append(eos)
    if bool(ll.llama_vocab_get_add_sep(vocab)):
        out.append(sep)
    out += model.tokenize(document, False)
    if add_eos:
        out.append(eos)
    return out
