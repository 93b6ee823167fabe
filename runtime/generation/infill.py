"""Fill-in-the-middle: the one prompt builder for code completion between a prefix and a
suffix, used by the server's /infill, Ollama's `suffix` and `infer run --suffix`.

It builds the tokens exactly as llama-server's format_prompt_infill does (tools/server/
server-common.cpp in the vendored llama.cpp), so a FIM model answers as it does there:

    [FIM_REP]myproject\\n [FIM_SEP]file0\\n text0 … [FIM_SEP]filename\\n      (extra context)
    [BOS] [FIM_PRE] prefix prompt [FIM_SUF] suffix [FIM_MID]

Budget, as there: the prefix keeps its last 3/4 of a batch, the suffix its first
(batch/4 - 2 - prompt) tokens, and the extra context what the context holds beyond a batch and
twice the server's n_predict (its last tokens). Prefix, suffix and extra text are tokenized as
plain text; only `prompt` (where the middle starts) has its control-token markup parsed, as
llama-server tokenizes a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import OptionError
from ..llama.interface import Model
from ..llama.special import NULL, fim_tokens, missing_fim

# llama-server's default n_predict (-1: no limit), which its budget for extra context counts.
SERVER_N_PREDICT = -1
# The plain-text separator of extra chunks for a model without FIM_SEP ("\n\n--- snippet ---\n\n")
SNIPPET = "\n\n--- snippet ---\n\n"


@dataclass(frozen=True)
class Infill:
    """What to fill in: the text before the gap, the text after it, other files for context
    ((filename, text) pairs) and where the middle starts (`prompt`)."""

    prefix: str
    suffix: str
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    prompt: str = ""


def check_fim(model: Model, field_name: str = "suffix") -> None:
    """An OptionError naming `field_name` (the front door's word for the suffix) when the model
    has no fill-in-the-middle tokens."""
    missing = missing_fim(model)
    if missing:
        raise OptionError(
            field_name,
            "needs a fill-in-the-middle model: this one has no FIM "
            f"{', '.join(missing)} token{'s' if len(missing) > 1 else ''} in its GGUF "
            "(a coder model such as Qwen2.5-Coder has them)",
            sep=": ",
        )


def infill_tokens(
    model: Model,
    infill: Infill,
    *,
    n_batch: int,
    n_ctx: int,
    n_predict: int = SERVER_N_PREDICT,
    spm: bool = False,
    field_name: str = "suffix",
) -> list[int]:
    """The FIM prompt's tokens for `model` (see the module's docstring). `n_batch` and `n_ctx`
    are the batch size and the sequence's context (as llama-server's slot: at most the trained
    context); `spm`: suffix before prefix (llama-server's
    --spm-infill)."""
    ids = fim_tokens(model)
    if ids is None:
        check_fim(model, field_name)
        raise AssertionError("unreachable: check_fim raises for a model without FIM tokens")
    extra: list[int] = []
    if ids.rep != NULL:
        extra += [ids.rep, *model.tokenize("myproject\n", False)]
    for filename, text in infill.extra:
        if ids.sep != NULL:
            extra += [ids.sep, *model.tokenize(filename + "\n", False)]
        else:
            extra += model.tokenize(SNIPPET, False)
        extra += model.tokenize(text, False)
    if ids.sep != NULL:
        extra += [ids.sep, *model.tokenize("filename\n", False)]

    prefix = model.tokenize(infill.prefix, False)
    suffix = model.tokenize(infill.suffix, False)
    prompt = model.tokenize(infill.prompt, True)
    n_prefix = min(len(prefix), 3 * (n_batch // 4))
    n_suffix = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    if model.n_ctx_train > 0:  # llama-server caps a slot's context at the trained one
        n_ctx = min(n_ctx, model.n_ctx_train)
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra))

    head = [ids.pre, *prefix[len(prefix) - n_prefix :], *prompt]
    tail = [ids.suf, *suffix[:n_suffix]]
    first, second = (tail, head) if spm else (head, tail)
    if model.add_bos and model.bos_id >= 0:
        first = [model.bos_id, *first]
    return [*_last(extra, n_extra), *first, *second, ids.mid]


def _last(tokens: Sequence[int], n: int) -> list[int]:
    return list(tokens[len(tokens) - n :]) if n > 0 else []
