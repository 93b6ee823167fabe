"""docs/ cannot go stale: the CLI reference is what the generator writes from the commands now,
and every --help names a docs page (and section) that exists."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from infer.cli.app import app
from infer.cli.help import DOCS, docs_page

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "docs" / "gen_cli_reference.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_reference", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    gen = generator()
    now, written = gen.render(), gen.PAGE.read_text()
    diff = "".join(
        difflib.unified_diff(written.splitlines(True), now.splitlines(True), "docs/cli.md", "now")
    )
    assert not diff, f"docs/cli.md is out of date: run `{gen.REGENERATE}`\n{diff[:3000]}"


def test_cli_reference_documents_every_command_and_option() -> None:
    text = generator().render()
    for path, command in _command_paths(get_command(app), "infer"):
        if path != "infer":
            assert f"\n## {path}\n" in text or f"\n### {path}\n" in text, path
        for param in command.params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                assert param.opts[0] in text, (path, param.opts)


def _command_paths(command: Any, path: str) -> list[tuple[str, Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            found += _command_paths(sub, f"{path} {name}")
    return found


def _slug(heading: str) -> str:
    """An anchor as MkDocs (Python-Markdown's toc) and GitHub make it from a simple heading."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


@pytest.mark.parametrize("key", sorted(DOCS))
def test_every_docs_page_named_in_help_exists(key: str) -> None:
    page, _, anchor = DOCS[key].partition("#")
    path = ROOT / "docs" / page
    assert path.is_file(), DOCS[key]
    assert not anchor or anchor in _anchors(path), f"{DOCS[key]}: no such section"


def test_every_command_is_mapped_to_its_own_page() -> None:
    for path, _ in _command_paths(get_command(app), "infer"):
        words = path.split()[1:]
        assert not words or words[0] in DOCS, f"{path} has no entry in cli/help.py DOCS"


@pytest.mark.parametrize("args", [[], ["run"], ["chat"], ["serve"], ["cache", "list"], ["ls"]])
def test_help_ends_with_its_docs_page(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="infer")
    assert result.exit_code == 0, result.output
    page = docs_page(" ".join(["infer", *args]))
    assert result.output.rstrip().splitlines()[-1] == f"  Docs: docs/{page}"


def test_docs_page_of_a_subcommand_falls_back_to_its_group() -> None:
    assert docs_page("infer cache clear") == DOCS["cache"]
    assert docs_page("infer") == DOCS[""]
    assert docs_page("infer chat") != docs_page("infer run")


def test_readme_links_resolve() -> None:
    """README.md is outside the MkDocs site, so its links are checked here: each relative link
    names a file that exists, and a docs page's section that exists."""
    readme = ROOT / "README.md"
    for target in re.findall(r"\]\(([^)\s]+)\)", readme.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else readme
        assert file.exists(), target
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{target}: no such section"
