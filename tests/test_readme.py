"""The README and docs/ are the contract: every `infer …` command line they show parses against
the command it is shown with (the command exists, and so does every flag on *that* command, with
a valid value), and the quickstart, the everyday examples and the Python API example run on the
bundled model."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from infer.cli.app import app

from .conftest import INFER

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Pages whose command lines are not examples, each with the reason.
NOT_EXAMPLES = {
    "cli.md": "generated from the commands themselves: usage lines, not examples",
}
PAGES = [README, *(p for p in sorted(DOCS.glob("*.md")) if p.name not in NOT_EXAMPLES)]
# Flags of other tools that the pages mention in prose (pip, pytest, cmake, jq, llama.cpp...).
FOREIGN = {
    "--help",
    "-e",
    "--unsafe-fixes",
    "--fix",
    "--no-cache-dir",
    "--force-reinstall",
    "--no-deps",
    "--ignore-eos",  # llama-completion's, in the benchmarks' notes
    "--lora-scaled",  # llama-completion's and llama-server's, in docs/run.md and the README
    "--jinja",  # llama-server's, in the comparison table
    "--logit-bias",  # llama.cpp's, in the comparison table (infer has the server field only)
    "--prompt-cache",  # llama.cpp's, in the comparison table
    "--quantize",  # ollama create's, in the comparison table
    "--reranking",  # llama-server's, which /v1/rerank answers as
    "--strict",  # mkdocs build's
}
# Shown command lines (their text as shown) that do not parse on purpose, each with the reason.
EXCEPTIONS: dict[str, str] = {}
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console"}
# A value that stands for what the user types: MODEL, N, FILE, HOST:PORT, `…`.
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_:]*(\.\.\.)?|…|\.\.\.|\[.*\]")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")"}
# Parameter types whose every value is valid to click (strings, paths); the others are converted.
TEXT_TYPES = {"str", "text", "string", "path", "file", "filename"}


@dataclass(frozen=True)
class Shown:
    """One `infer …` command as a page shows it."""

    page: str
    text: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def commands() -> dict[str, Any]:
    return dict(getattr(get_command(app), "commands", {}))


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return re.findall(r"^```([a-z]*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def _logical_lines(body: str) -> list[str]:
    """Lines of a shell block, with `\\` continuations joined."""
    return body.replace("\\\n", " ").splitlines()


def _infer_argvs(line: str) -> list[tuple[str, ...]]:
    """The `infer` command lines of one shell line: split at pipes and `&&`, redirections and
    environment assignments dropped. `$(…)` is a word of its own, so it never reads as infer's."""
    line = re.sub(r"(?<![\w-])\d+(?=[<>])", "", line)  # the 2 of `2>&-`: shlex would split it off
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SHELL_OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    argvs = []
    for words in segments:
        words = _without_redirections(words)
        if "infer" in words:
            argvs.append(tuple(words[words.index("infer") :]))
    return argvs


def _without_redirections(words: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif set(word) <= set("<>&"):
            skip = word not in ("&",)  # `> file`: drop the target too
        else:
            kept.append(word)
    return kept


def shown_commands(page: Path) -> list[Shown]:
    """Every `infer …` line of the page's shell blocks (a transcript's `$ infer …` lines too)
    and of its inline code spans."""
    text = page.read_text()
    name = page.relative_to(ROOT).as_posix()
    shown: list[Shown] = []
    for language, body in _blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        for line in _logical_lines(body):
            if language == "" and not line.startswith(("$ ", "infer ")):
                continue  # output shown after a command
            line = line.removeprefix("$ ")
            shown += [Shown(name, line, argv) for argv in _infer_argvs(line)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.search(r"(^|\s)infer [a-z-]", span):
            shown += [Shown(name, span, argv) for argv in _infer_argvs(span)]
    return shown


def all_shown() -> list[Shown]:
    return [shown for page in PAGES for shown in shown_commands(page)]


def parse_error(argv: tuple[str, ...]) -> str | None:
    """Why click would refuse this command line, or None. Parsed as `infer` parses it, but
    without running anything: a file the line names need not exist here."""
    command: Any = get_command(app)
    parent: Any = None
    name, args = "infer", list(argv[1:])
    while hasattr(command, "commands") and args and not args[0].startswith("-"):
        parent = command.make_context(name, [], parent=parent, resilient_parsing=True)
        sub = command.get_command(parent, args[0])
        if sub is None:
            return f"no command {args[0]!r} in {' '.join(argv[:2])}"
        command, name, args = sub, args[0], args[1:]
    # A context that is not parsed runs nothing; click's parser, unlike a resilient parse, then
    # says which option is unknown or lacks its value.
    ctx = command.context_class(command, info_name=name, parent=parent)
    try:
        opts, extra, order = command.make_parser(ctx).parse_args(args=list(args))
        if extra and not ctx.allow_extra_args:
            return f"unexpected arguments {extra}"
        for param in order:
            _check_values(param, opts.get(param.name), ctx)
    except Exception as e:  # click's UsageError and BadParameter, from Typer's vendored click
        return f"{type(e).__name__}: {e}"
    return None


def _check_values(param: Any, raw: Any, ctx: Any) -> None:
    """Choices and numbers are checked, each alternative of a shown `text|json`; placeholders
    pass. A choice is what click checks (a Choice type), or what the option's metavar lists when
    it lists only words (`--format json`; not `--draft lookup|MODEL`, which takes any name)."""
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    shown = [a for v in values if isinstance(v, str) for a in v.split("|")]
    for alternative in (a for a in shown if not PLACEHOLDER.fullmatch(a)):
        if param.type.name not in TEXT_TYPES:
            param.type.convert(alternative, param, ctx)
        elif (choices := _metavar_choices(param)) and alternative not in choices:
            raise ValueError(f"{alternative!r} is not one of {param.metavar}")


def _metavar_choices(param: Any) -> set[str]:
    words = (param.metavar or "").split("|")
    return set(words) if all(re.fullmatch(r"[a-z][a-z0-9-]*", w) for w in words) else set()


def test_pages_show_commands() -> None:
    """The extraction itself: the README's quickstart, a docs page's example and a transcript's
    `$ infer …` line are found; output lines (`infer: error: …`) are not."""
    shown = {(s.page, s.argv) for s in all_shown()}
    quickstart = ("infer", "run", "smollm2", "Which city is the capital of France?")
    assert ("README.md", (*quickstart, "--temperature", "0")) in shown
    assert ("docs/bench.md", ("infer", "bench", "--history")) in shown
    assert ("README.md", ("infer", "chat", "smollm2", "--temperature", "0")) in shown
    assert not any(argv[1].startswith("error") for _, argv in shown if len(argv) > 1)


@pytest.mark.parametrize(
    "argv",
    [
        ("infer", "runn", "smollm2"),
        ("infer", "run", "smollm2", "--no-such-flag"),
        ("infer", "serve", "smollm2", "--temperature", "0"),  # a flag of run, not of serve
        ("infer", "run", "smollm2", "--format", "yaml"),
        ("infer", "serve", "smollm2", "--log-format", "text|yaml"),
        ("infer", "run", "smollm2", "-n", "many"),
        ("infer", "cache", "drop"),
        ("infer", "run", "smollm2", "--seed"),
        ("infer", "show", "a", "b"),
    ],
)
def test_a_wrong_command_line_is_refused(argv: tuple[str, ...]) -> None:
    assert parse_error(argv) is not None


def test_every_shown_command_parses() -> None:
    failures = [
        f"{shown}\n    {error}"
        for shown in all_shown()
        if (error := parse_error(shown.argv)) and shown.text not in EXCEPTIONS
    ]
    assert failures == [], "shown commands that infer would refuse:\n" + "\n".join(failures)


def test_every_documented_command_exists() -> None:
    documented = {argv[1] for s in all_shown() if len(argv := s.argv) > 1 and argv[1][0] != "-"}
    assert documented - set(commands()) == set()
    assert {"run", "chat", "serve", "pull", "list"} <= documented


def test_every_documented_flag_exists() -> None:
    """Prose too: a flag named in a sentence exists on some command."""
    flags = set()
    for page in PAGES:
        flags |= set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", page.read_text()))
    options: set[str] = set()
    for command in _all_commands(get_command(app)):
        for param in getattr(command, "params", []):
            options.update(getattr(param, "opts", []))
            options.update(getattr(param, "secondary_opts", []))
    missing = flags - options - FOREIGN
    assert missing == set(), f"the docs name flags no command has: {missing}"


def _all_commands(command: Any) -> list[Any]:
    subs = getattr(command, "commands", {}).values()
    return [command, *(c for sub in subs for c in _all_commands(sub))]


def test_python_examples_compile() -> None:
    for page in PAGES:
        for language, body in _blocks(page.read_text()):
            if language == "python":
                compile(body, str(page), "exec")


# --- the examples that run -----------------------------------------------------------------

RUNS_MARKER = "<!-- runs on the bundled model -->"
# Files the everyday examples read, as a user would have them in the current directory.
FIXTURES = {
    "notes.txt": "The meeting moved from Tuesday to Thursday at 10:00. Ana brings the slides; "
    "Ben books the room. The budget review is postponed to next month.\n",
}


def quickstart_command() -> str:
    """The quickstart's command after the install: `pip install … && infer run …`."""
    quickstart = README.read_text().split("## Quickstart", 1)[1]
    block = _blocks(quickstart)[0][1]
    return block.strip().split(" && ", 1)[1]


def everyday_examples() -> list[str]:
    """Each line of the README's blocks marked as runnable on the bundled model."""
    text = README.read_text()
    lines = []
    for after in text.split(RUNS_MARKER)[1:]:
        block = _blocks(after.lstrip("\n"))[0][1]
        lines += [line for line in _logical_lines(block) if line.strip()]
    return lines


def test_everyday_examples_are_found() -> None:
    examples = everyday_examples()
    assert any(line.startswith("echo ") for line in examples)
    assert any(line.startswith("infer show") for line in examples)
    assert quickstart_command().startswith("infer run smollm2 ")


def _run_shell(line: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    assert INFER, "the infer console script is not installed"
    for name, content in FIXTURES.items():
        (cwd / name).write_text(content)
    path = os.pathsep.join([os.path.dirname(INFER), os.environ.get("PATH", "")])
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", line],
        cwd=cwd,
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PATH": path},
    )


@pytest.mark.parametrize("line", [quickstart_command(), *everyday_examples()])
def test_example_runs_on_the_bundled_model(line: str, tmp_path: Path, bundled_model: Path) -> None:
    result = _run_shell(line, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip(), result.stderr.decode()


def test_python_api_example_runs_on_the_bundled_model(bundled_model: Path) -> None:
    section = README.read_text().split("## Python API", 1)[1]
    example = _blocks(section)[0][1]
    result = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode()
    *answer, speed = result.stdout.decode().splitlines()
    assert "".join(answer).strip()
    assert re.fullmatch(r"\d+\.\d tok/s", speed)


def test_the_image_limits_in_the_readme_are_the_codes() -> None:
    """The README gives the image limits (issue #22): the ones runtime/media.py enforces."""
    from infer.runtime import media

    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"at most {media.MAX_BYTES // 2**20} MiB" in text
    assert f"{media.MAX_SIDE:,} pixels a side" in text
    assert f"{media.MAX_PIXELS // 10**6} million pixels" in text
