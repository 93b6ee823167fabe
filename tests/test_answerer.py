"""Issue 20's one answer path: the local engine and a remote are both an Answerer
(runtime/answer.py), and run, chat and --batch drive either the same way. Checked without a
model: a scripted answerer stands in for either kind, and the remote's request body is read."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from infer.runtime.answer import Answer, Answerer, AnswerRequest, Stats, Window
from infer.runtime.errors import Interrupted
from infer.runtime.options import Overrides

from .fakes import FakeSession

ROOT = Path(__file__).resolve().parent.parent


# --- a scripted answerer ------------------------------------------------------------------
@dataclass
class ScriptedAnswer:
    pieces: list[str]
    cancel: threading.Event | None
    text: str = ""
    stats: Stats = field(default_factory=Stats)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces:
            if self.cancel is not None and self.cancel.is_set():
                self.stats.finish_reason = "interrupted"
                raise Interrupted(self.text)
            self.text += piece
            self.stats.generated_tokens += 1
            yield piece
        self.stats.finish_reason = "stop"


class Scripted:
    """Answers every request with `pieces`, and keeps the requests; `size` None: a remote."""

    def __init__(self, pieces: list[str], size: int | None = 64) -> None:
        self.pieces, self.size = pieces, size
        self.model, self.where = "m", "/models/m.gguf" if size else "http://box:8000"
        self.requests: list[AnswerRequest] = []
        self.resets = 0

    def answer(self, request: AnswerRequest, cancel: threading.Event | None = None) -> Answer:
        self.requests.append(request)
        return ScriptedAnswer(list(self.pieces), cancel)

    def settings(self, overrides: Overrides) -> dict[str, Any]:
        return overrides.given() if self.size is None else {"temperature": 0.8, **overrides.given()}

    def window(self) -> Window | None:
        return None if self.size is None else Window(3, self.size)

    def count(self, request: AnswerRequest) -> int:
        return sum(len(str(m["content"]).split()) for m in request.messages)

    def reset(self) -> None:
        self.resets += 1


def test_the_fake_and_both_answerers_are_answerers() -> None:
    from infer.runtime.local import LocalAnswerer
    from infer.runtime.remote import Remote, RemoteModel

    with Remote("http://127.0.0.1:9") as remote:
        kinds = [Scripted(["x"]), LocalAnswerer(FakeSession(), "m", "p"), RemoteModel(remote, "m")]
        assert all(isinstance(kind, Answerer) for kind in kinds)
    assert not isinstance(object(), Answerer)


# --- the chat over either kind ------------------------------------------------------------
def _repl(answerer: Scripted, **request: Any) -> Any:
    from infer.cli.chat import ChatSettings, Repl
    from infer.runtime.generation.conversation import Conversation

    settings = ChatSettings(AnswerRequest((), **request))
    return Repl(answerer, Conversation("m", "Be brief."), settings)


@pytest.mark.parametrize("size", [64, None])
def test_the_chat_asks_the_whole_conversation(
    size: int | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFER_HOME", str(ROOT / ".pytest-home-unused"))
    monkeypatch.setattr("infer.cli.chat.save", lambda *a: None)
    answerer = Scripted(["Hi", " there"], size)
    repl = _repl(answerer)
    repl.ask("hello")
    repl.ask("again")
    assert capsys.readouterr().out == "Hi there\nHi there\n"
    roles = [m["role"] for m in answerer.requests[-1].messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert answerer.requests[-1].messages[-1] == {"role": "user", "content": "again"}


def test_set_is_checked_by_the_option_table_and_sent_as_an_override() -> None:
    from infer.runtime.errors import UsageError

    repl = _repl(Scripted(["x"], None))
    repl.cmd_set("temperature 0.25")
    repl.cmd_set("repeat-last-n 32")
    repl.cmd_set("max_tokens 9")
    request = repl.settings.request
    assert request.overrides.given() == {"temperature": 0.25, "repeat_last_n": 32}
    assert request.max_tokens == 9
    with pytest.raises(UsageError, match="temperature must be between"):
        repl.cmd_set("temperature 500")
    with pytest.raises(UsageError, match="not a valid int"):
        repl.cmd_set("top_k 1.5")


def test_show_context_and_format_say_what_each_kind_knows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    local, remote = _repl(Scripted(["x"], 64)), _repl(Scripted(["x"], None))
    local.cmd_show("")
    local.cmd_context("")
    said = capsys.readouterr().err
    assert "temperature 0.8" in said and "context: 3 / 64 tokens" in said
    remote.cmd_show("")
    remote.cmd_context("")
    said = capsys.readouterr().err
    assert "on http://box:8000" in said and "the remote defaults" in said
    assert "sent whole with each question" in said
    remote.cmd_format("json")
    assert remote.settings.request.response_format == {"type": "json_object"}
    local.settings.request = replace(local.settings.request, grammar="root ::= x")
    local.cmd_format("off")
    assert local.settings.request.grammar == "" and local.settings.request.response_format is None


def test_a_local_window_drops_the_oldest_messages(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("infer.cli.chat.save", lambda *a: None)
    answerer = Scripted(["ok"], 12)
    repl = _repl(answerer, max_tokens=2)
    for _ in range(4):
        repl.ask("one two three")
    assert "oldest messages" in capsys.readouterr().err
    assert len(answerer.requests[-1].messages) < 8


# --- the remote's request -----------------------------------------------------------------
def test_the_remote_body_sends_only_what_was_given_by_its_openai_name() -> None:
    from infer.runtime.errors import UsageError
    from infer.runtime.remote import body

    overrides = Overrides.of({"temperature": 0, "presence_penalty": 0.5})
    request = AnswerRequest.of("hi", "Be", overrides=overrides, max_tokens=5, stop=("END",))
    sent = body("alpha", request)
    assert sent["messages"] == [
        {"role": "system", "content": "Be"},
        {"role": "user", "content": "hi"},
    ]
    assert {k: sent[k] for k in ("temperature", "presence_penalty", "max_tokens", "stop")} == {
        "temperature": 0.0,
        "presence_penalty": 0.5,
        "max_tokens": 5,
        "stop": ["END"],
    }
    assert "top_k" not in sent and "seed" not in sent
    raw = body("alpha", replace(request, raw=True))
    assert raw["prompt"] == "Be\n\nhi" and "messages" not in raw
    with pytest.raises(UsageError, match="no GBNF grammar"):
        body("alpha", replace(request, grammar="root ::= x"))


def test_remote_stats_have_the_local_keys() -> None:
    from infer.runtime.remote import Remote

    with Remote("http://127.0.0.1:9") as remote:
        answer = remote.answerer("m").answer(AnswerRequest.of("hi"))
    assert list(answer.stats.as_dict()) == list(Stats().as_dict())


def test_a_remote_run_never_loads_llama_cpp() -> None:
    """`infer run --remote` end to end (against a closed port): neither llama.cpp nor the
    engine's module is imported."""
    code = (
        "import sys\n"
        "from infer.cli.app import main\n"
        "try:\n"
        "    main(['run', 'm', 'hi', '--remote', 'http://127.0.0.1:9', '--temperature', '0'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 1, e.code\n"
        "loaded = {'llama_cpp', 'infer.runtime.llama.engine'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b"connection refused" in result.stderr


# --- --batch over a request-at-a-time answerer --------------------------------------------
def test_batch_lines_send_only_their_own_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infer.cli.batch import answer_batch

    lines = [
        {"prompt": "a", "temperature": 0.8, "id": "x"},  # infer's default, yet set: sent
        {"prompt": "b", "max_tokens": 3, "system": "S"},
        {"prompt": "c"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    answerer = Scripted(["ok"], None)
    base = AnswerRequest((), overrides=Overrides(top_k=5), stop=("END",))
    answer_batch(answerer, str(path), 2, base)
    sent = sorted(answerer.requests, key=lambda r: str(r.messages[-1]["content"]))
    assert [r.overrides.given() for r in sent] == [
        {"temperature": 0.8, "top_k": 5},
        {"top_k": 5},
        {"top_k": 5},
    ]
    assert [r.max_tokens for r in sent] == [None, 3, None]
    assert all(r.stop == ("END",) for r in sent)
    assert sent[1].messages[0] == {"role": "system", "content": "S"}
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and records[0]["id"] == "x"
    assert all(r["text"] == "ok" and r["finish_reason"] == "stop" for r in records)


# --- no private Typer ---------------------------------------------------------------------
def private_typer_imports(source: str) -> list[int]:
    """Lines of `source` that import from Typer's private modules (typer._click and kin)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(n.startswith("typer._") for n in names):
            found.append(node.lineno)
    return found


def test_the_cli_imports_nothing_private_of_typer() -> None:
    found = []
    for path in sorted((ROOT / "cli").rglob("*.py")):
        text = path.read_text()
        found += [f"{path.name}:{n}" for n in private_typer_imports(text)]
        if "typer._click" in text:
            found.append(f"{path.name}: typer._click")
    assert found == []


def test_the_private_typer_check_catches_what_it_must() -> None:
    assert private_typer_imports("from typer._click.core import X\nimport typer._click") == [1, 2]
    assert private_typer_imports("import typer\nfrom typer.main import get_command") == []


# --- the local answerer over a scripted engine --------------------------------------------
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


def _local(**engine: Any) -> Any:
    from infer.runtime.local import LocalAnswerer

    from .fakes import FakeSession

    fake = FakeSession(**engine)
    fake.model.chat_template = TEMPLATE
    defaults = Overrides(temperature=0.3, top_k=7)
    return fake, LocalAnswerer(fake, "tiny", "/m/tiny.gguf", defaults=defaults)


def test_local_answers_with_the_model_defaults_under_the_request() -> None:
    from infer.runtime.errors import UsageError

    fake, local = _local()
    request = AnswerRequest.of("hi", "sys", overrides=Overrides(temperature=0.0), max_tokens=9)
    answer = local.answer(request)
    assert "".join(answer) == "Hello world" and answer.text == "Hello world"
    assert answer.stats.finish_reason and answer.tool_calls == []
    prompt, sampling = fake.calls[0]
    assert bytes(prompt).decode() == "<system>sys<user>hi<assistant>"
    assert (sampling.temperature, sampling.top_k) == (0.0, 7)
    assert local.settings(Overrides(seed=3))["seed"] == 3
    assert local.settings(Overrides())["temperature"] == 0.3
    assert local.window() == Window(fake.n_past, fake.n_ctx)
    assert local.count(request) == len(prompt)
    raw = local.answer(replace(request, raw=True))
    list(raw)
    assert bytes(fake.calls[1][0]).decode() == "sys\n\nhi"
    with pytest.raises(UsageError, match="tool run"):
        local.answer(replace(request, tools=({"type": "function"},)))


def test_one_shot_run_streams_a_local_answer_as_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from infer.cli import answering as cli_run
    from infer.runtime.models.resolve import ResolvedModel

    from .fakes import FakeSession

    fake = FakeSession()
    fake.model.chat_template = TEMPLATE
    monkeypatch.setattr(cli_run, "resolve_or_pull", lambda m, offline: ResolvedModel(Path(m), m))
    monkeypatch.setattr(cli_run, "load_session", lambda *a, **k: fake)
    monkeypatch.setattr(cli_run, "prompt_text", lambda prompt: prompt)
    args = cli_run.RunArgs("tiny", "hi", json_out=True, overrides=Overrides(top_p=0.5))
    cli_run.execute(args, lambda name: False)
    record = json.loads(capsys.readouterr().out)
    assert record["model"] == "tiny" and record["text"] == "Hello world"
    assert list(record["stats"]) == list(Stats().as_dict())
    assert fake.calls[0][1].top_p == 0.5
