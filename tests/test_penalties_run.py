"""`infer run`'s penalties cover the prompt as llama.cpp's own llama-completion's do (it feeds
the prompt's tokens to its penalty sampler before the first sample): the same raw prompt, the
same penalty, greedy, token for token. tests/test_sampling_vs_llamacpp.py checks `infer serve`
against llama-server the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_infer
from .llama_server import llamacpp_tool, whole_output

# Repeats "a" and "little": penalising the prompt moves the greedy answer within a few tokens.
PROMPT = "Once upon a time, there was a little dragon who"
N = 24
PENALTIES = [
    ("--repeat-penalty", "1.5"),
    ("--presence-penalty", "1.5"),
    ("--frequency-penalty", "1.5"),
    ("--presence-penalty", "1.5", "--repeat-last-n", "6"),  # a window shorter than the prompt
]


@pytest.fixture(scope="module")
def llama_completion() -> Path:
    return llamacpp_tool("llama-completion")


def reference(exe: Path, model: Path, *flags: str) -> str:
    """llama-completion's greedy answer (its prompt: BOS + the text, as `infer run --raw`)."""
    cmd = [str(exe), "-m", str(model), "-p", PROMPT, "-n", str(N), "--temp", "0", "-t", "1"]
    cmd += ["-no-cnv", "--no-display-prompt", *flags]
    return whole_output(cmd, lambda out: bool(out.strip()), 120).decode().rstrip("\n")


def answer(*flags: str) -> str:
    result = run_infer(
        "run", "smollm2", PROMPT, "--raw", "--temperature", "0", "-n", str(N), "-t", "1",
        "--no-prompt-cache", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().removesuffix("\n")  # the line end infer adds off a terminal


@pytest.mark.parametrize("flags", PENALTIES, ids=lambda f: " ".join(f))
def test_run_penalises_the_prompt_as_llama_completion(
    llama_completion: Path, bundled_model: Path, flags: tuple[str, ...]
) -> None:
    expected = reference(llama_completion, bundled_model, *flags)
    assert answer(*flags) == expected
    assert expected != reference(llama_completion, bundled_model)  # the penalty did something


def test_the_window_counts_the_prompts_last_tokens(
    llama_completion: Path, bundled_model: Path
) -> None:
    """A 6-token window over the prompt's end answers otherwise than the default 64 (which holds
    the whole prompt): the window, not just the penalty, is llama.cpp's."""
    short = answer("--presence-penalty", "1.5", "--repeat-last-n", "6")
    assert short != answer("--presence-penalty", "1.5")
    assert short == reference(
        llama_completion, bundled_model, "--presence-penalty", "1.5", "--repeat-last-n", "6"
    )


def test_minus_one_looks_back_over_the_whole_context() -> None:
    """--repeat-last-n -1 (Ollama's "the whole context"; llama.cpp's tools refuse it) is the
    context's size, not 0: here the same as the default 64, which holds prompt and answer."""
    whole = answer("--presence-penalty", "1.5", "--repeat-last-n", "-1")
    assert whole == answer("--presence-penalty", "1.5") != answer()


def test_no_penalty_is_the_plain_greedy_answer(llama_completion: Path, bundled_model: Path) -> None:
    assert answer() == reference(llama_completion, bundled_model)


def test_drafting_penalises_the_prompt_as_plain_decoding() -> None:
    """Speculative decoding primes its verifier's penalties with the prompt as plain decoding
    does (runtime/generation/speculative.py): the same greedy answer, drafted or not."""
    flags = ("--presence-penalty", "1.5")
    plain = answer(*flags)
    assert plain != answer()
    assert answer(*flags, "--draft", "lookup", "--draft-always") == plain
    assert answer(*flags, "--draft", "smollm2", "--draft-max", "4", "--draft-always") == plain
