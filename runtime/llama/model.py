"""LlamaModel: what `load()` returns (runtime/api.py), the `Model` of llama/interface.py on
llama.cpp. It owns no context: each piece of work makes its own over it, as llama.cpp keeps
llama_model and llama_context apart. `new_context` makes the multi-sequence LlamaContext
(continuous batching: `--batch`, the server); `new_session` the single-sequence LlamaSession
with the lean per-token loop of `infer run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..models.gguf import GGUFHeader
from ..params import LoadOptions
from .context import LlamaContext
from .session import LlamaSession
from .weights import Weights

if TYPE_CHECKING:
    from .interface import Model, PromptCache


def load_model(
    path: Path, header: GGUFHeader, options: LoadOptions, prompt_cache: PromptCache | None = None
) -> Model:
    """The model at `path` (its header validated already), loaded through llama.cpp."""
    return LlamaModel(path, header, options, prompt_cache)


class LlamaModel(Weights):
    """A loaded model (llama/weights.py) and the contexts made over it. Closing it closes the
    sessions it made (a context from `new_context` is its caller's to close, first)."""

    def __init__(
        self,
        path: Path,
        header: GGUFHeader,
        options: LoadOptions,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self._sessions: list[LlamaSession] = []
        super().__init__(path, header, options, prompt_cache)

    def new_context(
        self, n_seq_max: int, n_ctx_seq: int, n_batch: int, *, flash_attn: bool | None = None
    ) -> LlamaContext:
        """A context with `n_seq_max` separate sequences of `n_ctx_seq` cells each
        (llama/context.py); deterministic when the model was loaded so."""
        return LlamaContext.create(
            self, n_seq_max, n_ctx_seq, n_batch, flash_attn, deterministic=self.deterministic
        )

    def new_session(self, n_ctx: int | None = None) -> LlamaSession:
        """One sequence of `n_ctx` tokens (default: the window the model was loaded for), with
        KV-prefix reuse between prompts and the prompt cache when the model has one."""
        session = LlamaSession(self, n_ctx or self.n_ctx)
        self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions = []
        super().close()

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
