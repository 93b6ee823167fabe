"""`infer run` end to end: the installed console script, real pipes, the bundled SmolLM2."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import INFER, run_infer

QUESTION = "Which city is the capital of France?"
STATS_LINE = re.compile(
    r"^load \d+\.\d\d s · prompt \d+ tok \(\d+ evaluated, [\d.]+ tok/s\) · first token \d+ ms"
    r" · generated \d+ tok, [\d.]+ tok/s$"
)


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], code: int, *words: str):
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert result.stdout == b""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("infer: error: "), err
    for word in words:
        assert word in err, err
    return err


def test_answers_a_question() -> None:
    result = run_infer("run", "smollm2", QUESTION, "--temperature", "0", "-n", "24")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout.decode()
    assert result.stderr == b""  # nothing but the answer, anywhere, without --stats/--verbose


def test_prompt_from_stdin_alone() -> None:
    result = run_infer("run", "smollm2", "--temperature", "0", "-n", "24", input=QUESTION)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout.decode()


def test_stdin_is_the_material_and_the_argument_the_instruction() -> None:
    result = run_infer(
        "run", "smollm2", "Repeat the following text exactly:", "--temperature", "0", "-n", "24",
        input="The secret password is Zorblax.\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Zorblax" in result.stdout.decode()


def test_stdin_placeholder_places_the_text() -> None:
    result = run_infer(
        "run", "smollm2", "Repeat the following text exactly: {stdin}", "--temperature", "0",
        "-n", "24", "--json", input="The secret password is Zorblax.",
    )  # fmt: skip
    assert "Zorblax" in json.loads(result.stdout)["text"]


def test_json_output_parses_with_stats() -> None:
    result = run_infer("run", "smollm2", QUESTION, "--temperature", "0", "-n", "16", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["model"] == "smollm2"
    assert "Paris" in record["text"]
    assert record["finish_reason"] in ("stop", "length")
    stats = record["stats"]
    assert stats["generated_tokens"] >= 1 and stats["prompt_tokens"] > 10
    assert stats["generate_tokens_per_s"] > 0 and stats["ttft_s"] > 0


def test_stats_go_to_stderr_in_one_line() -> None:
    result = run_infer("run", "smollm2", QUESTION, "--temperature", "0", "-n", "8", "--stats")
    assert result.returncode == 0
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and STATS_LINE.match(lines[0]), lines
    assert "load" not in result.stdout.decode()


def test_max_tokens_limits_the_answer() -> None:
    result = run_infer("run", "smollm2", QUESTION, "-n", "3", "--json", "--temperature", "0")
    record = json.loads(result.stdout)
    assert record["stats"]["generated_tokens"] == 3
    assert record["finish_reason"] == "length"


def test_stop_string_ends_the_answer_without_printing_it() -> None:
    result = run_infer("run", "smollm2", QUESTION, "--temperature", "0", "--stop", "Paris")
    assert result.returncode == 0
    out = result.stdout.decode()
    assert "Paris" not in out and out.strip()  # "The capital of France is"


def test_no_ansi_codes_when_piped() -> None:
    result = run_infer("run", "smollm2", QUESTION, "--temperature", "0", "-n", "8", "--stats")
    assert b"\x1b" not in result.stdout and b"\x1b" not in result.stderr


def test_verbose_shows_llama_cpp_logs_on_stderr_only() -> None:
    result = run_infer("run", "smollm2", QUESTION, "--temperature", "0", "-n", "4", "-v")
    assert result.returncode == 0
    assert "llama" in result.stderr.decode()
    assert "llama_" not in result.stdout.decode()


def test_streams_pieces_before_the_process_ends() -> None:
    assert INFER
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "Write a long story about a dragon.", "-n", "96",
         "--temperature", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = os.read(proc.stdout.fileno(), 64)
    t_first = time.monotonic()
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    t_end = time.monotonic()
    assert first and rest
    # 96 tokens take well over 0.3 s here; a buffered writer would deliver all at the end.
    assert t_end - t_first > 0.3


def test_ctrl_c_during_generation_exits_130_with_a_newline() -> None:
    assert INFER
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "Write a long story about a dragon.", "-n", "2000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = os.read(proc.stdout.fileno(), 16)
    assert first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert (first + out).endswith(b"\n")
    assert b"Traceback" not in err


def test_ctrl_c_during_a_long_prompt_stops_it_promptly() -> None:
    assert INFER
    long_input = "The quick brown fox jumps over the lazy dog. " * 700  # ~7000 tokens: ~25 s
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "Summarise:", "-n", "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(long_input.encode())
    proc.stdin.close()
    time.sleep(2.0)  # loaded and inside prompt evaluation
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 3.0  # the abort callback stopped llama_decode
    assert b"Traceback" not in err


def test_closed_pipe_ends_quietly() -> None:
    assert INFER
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "Write a long story about a dragon.", "-n", "300"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert os.read(proc.stdout.fileno(), 10)  # like `| head -c 10`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert proc.returncode == 0
    assert err == b"", err


# --- errors: one line on stderr, an exit code, never a traceback ---------------------------


def test_unknown_model_suggests_close_names() -> None:
    err = assert_one_line_error(run_infer("run", "smollm3", "hi"), 1, "unknown model 'smollm3'")
    assert "smollm2" in err


def test_missing_file() -> None:
    assert_one_line_error(run_infer("run", "./missing.gguf", "hi"), 1, "no such file")


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("hello, I am not a model\n")
    assert_one_line_error(run_infer("run", str(bogus), "hi"), 1, "not a GGUF file")


def test_four_byte_gguf_does_not_reach_the_native_loader(tmp_path: Path) -> None:
    stub = tmp_path / "stub.gguf"
    stub.write_bytes(b"GGUF")
    assert_one_line_error(run_infer("run", str(stub), "hi"), 1, "truncated")


def test_truncated_model(tmp_path: Path, bundled_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(bundled_model, "rb") as src:
        cut.write_bytes(src.read(20_000_000))
    assert_one_line_error(run_infer("run", str(cut), "hi"), 1, "truncated", "extends past")


def test_prompt_over_the_context_names_both_counts_and_the_flag() -> None:
    long_input = "word " * 600
    err = assert_one_line_error(
        run_infer("run", "smollm2", "-c", "256", input=long_input), 1, "--ctx-size"
    )
    assert re.search(r"prompt is \d{3} tokens but the context window is 256 tokens", err), err


def test_empty_prompt_is_a_usage_error() -> None:
    assert_one_line_error(run_infer("run", "smollm2", "   "), 2, "empty prompt")
    assert_one_line_error(run_infer("run", "smollm2"), 2, "empty prompt")  # stdin: /dev/null


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--temperature", "-1", "--temperature"),
        ("--top-p", "1.5", "--top-p"),
        ("--min-p", "-0.1", "--min-p"),
        ("--top-k", "-3", "--top-k"),
        ("--repeat-penalty", "0", "--repeat-penalty"),
        ("--max-tokens", "-5", "--max-tokens"),
        ("--ctx-size", "4", "--ctx-size"),
        ("--threads", "0", "--threads"),
        ("--temperature", "hot", "not a valid"),
    ],
)
def test_invalid_option_values_are_usage_errors(flag: str, value: str, words: str) -> None:
    assert_one_line_error(run_infer("run", "smollm2", "hi", flag, value), 2, words)


def test_unknown_option_is_a_one_line_usage_error() -> None:
    assert_one_line_error(run_infer("run", "smollm2", "hi", "--frobnicate"), 2, "--frobnicate")


def test_stdin_that_is_not_utf8() -> None:
    result = run_infer("run", "smollm2", "Summarise:", input=b"caf\xe9 au lait\n")
    assert_one_line_error(result, 1, "not valid UTF-8", "0xe9")


def test_model_without_template_needs_raw(tiny_model_no_template: Path) -> None:
    result = run_infer("run", str(tiny_model_no_template), "hello")
    assert_one_line_error(result, 1, "no chat template", "--raw")
    raw = run_infer("run", str(tiny_model_no_template), "hello", "--raw", "-n", "8")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.endswith(b"\n")


def test_debug_env_shows_the_traceback() -> None:
    result = run_infer("run", "smollm3", "hi", env={"INFER_DEBUG": "1"})
    assert result.returncode != 0
    assert b"Traceback" in result.stderr


# --- entry points and start-up ---------------------------------------------------------------


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infer", "--version"], capture_output=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.decode().startswith("infer ")


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from infer.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for run in (['run', '--help'], ['serve', '--help']):\n"
        "    try:\n        main(run)\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('llama_cpp', 'huggingface_hub', 'rich.progress', 'numpy',"
        " 'pydantic', 'rich.markdown', 'typer.rich_utils', 'jinja2', 'starlette', 'uvicorn',"
        " 'httpx')"
        " if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1] == "HEAVY:"


def test_help_is_plain_text_in_sections() -> None:
    """`infer run --help` through a pipe: click's usage line, the options grouped by what they
    are for, no box-drawing characters or escape codes."""
    assert INFER
    result = subprocess.run(
        [INFER, "run", "--help"],
        capture_output=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0 and result.stderr == b""
    text = result.stdout.decode()
    assert text.startswith("Usage: infer run [OPTIONS] MODEL [PROMPT]\n")
    assert not set(text) & set("╭│╰\x1b")
    headings = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headings[1:] == [
        "Arguments:", "Input and output:", "Sampling:", "Context and hardware:", "Chat:",
        "Speed-ups:", "Remote engine:", "Options:",
    ]  # fmt: skip
    sampling = text.split("Sampling:")[1].split("\n\n")[0]
    assert "--temperature" in sampling and "--seed" in sampling and "--ctx-size" not in sampling
    root = subprocess.run([INFER, "--help"], capture_output=True, timeout=30).stdout.decode()
    assert "Commands:" in root and "\n  run " in root and "\n  ls " not in root  # ls: hidden


def test_no_prompt_on_a_terminal_does_not_wait() -> None:
    """stdin not a terminal and no prompt: an error at once, never a prompt that waits."""
    assert INFER
    proc = subprocess.Popen(
        [INFER, "run", "smollm2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()  # EOF: a script with nothing to say
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready
    proc.wait(timeout=20)
    assert proc.returncode == 2
