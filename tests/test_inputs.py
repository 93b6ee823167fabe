"""Bad input and odd streams, the way a user meets them (issue 11): endless or huge inputs,
FIFOs, closed or full stdout/stderr, deeply nested JSON, and the small true-ups. Real
subprocesses with real pipes (a pty for the chat), the tiny GGUF, a timeout on everything that
could hang, and a memory limit on everything that could grow."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pexpect
import pytest
from typer.main import get_command

from infer.cli.app import app
from infer.cli.inputs import MAX_INPUT_BYTES, compose_prompt
from infer.runtime.errors import UsageError
from infer.runtime.tools import bench as rb

from .conftest import INFER, run_infer

ROOT = Path(__file__).resolve().parent.parent
LIMIT = f"{MAX_INPUT_BYTES >> 20} MiB"


def _cap_memory() -> None:
    """In the child: a regression back to unbounded reads fails with MemoryError instead of
    taking the machine's memory until the kernel kills something."""
    cap = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def infer(
    *args: str, stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.PIPE,
    env: dict[str, str] | None = None, shell_redirect: str = "", timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """The installed command with the given streams; `shell_redirect` (`>&-`, `2>&-`) is
    applied by sh, as a user's shell would."""
    assert INFER
    cmd = [INFER, *args]
    if shell_redirect:
        cmd = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *cmd]
    return subprocess.run(
        cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout,
        env={**os.environ, **(env or {})}, preexec_fn=_cap_memory,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int, *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert err.count("\n") == 1 and err.startswith("infer: error: "), err
    for word in words:
        assert word in err, err
    return err


# --- 2. unbounded reads -------------------------------------------------------------------


def test_endless_stdin_is_an_error_naming_stdin_and_the_limit(tiny_model: Path) -> None:
    with open("/dev/zero", "rb") as zero:
        result = infer("run", str(tiny_model), "hi", stdin=zero)
    one_line_error(result, 1, "stdin", LIMIT)


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_endless_batch_file_is_an_error(tiny_model: Path, how: str) -> None:
    with open("/dev/zero", "rb") as zero:
        if how == "file":
            result = infer("run", str(tiny_model), "--batch", "/dev/zero")
        else:
            result = infer("run", str(tiny_model), "--batch", "-", stdin=zero)
    one_line_error(result, 1, "/dev/zero" if how == "file" else "stdin", LIMIT)


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_endless_perplexity_text_is_an_error(tiny_model: Path, how: str) -> None:
    with open("/dev/zero", "rb") as zero:
        if how == "file":
            result = infer("perplexity", str(tiny_model), "/dev/zero")
        else:
            result = infer("perplexity", str(tiny_model), stdin=zero)
    one_line_error(result, 1, "/dev/zero" if how == "file" else "stdin", LIMIT)


def test_a_file_over_the_limit_fails_without_being_read(tiny_model: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: no disk used
    one_line_error(infer("run", str(tiny_model), "--batch", str(big)), 1, str(big), LIMIT)


def test_piped_batch_and_process_substitution_still_work(tiny_model: Path) -> None:
    """The bound must not refuse pipes where a user pipes on purpose."""
    assert INFER
    script = '"$0" run "$1" --batch <(printf "hi\\n") -n 1 --temp 0'
    result = subprocess.run(
        ["bash", "-c", script, INFER, str(tiny_model)], capture_output=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["prompt"] == "hi"


class TinyChat:
    def __init__(self, model: Path) -> None:
        assert INFER
        self.child = pexpect.spawn(
            INFER, ["run", str(model), "--temperature", "0", "-n", "2"], encoding="utf-8",
            timeout=30, dimensions=(50, 200), env=dict(os.environ), preexec_fn=_cap_memory,
        )  # fmt: skip
        self.child.expect_exact(">>> ")

    def say(self, line: str) -> str:
        self.child.sendline(line)
        self.child.expect_exact(">>> ")  # a hang fails here, after the timeout
        return (self.child.before or "").replace("\r", "")


@pytest.fixture()
def chat(tiny_model: Path) -> Iterator[TinyChat]:
    session = TinyChat(tiny_model)
    yield session
    if session.child.isalive():
        session.child.terminate(force=True)


def test_chat_read_refuses_devices_fifos_and_huge_files_without_blocking(
    chat: TinyChat, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening it for reading the usual way blocks forever
    assert "FIFO (named pipe), not a regular file" in chat.say(f"/read {fifo}")
    assert "character device, not a regular file" in chat.say("/read /dev/zero")
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)
    assert LIMIT in chat.say(f"/read {big}")
    assert "0 messages" in chat.say("/show")  # nothing was sent
    note = tmp_path / "note.txt"
    note.write_text("hello")
    assert "sending note.txt: 5 characters" in chat.say(f"/read {note}")
    chat.child.sendeof()
    chat.child.expect(pexpect.EOF)
    chat.child.close()
    assert chat.child.exitstatus == 0


# --- 7. closed or full output streams -------------------------------------------------------


def test_closed_stdout_fails_at_once(tiny_model: Path) -> None:
    # -v: had the model been loaded, llama.cpp's logs would be on stderr too.
    result = infer("run", str(tiny_model), "hi", "-n", "4", "-v", shell_redirect=">&-")
    one_line_error(result, 1, "stdout is closed")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("run", "{tiny}", "hi", "--temperature", "-1"), 2),
        (("run", "{tiny}", "hi", "--frobnicate"), 2),
        (("run", "./missing.gguf", "hi"), 1),
        (("run", "{tiny}", "hi", "-n", "2", "--json"), 0),
        (("--version",), 0),
    ],
)
def test_closed_stderr_keeps_the_exit_codes(
    tiny_model: Path, args: tuple[str, ...], code: int
) -> None:
    argv = [a.replace("{tiny}", str(tiny_model)) for a in args]
    assert infer(*argv).returncode == code  # stderr open
    closed = infer(*argv, shell_redirect="2>&-")
    assert closed.returncode == code, closed.stdout
    if args[-1] == "--json":
        assert json.loads(closed.stdout)["stats"]["generated_tokens"] >= 1


def test_stdout_on_a_full_disk_is_one_error(tiny_model: Path) -> None:
    with open("/dev/full", "wb") as full:
        result = infer("run", str(tiny_model), "hi", "-n", "2", "--json", stdout=full)
    one_line_error(result, 1, "stdout", "No space left on device")


def test_bench_prints_its_results_when_the_history_cannot_be_written(
    tiny_model: Path, infer_home: Path
) -> None:
    history = infer_home / "state" / "bench-history.jsonl"
    history.parent.mkdir(parents=True)
    history.symlink_to("/dev/full")
    result = infer("bench", str(tiny_model), "-p", "8", "-n", "4", "-c", "256", "-r", "1")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().count("\n| ") == 2  # the header row and one result row
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("infer: warning: "), err
    assert "history" in err and "No space left on device" in err


def test_history_is_not_left_empty_when_the_write_fails(
    infer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rb.os, "write", full)
    with pytest.raises(OSError):
        # a stand-in: append_history reads only as_dict()
        rb.append_history(cast(rb.BenchResult, SimpleNamespace(as_dict=lambda: {"model": "m"})))
    assert not rb.history_path().exists()


# --- 11a. deeply nested JSON in a batch file ------------------------------------------------


def test_deeply_nested_json_line_names_the_line(tiny_model: Path, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"prompt": "hi"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line_error(
        infer("run", str(tiny_model), "--batch", str(requests)), 1, "line 2", "nested too deeply"
    )


# --- true-ups -------------------------------------------------------------------------------


def test_composed_order_is_stdin_then_prompt() -> None:
    assert compose_prompt("Summarise.", "A document.\n") == "A document.\n\nSummarise."
    assert compose_prompt("Q: {stdin} (short)", "doc") == "Q: doc (short)"
    assert compose_prompt(None, "doc") == "doc" and compose_prompt("q", None) == "q"
    assert compose_prompt("Say hi. {stdin}", "") == "Say hi. "
    with pytest.raises(UsageError, match="empty prompt"):
        compose_prompt("{stdin}", "")


def test_questions_about_one_piped_document_share_the_cached_prefix(tiny_model: Path) -> None:
    """Plain PROMPT + stdin: the document comes first, so the second question evaluates only
    itself (with the question first, the two prompts would share nothing)."""
    document = "abcdefgh" * 40  # 320 byte tokens: over the cache's 256-token minimum
    flags = ("-c", "1024", "-t", "1", "-n", "1", "--json", "--temp", "0")
    runs = [
        run_infer("run", str(tiny_model), question, *flags, input=document)
        for question in ("What is the first letter?", "How long is it?")
    ]
    first, second = (json.loads(r.stdout)["stats"] for r in runs)
    assert first["prompt_eval_tokens"] == first["prompt_tokens"] > 320
    assert second["prompt_eval_tokens"] < second["prompt_tokens"] - 320, second  # the document


def test_stdin_placeholder_with_empty_stdin(tiny_model: Path) -> None:
    one_line_error(run_infer("run", str(tiny_model), "{stdin}", input=b""), 2, "empty prompt")
    flags = ("-n", "1", "--json", "--temp", "0")
    placeholder = run_infer("run", str(tiny_model), "Say hi. {stdin}", *flags, input=b"")
    plain = run_infer("run", str(tiny_model), "Say hi. ", *flags)
    tokens = [json.loads(r.stdout)["stats"]["prompt_tokens"] for r in (placeholder, plain)]
    assert tokens[0] == tokens[1]  # no literal "{stdin}" sent


def test_offline_errors_blame_what_turned_offline_on() -> None:
    flag = run_infer("run", "qwen2.5:0.5b", "hi", "--offline", env={"HF_HUB_OFFLINE": ""})
    err = one_line_error(flag, 1, "offline mode is on (--offline)", "infer pull qwen2.5:0.5b")
    assert "HF_HUB_OFFLINE" not in err
    one_line_error(run_infer("run", "qwen2.5:0.5b", "hi"), 1, "(HF_HUB_OFFLINE)")


def test_unknown_draft_mentions_lookup(tiny_model: Path) -> None:
    err = one_line_error(run_infer("run", str(tiny_model), "hi", "--draft", "nonsense"), 1)
    assert "unknown model 'nonsense'" in err and "'lookup'" in err
    one_line_error(
        run_infer("run", str(tiny_model), "hi", "--draft", "lookpu"), 1, "did you mean lookup"
    )


def test_symlink_loop_model_path_is_called_one(tmp_path: Path) -> None:
    loop = tmp_path / "loop.gguf"
    loop.symlink_to("loop.gguf")
    err = one_line_error(run_infer("run", str(loop), "hi"), 1, "symlink loop")
    assert "no such file" not in err
    dangling = tmp_path / "gone.gguf"
    dangling.symlink_to(tmp_path / "nowhere.gguf")
    one_line_error(run_infer("run", str(dangling), "hi"), 1, "broken symlink", "nowhere.gguf")


def test_huge_user_models_toml_is_refused_quickly(infer_home: Path) -> None:
    user = infer_home / "config" / "models.toml"
    user.parent.mkdir(parents=True)
    entries = (f'[models.m{i}]\nhub = "owner/repo{i}"\n' for i in range(80_000))
    user.write_text("".join(entries))  # valid, about 2.5 MB
    one_line_error(run_infer("list", "--aliases", timeout=30), 1, str(user), "larger than")


def test_builtin_models_toml_names_only_commands_that_exist() -> None:
    text = (ROOT / "models.toml").read_text()
    named = set(re.findall(r"`infer ([a-z-]+)", text))
    assert named <= set(get_command(app).commands), named  # type: ignore[attr-defined]


def test_readme_python_api_example_prints_the_speed_on_its_own_line(tiny_model: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code
    example = code.group(1).replace('resolve("smollm2")', f"resolve({str(tiny_model)!r})")
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"}, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert re.fullmatch(r"\d+\.\d tok/s", result.stdout.decode().splitlines()[-1])
