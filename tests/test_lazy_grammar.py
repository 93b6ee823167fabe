"""llama.cpp's lazy grammar for tool_choice "auto" (issue 14): inactive, allowing every token,
until the model writes a tool call's start marker; from there on the call must match the tool's
schema. Unit tests drive the sampler chain through the bindings with chosen logits on tiny
random-weight GGUFs (and SmolLM2's BPE vocabulary); server tests go through the real `openai`
client, with a tiny GGUF whose weights make it start a call at once."""

from __future__ import annotations

import ctypes
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from infer.runtime import LoadOptions, SamplingParams, load
from infer.runtime.errors import UsageError
from infer.runtime.generation import tool_calls, tool_plan
from infer.runtime.llama.constrained import _state
from infer.runtime.llama.grammar import check_grammar
from infer.runtime.llama.lazy import Watch, pattern
from infer.runtime.params import GrammarTrigger

from .test_serve import Server
from .test_tool_serve import HERMES, LLAMA3, MISTRAL
from .tiny_gguf import N_EMBD, N_FF, N_LAYER, finish, llama_writer, write_tiny_gguf

PARAMS = {"type": "object", "properties": {"u": {"enum": ["c", "f"]}}, "required": ["u"]}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[a-z]{1,8}$"},
        "days": {"type": "integer"},
    },
    "required": ["city", "days"],
}
TOOLS: Any = [
    {"type": "function", "function": {"name": "w", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
]
SCHEMAS = {"w": PARAMS, "weather": WEATHER}
GENERIC = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


def _lazy(kind: str, parallel: bool = True, **sampling: Any) -> SamplingParams:
    """Sampling with the lazy grammar of `kind` for TOOLS and its triggers."""
    grammar, triggers = tool_calls.lazy_grammar(TOOLS, kind, parallel)
    return SamplingParams(grammar=grammar, grammar_triggers=triggers, **sampling).validate()


def _ids(text: str) -> list[int]:
    """The tiny vocabulary's byte tokens for `text` (4 control tokens come first)."""
    return [b + 4 for b in text.encode()]


class Chain:
    """A sampler chain as the engine builds it for `sampling`, driven by hand."""

    def __init__(self, engine: Any, sampling: SamplingParams) -> None:
        self.engine, self.ll, self.n = engine, engine._ll, engine.n_vocab
        self.chain = engine.sampler(sampling)
        self.state = _state(self.ll.llama_sampler_chain_get(self.chain, 0))

    @property
    def watch(self) -> Watch:
        assert self.state.watch is not None  # a lazy grammar's state has one
        return self.state.watch

    def allowed(self) -> set[int]:
        return {t for t in range(self.n) if self.state.allows(t)}

    def accept(self, tokens: list[int]) -> None:
        for t in tokens:
            self.ll.llama_sampler_accept(self.chain, t)

    def sample(self, logits: list[float]) -> int:
        ll = self.ll
        data = (ll.llama_token_data * self.n)(
            *[ll.llama_token_data(i, x, 0.0) for i, x in enumerate(logits)]
        )
        arr = ll.llama_token_data_array(data, self.n, -1, False)
        ll.llama_sampler_apply(self.chain, ctypes.byref(arr))
        return int(data[arr.selected].id)

    def run(self, rng: random.Random, limit: int = 400) -> bytes:
        """Sample with random logits until end-of-generation; the bytes written."""
        out = b""
        for _ in range(limit):
            token = self.sample([rng.gauss(0, 3) for _ in range(self.n)])
            if self.ll.llama_vocab_is_eog(self.engine._vocab, token):
                return out
            self.accept([token])
            out += self.watch.piece(token)
        pytest.fail(f"no end after {limit} tokens: {out!r}")

    def free(self) -> None:
        self.ll.llama_sampler_free(self.chain)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("lazy-models")
    out = {}
    for name, template in (
        ("hermes", HERMES), ("llama3", LLAMA3), ("mistral", MISTRAL), ("generic", GENERIC),
    ):  # fmt: skip
        out[name] = load(str(write_tiny_gguf(root / f"{name}.gguf", template=template)))
    yield out
    for engine in out.values():
        engine.close()


MARKERS = {
    "hermes": ["<tool_call>"],
    "mistral": ["[TOOL_CALLS]"],
    "llama3": ["<|python_tag|>", '{"name"', ' \n{ "name"'],
    "generic": ['{"name"', '  { "name"'],
}


@pytest.mark.parametrize(
    ("kind", "marker"), [(k, m) for k, markers in MARKERS.items() for m in markers]
)
def test_free_until_the_marker_then_held_to_the_schema(
    kind: str, marker: str, engines: dict[str, Any]
) -> None:
    engine = engines[kind]
    for seed in range(3):
        chain = Chain(engine, _lazy(kind, temperature=1.0, seed=seed))
        try:
            assert chain.allowed() == set(range(chain.n))  # nothing written yet: all allowed
            before, marker_ids = "", _ids(marker)
            if not marker.lstrip().startswith("{"):  # markers that count anywhere
                before = "Let me look. "
                chain.accept(_ids(before))
                assert chain.allowed() == set(range(chain.n))
            chain.accept(marker_ids[:-1])
            assert chain.allowed() == set(range(chain.n)), "awake before the marker is whole"
            chain.accept(marker_ids[-1:])
            allowed = chain.allowed()
            assert allowed and len(allowed) < 16 and _ids("x")[0] not in allowed
            assert engine.eos_id not in allowed  # a call begun must be finished
            text = before + marker + chain.run(random.Random(seed)).decode(errors="replace")
            parsed = tool_calls.parse(text, kind, set(SCHEMAS))
            assert parsed.calls, text
            for call in parsed.calls:
                jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        finally:
            chain.free()


@pytest.mark.parametrize("kind", ["llama3", "generic"])
def test_a_call_object_counts_only_at_the_start(kind: str, engines: dict[str, Any]) -> None:
    chain = Chain(engines[kind], _lazy(kind))
    try:
        chain.accept(_ids('Here: {"name"'))
        assert chain.allowed() == set(range(chain.n))
        assert not chain.watch.awake
    finally:
        chain.free()


def test_one_call_unless_parallel(engines: dict[str, Any]) -> None:
    chain = Chain(engines["hermes"], _lazy("hermes", parallel=False, temperature=0))
    try:
        chain.accept(_ids('<tool_call>{"name": "w", "arguments": {"u": "f"}}</tool_call>'))
        assert chain.allowed() == {engines["hermes"].eos_id, _ids("\n")[0]}
    finally:
        chain.free()


def test_a_marker_that_is_one_token_triggers_as_that_token(engines: dict[str, Any]) -> None:
    """`<|im_start|>` is a control token of the tiny vocabulary: llama.cpp's trigger_tokens."""
    engine = engines["hermes"]
    grammar = check_grammar('root ::= "<|im_start|>" "ab"\n')
    sampling = SamplingParams(
        temperature=0, grammar=grammar, grammar_triggers=(GrammarTrigger("<|im_start|>"),)
    )
    chain = Chain(engine, sampling)
    try:
        assert chain.watch.tokens == {3}
        chain.accept(_ids("hi"))
        assert chain.allowed() == set(range(chain.n))
        chain.accept([3])
        assert chain.allowed() == set(_ids("a"))
    finally:
        chain.free()


def test_a_token_running_past_the_marker_is_picked_again(bundled_model: Path) -> None:
    """In a BPE vocabulary `>` has longer siblings (`>\\n`, `>{`...): a token that would
    complete the marker with text after it is never taken (llama.cpp would hand the grammar
    text it never checked); the pick falls to one that ends on the marker."""
    engine = load(str(bundled_model), LoadOptions())
    try:
        ll, n = engine._ll, engine.n_vocab
        chain = Chain(engine, _lazy("hermes", temperature=0))
        watch = chain.watch
        pieces = {t: watch.piece(t) for t in range(n)}
        close = next(t for t, p in pieces.items() if p == b">")
        longer = [t for t, p in pieces.items() if len(p) > 1 and p.startswith(b">")]
        assert longer
        chain.accept(engine.tokenize("Sure. <tool_call", False))
        assert all(watch.overshoots(t) for t in longer) and not watch.overshoots(close)
        logits = [0.0] * n
        for i, t in enumerate(longer):
            logits[t] = 50.0 - i * 0.01  # every longer sibling above the plain `>`
        logits[close] = 20.0
        picked = chain.sample(logits)
        assert picked == close
        chain.accept([picked])
        assert watch.awake and chain.allowed() < set(range(n))
        chain.free()
        ll.llama_backend_free  # noqa: B018 - the bindings stay loaded for the other tests
    finally:
        engine.close()


def test_a_lazy_grammar_comes_with_its_triggers() -> None:
    text, triggers = tool_calls.lazy_grammar(TOOLS, "llama3")
    assert triggers == (
        GrammarTrigger("<|python_tag|>"),
        GrammarTrigger('{"name"', at_start=True),
        GrammarTrigger('{ "name"', at_start=True),
    )
    assert text.startswith("root ::= ")  # plain GBNF: the triggers are not in the text
    assert tool_calls.lazy_grammar(TOOLS, "hermes")[1] == (GrammarTrigger("<tool_call>"),)
    auto = tool_plan.plan(TOOLS, "auto", LLAMA3)
    assert (auto.format, auto.grammar, auto.triggers) == ("llama3", text, triggers)
    required = tool_plan.plan(TOOLS, "required", LLAMA3)
    assert (required.grammar, required.triggers) == (tool_calls.grammar(TOOLS, "llama3"), ())
    none = tool_plan.plan(TOOLS, "none", LLAMA3)
    assert (none.grammar, none.triggers, none.rendered, none.markers) == ("", (), None, ())
    assert pattern(GrammarTrigger("[TOOL_CALLS]")) == "(\\[TOOL_CALLS\\])"
    assert pattern(GrammarTrigger('{"name"', at_start=True)) == '^\\s*(\\{"name")'


@pytest.mark.parametrize(
    ("triggers", "grammar", "message"),
    [
        ((GrammarTrigger("<tool_call>"),), "", "grammar_triggers need a grammar"),
        ((GrammarTrigger(""),), 'root ::= "a"', "non-empty word"),
        ((("<tool_call>", "yes"),), 'root ::= "a"', "(word, at_start) pairs"),
    ],
)
def test_triggers_are_checked(triggers: Any, grammar: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        SamplingParams(grammar=grammar, grammar_triggers=triggers).validate()


def test_plain_pairs_are_triggers() -> None:
    sampling = SamplingParams(grammar='root ::= "a"', grammar_triggers=(("<tool_call>", True),))
    assert sampling.validate() is sampling
    assert pattern(sampling.grammar_triggers[0]) == "^\\s*(<tool_call>)"


def test_a_grammar_that_names_triggers_in_a_comment_is_not_lazy(
    engines: dict[str, Any], tmp_path: Path
) -> None:
    """The triggers once travelled as a first-line comment of the grammar text: a user's
    grammar that starts with that comment is an ordinary grammar now, held from the start."""
    from .conftest import run_infer

    text = '# infer-lazy-grammar [["<tool_call>", false]]\nroot ::= "ok"\n'
    chain = Chain(engines["hermes"], SamplingParams(temperature=0, grammar=check_grammar(text)))
    try:
        assert chain.state.watch is None
        assert chain.allowed() == set(_ids("o"))
    finally:
        chain.free()
    model = write_tiny_gguf(tmp_path / "m.gguf", template=HERMES)
    result = run_infer(
        "run", str(model), "hi", "--grammar", text, "-n", "8", "--temperature", "0",
        "--ctx-size", "256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\n"


# --- the server -----------------------------------------------------------------------------
def write_caller_gguf(path: Path) -> Path:
    """A tiny llama whose one wish is the user-defined token `<tool_call>` (id 4), then the end:
    a constant direction in every embedding carries through the nearly silent layers to the
    output, where only those two rows read it. Everything else is random."""
    import gguf

    rng = np.random.default_rng(7)
    tokens = [b"<unk>", b"<s>", b"</s>", b"<|im_start|>", b"<tool_call>"]
    tokens += [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 3
    types += [gguf.TokenType.USER_DEFINED] + [gguf.TokenType.BYTE] * 256
    n_vocab = len(tokens)
    w = llama_writer(path, tokens, types, template=HERMES)

    def tensor(name: str, *shape: int, scale: float = 0.02) -> np.ndarray:
        value = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, value)
        return value

    embd = (rng.standard_normal((n_vocab, N_EMBD)) * 0.3).astype(np.float32)
    embd[:, 0] = 4.0
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = (rng.standard_normal((n_vocab, N_EMBD)) * 0.3).astype(np.float32)
    out[:, 0] = 0.0
    out[4], out[2] = 0.0, 0.0
    out[4, 0], out[2, 0] = 3.0, 1.5
    w.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", N_EMBD, N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    return finish(w, path)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    root = tmp_path_factory.mktemp("lazy-serve")
    plain = write_tiny_gguf(root / "plain.gguf", template=HERMES)
    caller = write_caller_gguf(root / "caller.gguf")
    home = root / "home"
    s = Server(str(plain), str(caller), "--ctx-size", "512", home=home).wait_ready()
    yield {"plain": s}
    assert s.stop() == 0


def _model(s: Server, name: str) -> str:
    return next(m.id for m in s.client().models.list().data if name in m.id)


ASK: Any = [{"role": "user", "content": "Oslo?"}]


def test_auto_answers_in_text_when_the_model_does_not_call(servers: dict[str, Server]) -> None:
    s = servers["plain"]
    for seed in range(3):
        answer = s.client().chat.completions.create(
            model=_model(s, "plain"), messages=ASK, tools=TOOLS, tool_choice="auto",
            max_tokens=12, seed=seed,
        )  # fmt: skip
        choice = answer.choices[0]
        assert choice.finish_reason in ("stop", "length")
        assert not choice.message.tool_calls
        assert choice.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_auto_call_the_model_starts_is_held_to_the_schema(
    servers: dict[str, Server], stream: bool
) -> None:
    """The caller model writes `<tool_call>` first; everything after it is random weights
    under the lazy grammar, and the call still parses and validates."""
    s = servers["plain"]
    client, model = s.client(), _model(s, "caller")
    for seed in range(3):
        kw: Any = dict(
            model=model, messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=200,
            seed=seed, temperature=1.0, parallel_tool_calls=False,
        )  # fmt: skip
        if not stream:
            choice = client.chat.completions.create(**kw).choices[0]
            assert choice.finish_reason == "tool_calls", choice
            calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        else:
            parts: dict[int, list[str]] = {}
            reasons = []
            for chunk in client.chat.completions.create(**kw, stream=True):
                for c in chunk.choices:
                    for t in c.delta.tool_calls or []:
                        part = parts.setdefault(t.index, ["", ""])
                        if t.function:
                            part[0] += t.function.name or ""
                            part[1] += t.function.arguments or ""
                    if c.finish_reason:
                        reasons.append(c.finish_reason)
            assert reasons == ["tool_calls"]
            calls = [(name, args) for name, args in parts.values()]
        assert len(calls) == 1
        for name, arguments in calls:
            jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_run_tool_choice_auto_uses_the_lazy_grammar(tmp_path: Path) -> None:
    """`infer run --tool` (auto): the caller model's call validates. It would start call after
    call (its one wish is `<tool_call>`): the stop string ends the answer after the first."""
    from .conftest import run_infer

    caller = write_caller_gguf(tmp_path / "caller.gguf")
    tool = tmp_path / "weather.json"
    tool.write_text(json.dumps(TOOLS[1]))
    result = run_infer(
        "run", str(caller), "Oslo?", "--tool", f"@{tool}", "-n", "200", "--seed", "1",
        "--ctx-size", "512", "--stop", "</tool_call>",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["finish_reason"] == "tool_calls" and len(answer["tool_calls"]) == 1
    for call in answer["tool_calls"]:
        assert call["function"]["name"] == "weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
