"""Reading the user's input: the prompt argument, piped stdin, and every text file infer reads.

Every text (stdin, a --batch file, a perplexity text, a chat /read) goes through one bounded,
strict UTF-8 reader, so `infer run MODEL hi < /dev/zero` is a one-line error, not a process that
grows until the kernel kills it."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from infer.runtime.errors import InputError, UsageError

STDIN_PLACEHOLDER = "{stdin}"

# Why 64 MiB, fixed: the longest contexts models ship hold about 1M tokens, and text costs about
# 4 bytes a token (16 for token-dense text: code, CJK, emoji), so no single prompt that fits any
# context comes near 16 MiB; 64 MiB leaves a 4x margin on top for perplexity texts, which span many
# windows. A cap tied to the loaded model's context would need the model before the input is read
# (and stdin is read first, so that a usage error never waits on loading). Reading, decoding and
# tokenizing 64 MiB stays within a few hundred MB of memory.
MAX_INPUT_BYTES = 64 << 20
_CHUNK = 1 << 20


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def read_stdin() -> str | None:
    """All of stdin when it is piped or redirected; None when it is a terminal or closed."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return read_stream(sys.stdin.buffer, "stdin")


def read_file(path: Path | str, *, regular_only: bool = False) -> str:
    """A file's text, bounded and strictly UTF-8. `regular_only` refuses anything but a regular
    file (a FIFO, a device, a socket) without blocking: the file is opened non-blocking, so a
    FIFO with no writer cannot hang the caller, and checked with fstat before any read."""
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if regular_only:
        flags |= getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if regular_only and not stat.S_ISREG(info.st_mode):
            raise InputError(f"cannot read {name}: {_kind(info.st_mode)}, not a regular file")
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_INPUT_BYTES:
            raise _too_large(name)  # at once, without reading it
        return read_stream(f, name)


def read_stream(stream: BinaryIO, name: str) -> str:
    """At most MAX_INPUT_BYTES of `stream` as text (strict UTF-8, a leading BOM dropped); more
    is an error naming `name` and the limit, raised as soon as the limit is passed."""
    chunks, total = [], 0
    while True:
        try:
            chunk = stream.read(min(_CHUNK, MAX_INPUT_BYTES + 1 - total))
        except OSError as e:
            raise InputError(f"cannot read {name}: {e.strerror or e}") from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_INPUT_BYTES:
            raise _too_large(name)
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{name} is not valid UTF-8 (line {line}: byte 0x{data[e.start]:02x} at offset "
            f"{e.start})"
        ) from None
    return text.removeprefix("\ufeff")


def _too_large(name: str) -> InputError:
    return InputError(f"{name} is larger than infer's input limit of {MAX_INPUT_BYTES >> 20} MiB")


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "a special file")


def _check_argument(prompt: str) -> None:
    """Python decodes an argument's bytes that are not UTF-8 to lone surrogates
    (surrogateescape), which cannot be tokenized: name the first such byte, as for stdin."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        char, offset = prompt[e.start], len(prompt[: e.start].encode("utf-8"))
        what = f"byte 0x{ord(char) - 0xDC00:02x}" if "\udc80" <= char <= "\udcff" else repr(char)
        raise InputError(
            f"the PROMPT argument is not valid UTF-8 ({what} at offset {offset})"
        ) from None


def compose_prompt(prompt: str | None, stdin: str | None) -> str:
    """Stdin is the material, the argument the instruction: STDIN, a blank line, PROMPT (the
    document first, so that two questions about the same piped document share a prefix that
    the prompt cache reuses); or STDIN in place of a {stdin} placeholder, an empty stdin (or none
    piped) making it empty."""
    if prompt:
        _check_argument(prompt)
    if prompt and STDIN_PLACEHOLDER in prompt:
        text = prompt.replace(STDIN_PLACEHOLDER, stdin or "")
    elif stdin and prompt:
        document = stdin.rstrip("\n")  # its own final newline would make the gap three
        text = f"{document}\n\n{prompt}"
    else:
        text = prompt or stdin or ""
    if not text.strip():
        raise UsageError("empty prompt: pass PROMPT as an argument or pipe text on stdin")
    return text


def prompt_text(prompt: str | None) -> str | None:
    """The prompt (argument and/or stdin), or None for the chat: no prompt, on a terminal."""
    interactive = prompt is None and stdin_is_terminal() and sys.stdout.isatty()
    if prompt is None and stdin_is_terminal() and not interactive:
        raise UsageError('no prompt given: infer run MODEL "PROMPT" (or pipe text on stdin)')
    return None if interactive else compose_prompt(prompt, read_stdin())
