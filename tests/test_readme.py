"""The README is the contract: every command and flag it documents exists."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from infer.cli.app import app

README = Path(__file__).resolve().parent.parent / "README.md"
# Flags of other tools the README mentions (pip, pytest, cmake, jq...).
FOREIGN = {
    "--help",
    "-e",
    "--unsafe-fixes",
    "--fix",
    "--no-cache-dir",
    "--force-reinstall",
    "--no-deps",
}


def commands() -> dict[str, object]:
    group = get_command(app)
    return dict(getattr(group, "commands", {}))


def code_in_readme() -> str:
    """Code blocks and inline code spans: where commands are shown, not prose."""
    text = README.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return "\n".join(blocks + spans)


def test_every_documented_command_exists() -> None:
    documented = set(re.findall(r"(?:^|[\s|(])infer ([a-z][a-z-]+)", code_in_readme(), re.M))
    known = set(commands())
    assert documented - known == set(), f"README documents missing commands: {documented - known}"
    assert "run" in documented and "chat" in documented


def test_every_documented_flag_exists() -> None:
    text = README.read_text()
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - FOREIGN
    options: set[str] = set()
    for command in commands().values():
        for param in getattr(command, "params", []):
            options.update(getattr(param, "opts", []))
            options.update(getattr(param, "secondary_opts", []))
    options.update(get_command(app).params[0].opts)  # --version
    missing = {f for f in flags if f not in options}
    assert missing == set(), f"README documents flags no command has: {missing}"
