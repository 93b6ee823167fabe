"""Reading the user's input: the prompt argument and piped stdin."""

from __future__ import annotations

import sys

from infer.runtime.errors import InputError, UsageError

STDIN_PLACEHOLDER = "{stdin}"


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def read_stdin() -> str | None:
    """All of stdin when it is piped or redirected; None when it is a terminal or closed."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"stdin is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
    return text.removeprefix("\ufeff")


def compose_prompt(prompt: str | None, stdin: str | None) -> str:
    """The argument is the instruction, stdin the material: PROMPT, a blank line, STDIN; or
    STDIN in place of a {stdin} placeholder."""
    if stdin and prompt:
        if STDIN_PLACEHOLDER in prompt:
            text = prompt.replace(STDIN_PLACEHOLDER, stdin)
        else:
            text = f"{prompt}\n\n{stdin}"
    else:
        text = prompt or stdin or ""
    if not text.strip():
        raise UsageError("empty prompt: pass PROMPT as an argument or pipe text on stdin")
    return text
