"""`infer chat --markdown` through a real pseudo-terminal with the bundled SmolLM2: the answer
is rendered as Markdown (rich) while it streams; without the flag the same answer is raw text."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pexpect
import pytest

from .conftest import INFER

ASK = "List three colours as a Markdown bullet list, with the first in bold."
ITALIC_RED = "\x1b[3mRed\x1b[0m"  # what rich makes of the greedy answer's "*Red*"


@pytest.fixture
def spawned() -> Iterator[list[pexpect.spawn]]:
    children: list[pexpect.spawn] = []
    yield children
    for child in children:  # a failed test must not leave its chat running
        if child.isalive():
            child.terminate(force=True)


def answer(children: list[pexpect.spawn], *flags: str) -> str:
    """The raw terminal output of one greedy answer to ASK, escape codes and all."""
    assert INFER
    child = pexpect.spawn(
        INFER, ["chat", "smollm2", "--temperature", "0", "-n", "60", *flags], encoding="utf-8",
        timeout=180, dimensions=(50, 100), env=dict(os.environ),
    )  # fmt: skip
    children.append(child)
    child.expect_exact(">>> ")
    child.sendline(ASK)
    child.expect_exact(">>> ")
    out = child.before or ""
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return out.split(ASK, 1)[1]  # the answer, without the echoed question


def test_markdown_renders_the_answer_on_a_terminal(spawned: list[pexpect.spawn]) -> None:
    plain = answer(spawned)
    assert "*Red*" in plain and "\x1b[3m" not in plain  # the model's Markdown, as written
    rendered = answer(spawned, "--markdown")
    assert ITALIC_RED in rendered  # emphasis shown as italics ...
    assert "*Red*" not in rendered  # ... and its asterisks gone
    assert "\x1b[2K" in rendered  # redrawn in place as it streamed (rich Live)
