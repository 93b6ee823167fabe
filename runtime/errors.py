"""Typed errors of the runtime, in the runtime's own words: an option is named as the runtime
names it (`ctx_size`), never as a command-line flag. The CLI maps each error to a one-line message,
with its flags for the options (`worded`), and to an exit code (cli/app.py)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# How a front door names an option (runtime name → flag, JSON field...).
Namer = Callable[[str], str]


def as_is(option: str) -> str:
    """The runtime's own name for an option (`str(err)` uses it)."""
    return option


class InferError(Exception):
    """Base of every error infer reports to a user. `str(err)` is the one-line message."""

    def worded(self, name: Namer) -> str:
        """The message with each option it mentions named by `name` (the CLI passes its
        flag's); the same as str(err) for errors that mention none."""
        return str(self)


class UsageError(InferError):
    """The user asked for something impossible with the options given."""


class OptionError(UsageError):
    """An option's value is of the wrong type, out of its range or unusable. `option` is its
    name in the runtime (runtime/options.py's, or a LoadOptions/GenerateOptions field); each
    front door words it as its own field (a flag, a JSON field) with `problem`."""

    def __init__(self, option: str, problem: str, sep: str = " ") -> None:
        self.option, self.problem, self.sep = option, problem, sep
        super().__init__(self.worded(as_is))

    def worded(self, name: Namer) -> str:
        return f"{name(self.option)}{self.sep}{self.problem}"


class ModelNotFoundError(InferError):
    """A model reference names no alias, file or cached model."""

    def __init__(self, name: str, known: list[str], close: list[str]) -> None:
        self.name, self.known, self.close = name, known, close
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        super().__init__(f"unknown model '{name}' ({hint})")


class UnknownDraftError(ModelNotFoundError):
    """A draft X (`--draft X`) that is neither `lookup` nor a model."""

    def __init__(self, name: str, known: list[str], close: list[str]) -> None:
        super().__init__(name, known, close)
        self.unknown = self.args[0]
        self.args = (self.worded(as_is),)

    def worded(self, name: Namer) -> str:
        return f"{name('draft')}: {self.unknown}; {name('draft')} takes 'lookup' or a MODEL"


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
        super().__init__(self.worded(as_is))

    def worded(self, name: Namer) -> str:
        room = (
            f"raise it with {name('ctx_size')} (the model was trained on {self.n_ctx_train})"
            if self.n_ctx < self.n_ctx_train
            else "shorten the input: the context is already at the model's trained maximum"
        )
        return (
            f"prompt is {self.prompt_tokens} tokens but the context window is {self.n_ctx} "
            f"tokens; {room}"
        )


class EngineError(InferError):
    """llama.cpp failed to load a model, create a context or decode."""


class ContextTooLargeError(UsageError):
    """The ctx_size asked for needs a KV cache larger than the memory there is; carries the
    numbers."""

    def __init__(self, n_ctx: int, needed: int, available: int, fits: int) -> None:
        self.n_ctx, self.needed, self.available, self.fits = n_ctx, needed, available, fits
        super().__init__(self.worded(as_is))

    def worded(self, name: Namer) -> str:
        flag = name("ctx_size")
        advice = f"use {flag} {self.fits} or less" if self.fits >= 16 else "free some memory"
        return (
            f"{flag} {self.n_ctx} needs {self.needed / 2**30:,.1f} GiB for its KV cache, but "
            f"only {self.available / 2**30:,.1f} GiB of memory is available; {advice}"
        )


class InferWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints one line
    `infer: warning: ...`)."""


class OptionWarning(InferWarning):
    """A warning about an option's value; each front door words the option as its own field,
    as with OptionError."""

    def __init__(self, option: str, problem: str) -> None:
        self.option, self.problem = option, problem
        super().__init__(self.worded(as_is))

    def worded(self, name: Namer) -> str:
        return f"{name(self.option)} {self.problem}"


class InputError(InferError):
    """The input text cannot be used (not UTF-8, ...)."""


class BatchFileError(InputError):
    """A batch file has no prompts, or a line that cannot be used; carries the file's name, the
    line number (None for the whole file) and the reason."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        where = source if line is None else f"{source}, line {line}"
        super().__init__(f"{where}: {reason}")


class OutputError(InferError):
    """The answer cannot be written: stdout is closed, read-only, or on a full disk."""


class Interrupted(InferError):
    """The user pressed Ctrl-C; carries what was generated so far."""

    def __init__(self, partial: str = "") -> None:
        self.partial = partial
        super().__init__("interrupted")


class HubError(InferError):
    """The Hugging Face Hub refused or failed a request (base of the Hub errors below)."""


class RepoNotFoundError(HubError):
    """The repository (or the revision asked for) does not exist, or is private."""

    def __init__(self, repo: str, revision: str | None = None, *, has_token: bool = True) -> None:
        self.repo, self.revision = repo, revision
        what = f"revision '{revision}' of '{repo}'" if revision else f"repository '{repo}'"
        hint = "" if has_token else " (if it is private, set HF_TOKEN)"
        super().__init__(f"Hub {what} not found{hint}")


class HubFileNotFoundError(HubError):
    """No file in the repository matches what was asked for; carries what exists."""

    def __init__(self, repo: str, wanted: str, available: list[str]) -> None:
        self.repo, self.wanted, self.available = repo, wanted, available
        have = ", ".join(available) if available else "no .gguf files"
        super().__init__(f"no GGUF file matching '{wanted}' in {repo}; available: {have}")


class AmbiguousModelError(HubError):
    """Several files match a quant tag; carries the candidates."""

    def __init__(self, repo: str, tag: str, candidates: list[str]) -> None:
        self.repo, self.tag, self.candidates = repo, tag, candidates
        super().__init__(
            f"'{tag}' matches several files in {repo}: {', '.join(candidates)}; "
            f"name one with hf://{repo}/FILE"
        )


class GatedRepoError(HubError):
    """The repository is gated or private and the token (if any) has no access."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        super().__init__(
            f"'{repo}' is gated or private: accept its terms on the Hub, then set HF_TOKEN "
            "to a token with access"
        )


class NetworkError(HubError):
    """The Hub could not be reached or the connection broke."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint, self.reason = endpoint, reason
        super().__init__(
            f"cannot reach the Hub at {endpoint} ({reason}); models already in the cache "
            "still work offline (infer list)"
        )


class ChecksumError(HubError):
    """A downloaded file does not match the checksum the Hub published for it."""

    def __init__(self, filename: str, expected: str, actual: str, algo: str = "sha256") -> None:
        self.filename, self.expected, self.actual = filename, expected, actual
        super().__init__(
            f"checksum mismatch for {filename}: the Hub says {algo} {expected[:12]}…, the "
            f"download is {actual[:12]}…; the file was deleted, pull again"
        )


class DiskFullError(InferError):
    """Not enough free space for a download."""

    needs = "the download needs"  # what is written, as the message words it

    def __init__(self, where: object, needed: int, free: int) -> None:
        self.where, self.needed, self.free = where, needed, free
        super().__init__(
            f"not enough disk space in {where}: {self.needs} {needed / 1e6:,.1f} MB, "
            f"{free / 1e6:,.1f} MB free"
        )


class NotInCacheError(InferError):
    """`rm`/`show` of a Hub model that is not in the local cache."""


class OfflineError(HubError):
    """A pull was asked for while offline mode is on."""


class UnknownQuantTypeError(UsageError):
    """`infer quantize` was given a TYPE llama.cpp's quantizer does not offer."""

    def __init__(self, given: str, valid: list[str]) -> None:
        self.given, self.valid = given, valid
        super().__init__(f"unknown quantization type '{given}' (valid: {', '.join(valid)})")


class RequantizeError(UsageError):
    """The source model is already quantized below 8 bits; requantizing must be allowed."""

    def __init__(self, model: str, quantization: str) -> None:
        self.model, self.quantization = model, quantization
        super().__init__(self.worded(as_is))

    def worded(self, name: Namer) -> str:
        return (
            f"{self.model} is already quantized ({self.quantization}): quantizing it again "
            f"compounds the loss; pass {name('allow_requantize')} to do it anyway"
        )


class QuantizeError(InferError):
    """llama.cpp's quantizer failed; nothing was added to the cache."""


class NotEnoughSpaceError(DiskFullError):
    """Not enough free space for a quantized model (an estimate made before starting)."""

    needs = "the quantized model needs about"


class TextTooShortError(InputError):
    """Perplexity needs at least two context windows of text."""

    def __init__(self, tokens: int, needed: int, ctx_size: int) -> None:
        self.tokens, self.needed, self.ctx_size = tokens, needed, ctx_size
        super().__init__(self.worded(as_is))

    def worded(self, name: Namer) -> str:
        flag = name("ctx_size")
        return (
            f"the text is {self.tokens} tokens; perplexity with {flag} {self.ctx_size} needs at "
            f"least {self.needed} (two windows): give more text or a smaller {flag}"
        )


class IncompatibleDraftError(InferError):
    """A speculative-decoding draft model whose vocabulary differs from the model's."""


class StorageError(InferError):
    """A file or folder infer must write or remove could not be (a read-only file system,
    permissions, a full disk); the message names the path and what to do."""

    def __init__(self, path: object, err: OSError, doing: str = "write") -> None:
        self.path, self.errno = path, err.errno
        hint = _STORAGE_HINTS.get(err.errno or 0, "check the folder, or set INFER_HOME elsewhere")
        reason = err.strerror or type(err).__name__
        super().__init__(f"cannot {doing} {path}: {reason} ({hint})")


_STORAGE_HINTS = {
    errno.EROFS: "the file system is read-only: make it writable, or set INFER_HOME to a "
    "writable folder",
    errno.EACCES: "fix its permissions, or set INFER_HOME to a writable folder",
    errno.EPERM: "fix its permissions or attributes, or set INFER_HOME to a writable folder",
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
}


@contextmanager
def storage(path: object, doing: str = "write") -> Iterator[None]:
    """Turn an OSError inside the block into a StorageError naming the file that failed (or
    `path`)."""
    try:
        yield
    except OSError as e:
        raise StorageError(e.filename or path, e, doing) from e


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (raised by the CLI's handler, so that every `finally` removes
    its temp files). Not an Exception: a best-effort `except Exception` must not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signum)


class RemoteError(InferError):
    """A remote engine (`--remote URL`) could not be reached, refused the request or failed;
    carries the URL and the HTTP status (None when no response came)."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        self.url, self.status = url, status
        super().__init__(f"{url}: {message}")


class RemoteModelNotFoundError(RemoteError):
    """The remote serves no model of that name; carries what it does serve."""

    def __init__(self, url: str, model: str, available: list[str]) -> None:
        self.model, self.available = model, available
        have = ", ".join(available) if available else "none listed at /v1/models"
        super().__init__(url, f"model '{model}' not found; the remote has: {have}", 404)


class IncompleteAnswerError(RemoteError):
    """The answer's stream ended without its `[DONE]`: carries the text that did arrive."""

    def __init__(self, url: str, partial: str, why: str) -> None:
        self.partial = partial
        super().__init__(
            url, f"the answer ended before [DONE] ({why}): the text printed is incomplete"
        )


class MediaError(UsageError):
    """An image or audio clip that cannot be used: not a format libmtmd decodes, damaged, too
    large, or sent to a model without the projector for it. `index` is its place among the
    request's media (0-based; None when it is about all of them), so that an API door can name
    the message part; `reason` is the problem in words."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason, self.index = reason, index
        super().__init__(reason if index is None else f"media {index + 1}: {reason}")
