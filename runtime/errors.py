"""Typed errors of the runtime. The CLI maps each to a one-line message and an exit code."""

from __future__ import annotations


class InferError(Exception):
    """Base of every error infer reports to a user. `str(err)` is the one-line message."""

    exit_code = 1


class UsageError(InferError):
    """The user asked for something impossible with the options given (exit 2)."""

    exit_code = 2


class ModelNotFoundError(InferError):
    """A model reference names no alias, file or cached model."""

    def __init__(self, name: str, known: list[str], close: list[str]) -> None:
        self.name, self.known, self.close = name, known, close
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        super().__init__(f"unknown model '{name}' ({hint})")


class ModelFileError(InferError):
    """A model file is missing, not GGUF, truncated or corrupt."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class ConfigError(InferError):
    """A models.toml file has an invalid entry; the message names file, entry and field."""


class BadReferenceError(InferError):
    """A model reference is malformed or unsafe (traversal, control characters...)."""


class TemplateError(InferError):
    """The model's chat template is missing, failed, or exceeded its bounds."""


class ContextOverflowError(InferError):
    """The prompt does not fit in the context window."""

    def __init__(self, prompt_tokens: int, n_ctx: int, n_ctx_train: int) -> None:
        self.prompt_tokens, self.n_ctx, self.n_ctx_train = prompt_tokens, n_ctx, n_ctx_train
        room = (
            f"raise it with --ctx-size (the model was trained on {n_ctx_train})"
            if n_ctx < n_ctx_train
            else "shorten the input: the context is already at the model's trained maximum"
        )
        super().__init__(
            f"prompt is {prompt_tokens} tokens but the context window is {n_ctx} tokens; {room}"
        )


class EngineError(InferError):
    """llama.cpp failed to load a model, create a context or decode."""


class InputError(InferError):
    """The input text cannot be used (not UTF-8, ...)."""


class Interrupted(InferError):
    """The user pressed Ctrl-C; carries what was generated so far."""

    exit_code = 130

    def __init__(self, partial: str = "") -> None:
        self.partial = partial
        super().__init__("interrupted")
