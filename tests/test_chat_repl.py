"""The interactive chat, driven through a real pseudo-terminal with the bundled SmolLM2."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pexpect
import pytest
from typer.main import get_command

from infer.cli.app import app

from .conftest import INFER, run_infer

PROMPT = ">>> "


class Chat:
    live: ClassVar[
        list[Chat]
    ] = []  # every session a test opened, closed by the autouse fixture below

    def __init__(self, *args: str, command: str = "run") -> None:
        assert INFER
        self.child = pexpect.spawn(
            INFER, [command, "smollm2", *args], encoding="utf-8", timeout=180,
            dimensions=(50, 200), env=dict(os.environ),
        )  # fmt: skip
        Chat.live.append(self)
        self.child.expect_exact(PROMPT)

    def say(self, line: str) -> str:
        """Send a line; return everything printed before the next prompt."""
        self.child.sendline(line)
        self.child.expect_exact(PROMPT)
        return strip_ansi(self.child.before or "")

    def bye(self) -> int:
        self.child.sendeof()
        self.child.expect(pexpect.EOF)
        self.child.close()
        return int(self.child.exitstatus or 0)


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    """A failed test must not leave its chat process running."""
    yield
    while Chat.live:
        session = Chat.live.pop()
        if session.child.isalive():
            session.child.terminate(force=True)


@pytest.fixture()
def chat() -> Iterator[Chat]:
    yield Chat("--temperature", "0", "-n", "40")


def test_follow_up_uses_the_previous_turn_and_the_kv_cache(chat: Chat) -> None:
    chat.say("My name is Zorblax. Remember it.")
    assert "Zorblax" in chat.say("What is my name?")
    used = re.search(r"context: (\d+) / (\d+) tokens", chat.say("/context"))
    assert used and 40 < int(used.group(1)) < int(used.group(2))
    assert chat.bye() == 0


def test_clear_forgets(chat: Chat) -> None:
    chat.say("My name is Zorblax. Remember it.")
    assert "cleared" in chat.say("/clear")
    assert "Zorblax" not in chat.say("What is my name?")
    assert "1 / " not in chat.say("/context")


def test_set_temperature_takes_effect() -> None:
    chat = Chat("-n", "24")
    assert "temperature 0.8" in chat.say("/show")
    assert "temperature = 0" in chat.say("/set temperature 0")
    assert "temperature 0.0" in chat.say("/show")
    first = chat.say("Which city is the capital of France?").split("\n", 1)[1]
    again = chat.say("/retry").split("\n", 1)[1]
    assert first == again and "Paris" in first
    assert "must be between 0 and 100" in chat.say("/set temperature -1")
    assert "not a valid float" in chat.say("/set temperature warm")
    assert chat.bye() == 0


def test_save_then_load_round_trips(chat: Chat, infer_home: Path) -> None:
    chat.say("My name is Zorblax. Remember it.")
    chat.say("/save named")
    saved = json.loads((infer_home / "state" / "chats" / "named.json").read_text())
    assert saved["messages"][0]["content"] == "My name is Zorblax. Remember it."
    chat.say("/clear")
    assert "loaded 2 messages" in chat.say("/load named")
    assert "Zorblax" in chat.say("What is my name?")
    assert "invalid conversation name" in chat.say("/save ../escape")
    assert "no saved conversation" in chat.say("/load missing")


def test_ctrl_c_mid_answer_keeps_the_session(chat: Chat) -> None:
    chat.say("/set max_tokens 600")
    chat.child.sendline("Write a long story about a dragon.")
    chat.child.expect(r"[A-Za-z]+ [A-Za-z]+ [A-Za-z]+")  # the answer is streaming
    chat.child.sendintr()
    chat.child.expect_exact("(stopped)")
    chat.child.expect_exact(PROMPT)
    assert "Paris" in chat.say("Which city is the capital of France?")
    assert chat.bye() == 0


def test_ctrl_c_at_the_prompt_explains_how_to_leave(chat: Chat) -> None:
    chat.child.sendintr()
    chat.child.expect_exact("/bye or Ctrl-D")
    chat.child.expect_exact(PROMPT)
    assert chat.bye() == 0


def test_ctrl_d_exits_and_history_is_written(chat: Chat, infer_home: Path) -> None:
    chat.say("/context")
    assert chat.bye() == 0
    assert "/context" in (infer_home / "state" / "history").read_text()


def test_no_history_when_disabled(infer_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFER_NOHISTORY", "1")
    chat = Chat("--temperature", "0")
    chat.say("/context")
    assert chat.bye() == 0
    assert not (infer_home / "state" / "history").exists()


def test_unknown_command_gives_a_hint_and_help_lists_commands(chat: Chat) -> None:
    assert "Type /help" in chat.say("/frobnicate")
    help_text = chat.say("/help")
    for name in ("/bye", "/clear", "/set", "/save", "/load", "/undo", "/retry", "/read"):
        assert name in help_text
    assert chat.child.isalive()


def test_multiline_block_and_paste_arrive_as_one_message(chat: Chat) -> None:
    chat.child.sendline('"""')
    chat.child.sendline("My name is Zorblax.")
    chat.say('Remember it."""')
    assert "2 messages" in chat.say("/show")
    # Bracketed paste: two lines pasted at once are one message.
    chat.say("\x1b[200~Which city is\nthe capital of France?\x1b[201~")
    assert "4 messages" in chat.say("/show")


def test_undo_and_read(chat: Chat, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("Which city is the capital of France?")
    assert "Paris" in chat.say(f"/read {note}")
    assert "2 messages" in chat.say("/show")
    chat.say("/undo")
    assert "0 messages" in chat.say("/show")


def test_continue_reopens_the_last_conversation() -> None:
    first = Chat("--temperature", "0", "-n", "30")
    first.say("My name is Zorblax. Remember it.")
    assert first.bye() == 0
    second = Chat("--temperature", "0", "-n", "30", "--continue")
    assert "Zorblax" in second.say("What is my name?")
    assert second.bye() == 0


def test_long_chat_in_a_small_context_drops_old_turns_and_keeps_going() -> None:
    chat = Chat("--temperature", "0", "-n", "24", "--ctx-size", "512")
    notices = 0
    for i in range(20):
        reply = chat.say(f"Tell me one short fact about the number {i}.")
        notices += "dropped the" in reply
        assert chat.child.isalive()
    assert notices >= 1
    used = re.search(r"context: (\d+) / 512", chat.say("/context"))
    assert used and int(used.group(1)) <= 512
    assert chat.bye() == 0


def test_piped_stdin_never_enters_the_chat() -> None:
    result = run_infer("chat", "smollm2", "--temperature", "0", "-n", "16",
                       input="Which city is the capital of France?")  # fmt: skip
    assert result.returncode == 0
    assert PROMPT not in result.stdout.decode()
    assert "Paris" in result.stdout.decode()


def test_chat_command_opens_the_chat_and_passes_the_drafter_on() -> None:
    chat = Chat("--temperature", "0", "-n", "24", "--draft", "lookup", "--stats", command="chat")
    reply = chat.say("Which city is the capital of France?")
    assert "Paris" in reply
    assert "draft lookup:" in reply and "accepted (" in reply  # the chat's answers drafted
    assert chat.bye() == 0


CHAT_FLAGS = (
    "--system", "--temperature", "--max-tokens", "--ctx-size", "--raw", "--stats", "--continue",
    "--markdown", "--draft", "--no-prompt-cache", "--offline",
)  # fmt: skip


def _params(command: str) -> set[str]:
    """The command's options and (by name) arguments."""
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {opt for param in params for opt in [*param.opts, *param.secondary_opts]}


def test_chat_help_lists_only_what_applies_to_a_chat() -> None:
    """`infer chat` has its own command: `infer run`'s options less the one-shot, batch and
    tool ones (fill-in-the-middle and log-probabilities are one-shot: a suffix to one prompt,
    values for the --json object; --deterministic is --batch's), and no PROMPT."""
    assert _params("chat") == _params("run") - {
        "--json",
        "--batch",
        "--parallel",
        "prompt",
        "--tool",
        "--tool-choice",
        "--suffix",
        "--logprobs",
        "--deterministic",  # a --batch option
    }
    assert INFER
    result = subprocess.run([INFER, "chat", "--help"], capture_output=True, timeout=30,
                            env={**os.environ, "COLUMNS": "100"})  # fmt: skip
    assert result.returncode == 0 and result.stderr == b""
    text = result.stdout.decode()
    assert text.startswith("Usage: infer chat [OPTIONS] MODEL\n")
    for absent in ("--batch", "--parallel", "--json", "PROMPT"):  # whole words: --json-schema is
        assert not re.search(rf"(?<![\w-]){re.escape(absent)}(?![\w-])", text), absent  # a chat's
    for flag in CHAT_FLAGS:
        assert flag in text
    headings = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headings[1:] == [
        "Arguments:", "Input and output:", "Sampling:", "Context and hardware:", "Chat:",
        "Speed-ups:", "Remote engine:", "Options:",
    ]  # fmt: skip


def test_chat_off_a_terminal_is_what_run_without_a_prompt_is() -> None:
    """Nothing on stdin: the same usage error as `infer run MODEL`, exit 2, nothing loaded; a
    flag only `infer run` has is unknown here."""
    chat, run = run_infer("chat", "smollm2"), run_infer("run", "smollm2")
    assert chat.returncode == run.returncode == 2
    assert chat.stderr == run.stderr and b"empty prompt" in chat.stderr
    refused = run_infer("chat", "smollm2", "--json", input="hi")
    assert refused.returncode == 2 and b"--json" in refused.stderr
