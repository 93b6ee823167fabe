"""The prompt cache across runs: a hit restores exactly the state a full evaluation gives (same
greedy output), only the new suffix is evaluated, bad files are survived and replaced, the size
bound holds, and `infer cache list|clear` show and remove entries."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime import (
    GenerateOptions,
    LoadOptions,
    Message,
    SamplingParams,
    generate,
    load,
)
from infer.runtime.generation import prompt_store
from infer.runtime.generation.loop import Generation, Stats
from infer.runtime.generation.prompt_cache import PromptCache
from infer.runtime.llama.session import LlamaSession
from infer.runtime.models.resolve import ResolvedModel, resolve

from .conftest import INFER, run_infer

GREEDY = SamplingParams(temperature=0)


# --- the tiny model, in process: fast ------------------------------------------------------


@pytest.fixture()
def engine(tiny_model: Path) -> Iterator[LlamaSession]:
    eng = _load(tiny_model)
    yield eng
    eng.model.close()


def _load(model: Path, cache: bool = True) -> LlamaSession:
    """A session over the model (closing it with `.model.close()`): the prompt cache is the
    model's, used by the sessions made over it."""
    options = LoadOptions(ctx_size=1024, threads=1, prompt_cache=cache)
    eng = load(ResolvedModel(model, "tiny"), options).new_session()
    assert isinstance(eng, LlamaSession)
    return eng


def _prompt(eng: LlamaSession, seed: int, n: int = 300) -> list[int]:
    rng = random.Random(seed)
    return [eng.model.bos_id, *(rng.randrange(4, 260) for _ in range(n - 1))]  # byte tokens


def _greedy(
    eng: LlamaSession, prompt: list[int], n: int = 16, *, fresh: bool = True
) -> tuple[list[int], Stats]:
    """16 greedy tokens. `fresh`: from an empty KV cache, as a new process starts; otherwise
    reusing what the KV cache holds, as a chat's next turn does."""
    if fresh:
        eng.reset()
    gen = Generation(eng, prompt, GREEDY, GenerateOptions(max_tokens=n))
    list(gen)
    return eng.tokens[len(prompt) :], gen.stats


def _files() -> list[Path]:
    return sorted(prompt_store.root().glob("*/*.kv"))


# A cache hit decodes the rest of the prompt in a smaller batch than a full evaluation does, and
# llama.cpp's numbers depend slightly on the batch size (its server's README says so of its own
# prompt cache). What must hold exactly: a run restored from disk computes what the same process
# computes when it reuses its KV cache in memory: the same state, so the same logits and tokens.
def test_hit_restores_the_state_and_evaluates_only_the_suffix(tiny_model: Path) -> None:
    plain = _load(tiny_model, cache=False)
    eng = _load(tiny_model)
    try:
        a = _prompt(eng, 1)
        b = a[:-10] + _prompt(eng, 2, 11)[1:]  # the same "document", another "question"
        want_cold = _greedy(plain, a)[0]
        want_a = _greedy(plain, a, fresh=False)[0]  # only the last token decoded again
        want_b = _greedy(plain, b, fresh=False)[0]  # only the 10 new tokens decoded
        assert _files() == []  # an engine without the cache writes nothing

        got, stats = _greedy(eng, a)  # cold: evaluates everything, saves the prompt
        assert (got, stats.prompt_eval_tokens, len(_files())) == (want_cold, 300, 1)
        got, stats = _greedy(eng, a)  # the same prompt from disk: the last token decoded
        assert (got, stats.prompt_eval_tokens) == (want_a, 1)
        got, stats = _greedy(eng, b)  # the shared prefix comes from disk
        assert (got, stats.prompt_eval_tokens, stats.prompt_tokens) == (want_b, 10, 300)
        assert len(_files()) == 1  # 10 new tokens are not worth an entry of their own
    finally:
        plain.model.close()
        eng.model.close()


def test_short_prompts_are_not_cached(engine: LlamaSession) -> None:
    _greedy(engine, _prompt(engine, 1, n=prompt_store.MIN_TOKENS - 1), n=2)
    assert _files() == []


def _rewrite_state(path: Path, change: Callable[[bytearray], None]) -> None:
    """Change the llama.cpp state bytes and fix our checksum: a file only llama.cpp can reject."""
    data = bytearray(path.read_bytes())
    length = struct.unpack("<I", data[-12:-8])[0]
    meta = json.loads(data[-12 - length : -12])
    state = data[: meta["state_bytes"]]
    change(state)
    meta["crc32"] = zlib.crc32(state)
    blob = json.dumps(meta).encode()
    path.write_bytes(bytes(state) + blob + struct.pack("<I", len(blob)) + b"INFERPC1")


def _too_many_cells(state: bytearray) -> None:
    n_tokens = struct.unpack("<I", state[8:12])[0]
    at = 12 + 4 * n_tokens + 4  # after the tokens and the stream count: the cell count
    state[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)


DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),  # llama.cpp would abort
    "bit flip": lambda p: _flip(p, p.stat().st_size // 2),
    "garbage": lambda p: p.write_bytes(os.urandom(5000)),
    "empty": lambda p: p.write_bytes(b""),
    "foreign key": lambda p: _set_meta(p, key="0" * 20),
    "stale state": lambda p: _rewrite_state(p, _too_many_cells),
}


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_meta(path: Path, **fields: object) -> None:
    data = path.read_bytes()
    length = struct.unpack("<I", data[-12:-8])[0]
    meta = {**json.loads(data[-12 - length : -12]), **fields}
    blob = json.dumps(meta).encode()
    path.write_bytes(data[: -12 - length] + blob + struct.pack("<I", len(blob)) + b"INFERPC1")


def _last_error(engine: LlamaSession) -> str | None:
    cache = engine.model.prompt_cache
    assert isinstance(cache, PromptCache)
    return cache.last_error


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_survived_and_replaced(engine: LlamaSession, damage: str) -> None:
    prompt = _prompt(engine, 3)
    want, _ = _greedy(engine, prompt)
    [entry] = _files()
    DAMAGE[damage](entry)
    got, stats = _greedy(engine, prompt)  # ignored: a full evaluation, the same answer
    assert (got, stats.prompt_eval_tokens) == (want, 300)
    assert _last_error(engine) is None
    assert _files() == [entry]  # replaced by a good one
    got, stats = _greedy(engine, prompt)
    assert (got, stats.prompt_eval_tokens) == (want, 1)


def test_a_bug_in_the_cache_is_only_recorded_unless_infer_debug(
    engine: LlamaSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infer.runtime.generation import prompt_cache

    def bug(*_args: object) -> None:
        raise TypeError("a bug")

    prompt = _prompt(engine, 5)
    want, _ = _greedy(engine, prompt)
    monkeypatch.setattr(prompt_cache, "read_meta", bug)  # restore
    got, stats = _greedy(engine, prompt)  # a full evaluation, the same answer
    assert (got, stats.prompt_eval_tokens) == (want, 300)
    assert _last_error(engine) == "restore: TypeError: a bug"
    monkeypatch.setenv("INFER_DEBUG", "1")
    with pytest.raises(TypeError, match="a bug"):
        _greedy(engine, prompt)
    assert engine.tokens == []  # nothing half-restored stays in the KV cache
    monkeypatch.delenv("INFER_DEBUG")
    monkeypatch.setattr(prompt_cache, "read_meta", prompt_store.read_meta)
    prompt_store.clear()
    monkeypatch.setattr(prompt_cache, "append_meta", bug)  # save
    got, _ = _greedy(engine, prompt)
    assert got == want and _last_error(engine) == "save: TypeError: a bug"
    monkeypatch.setenv("INFER_DEBUG", "1")
    with pytest.raises(TypeError, match="a bug"):
        _greedy(engine, prompt)
    assert not list(prompt_store.root().glob("*/.tmp-*"))  # its temp file is gone


def test_lru_eviction_keeps_the_total_under_the_limit(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = _load(tiny_model)
    _greedy(probe, _prompt(probe, 10), n=1)
    size = _files()[0].stat().st_size
    probe.model.close()
    prompt_store.clear()
    monkeypatch.setenv("INFER_PROMPT_CACHE_SIZE", str(int(size * 2.5)))  # room for two
    eng = _load(tiny_model)
    try:
        a, b, c = (_prompt(eng, seed) for seed in (10, 11, 12))
        _greedy(eng, a, n=1)
        [file_a] = _files()
        _greedy(eng, b, n=1)
        [file_b] = [f for f in _files() if f != file_a]
        now = time.time()
        os.utime(file_a, (now - 200, now - 200))
        os.utime(file_b, (now - 100, now - 100))
        assert _greedy(eng, a, n=1)[1].prompt_eval_tokens == 1  # a hit makes A the newest
        _greedy(eng, c, n=1)  # no room for a third: B, the least recently used, goes
        left = _files()
        assert file_a in left and file_b not in left and len(left) == 2
        assert sum(e.size for e in prompt_store.entries()) <= size * 2.5
    finally:
        eng.model.close()


def test_settings_are_checked(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert prompt_store.max_bytes() == 10**9
    cases = {"500MB": 500 * 10**6, "2G": 2 * 10**9, "1GiB": 2**30, "0": 0, "1234": 1234}
    assert {k: prompt_store.parse_size(k) for k in cases} == cases
    monkeypatch.setenv("INFER_PROMPT_CACHE_SIZE", "lots")
    for args in (("cache", "list"), ("run", str(tiny_model), "hi", "-n", "1")):
        result = run_infer(*args)
        assert result.returncode == 2 and b"INFER_PROMPT_CACHE_SIZE" in result.stderr
    assert run_infer("run", str(tiny_model), "hi", "-n", "1", "--no-prompt-cache").returncode == 0


# --- the command line ------------------------------------------------------------------------

TEXT = "abcdefgh" * 40  # the tiny vocabulary spells it byte by byte: 320+ tokens
RUN_FLAGS = ("-c", "1024", "-t", "1", "-n", "2", "--json", "--temp", "0")


def test_cli_writes_entries_unless_told_not_to_and_lists_and_clears_them(
    tiny_model: Path,
) -> None:
    args = ("run", str(tiny_model), TEXT, *RUN_FLAGS)
    off = run_infer(*args, "--no-prompt-cache")
    assert off.returncode == 0, off.stderr
    assert not prompt_store.root().exists()
    first = run_infer(*args)
    second = run_infer(*args)
    stats = [json.loads(r.stdout)["stats"] for r in (off, first, second)]
    assert [s["prompt_eval_tokens"] for s in stats] == [stats[0]["prompt_tokens"]] * 2 + [1]
    assert json.loads(off.stdout)["text"] == json.loads(first.stdout)["text"]

    listing = run_infer("cache", "list")
    lines = listing.stdout.decode().splitlines()
    assert lines[0].split() == ["MODEL", "TOKENS", "SIZE", "LAST", "USED"]
    assert lines[1].startswith(str(tiny_model)) and f" {stats[0]['prompt_tokens']} " in lines[1]
    assert lines[2].startswith("1 entry, ") and "(limit)" in lines[2]
    data = json.loads(run_infer("cache", "list", "--json").stdout)
    [entry] = data["entries"]
    assert entry["tokens"] == stats[0]["prompt_tokens"] and data["total_bytes"] == entry["size"]

    cleared = run_infer("cache", "clear")
    assert cleared.stdout.decode().startswith("removed 1 prompt cache entry")
    assert run_infer("cache", "list").stdout.decode().startswith("0 entries, 0 B of 1.0 GB")


def test_two_runs_at_once_leave_one_good_entry(tiny_model: Path) -> None:
    assert INFER
    cmd = [INFER, "run", str(tiny_model), TEXT, *RUN_FLAGS]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(_files()) == 1 and not list(prompt_store.root().glob("*/.*"))
    again = json.loads(run_infer(*cmd[1:]).stdout)
    assert again["stats"]["prompt_eval_tokens"] == 1
    assert again["text"] == json.loads(outs[0][0])["text"]


# --- the bundled SmolLM2: a real document, a real model ------------------------------------

DOCUMENT = " ".join(
    f"Section {i}. The lighthouse keeper on island {i} counted {i * 7} ships, logged the "
    f"weather as {['calm', 'windy', 'foggy', 'stormy'][i % 4]}, and fed the {i % 5 + 2} cats "
    "before writing a short letter to the harbour master about the lamp."
    for i in range(1, 15)
)
FIRST, OTHER = "How many cats are on island 3?", "What was the weather on island 6?"


def _ask(question: str, *flags: str) -> dict[str, Any]:
    result = run_infer(
        "run", "smollm2", question, "--temperature", "0", "-n", "16",
        "-t", "1", "--json", *flags, input=DOCUMENT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record: dict[str, Any] = json.loads(result.stdout)
    return record


def _in_process(questions: list[str]) -> list[str]:
    """The answers one process gives in a row, reusing its KV cache (no prompt cache)."""
    eng = load(resolve("smollm2"), LoadOptions(threads=1)).new_session()
    try:
        answers = []
        for q in questions:
            messages = [Message("user", DOCUMENT + "\n\n" + q)]
            gen = generate(eng, messages, GREEDY, GenerateOptions(max_tokens=16))
            answers.append("".join(gen))
        return answers
    finally:
        eng.model.close()


def test_bundled_model_answers_from_the_cache_as_from_memory(bundled_model: Path) -> None:
    cold, again, other = _ask(FIRST), _ask(FIRST), _ask(OTHER)  # three processes
    assert 500 < cold["stats"]["prompt_tokens"] < 800
    assert cold["stats"]["prompt_eval_tokens"] == cold["stats"]["prompt_tokens"]
    assert again["stats"]["prompt_eval_tokens"] == 1
    assert 0 < other["stats"]["prompt_eval_tokens"] < 30
    assert len(_files()) == 1
    # One process asked the same three questions in a row: identical answers.
    assert [r["text"] for r in (cold, again, other)] == _in_process([FIRST, FIRST, OTHER])


# --- restore and save on the engine interface (tests/fakes.py): no model needed ----------------


def test_restore_picks_the_longest_saved_prefix_for_any_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infer.runtime.generation.prompt_cache import PromptCache

    from .fakes import FakeModel

    monkeypatch.setenv("INFER_PROMPT_CACHE_MIN_TOKENS", "4")
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"weights")
    cache = PromptCache(ResolvedModel(weights, "m"))
    model = FakeModel()
    writer = model.new_context(2, 64, 64)
    for seq, text in enumerate([b"system: be brief. q1", b"system: be brief. question two"]):
        writer.add(seq, list(text), True)
        writer.decode()
        cache.save(writer, seq, list(text), len(text))
    assert len(list(cache.folder(writer).glob("*.kv"))) == 2

    reader = model.new_context(3, 64, 64)
    prompt = list(b"system: be brief. question three")
    cache.restore(reader, 2, prompt)  # into another sequence id than it was saved from
    assert reader.restores == [(2, len(b"system: be brief. question two"))]
    assert bytes(reader.tokens(2)) == b"system: be brief. question two"
    short = list(b"sys")  # below the minimum: not even looked up
    cache.restore(reader, 0, short)
    assert reader.tokens(0) == [] and len(reader.restores) == 1


def test_a_damaged_entry_is_skipped_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infer.runtime.generation.prompt_cache import PromptCache

    from .fakes import FakeModel

    monkeypatch.setenv("INFER_PROMPT_CACHE_MIN_TOKENS", "4")
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"weights")
    cache = PromptCache(ResolvedModel(weights, "m"))
    ctx = FakeModel().new_context(1, 64, 64)
    text = list(b"a long enough prompt")
    ctx.add(0, text, True)
    ctx.decode()
    cache.save(ctx, 0, text, len(text))
    [entry] = cache.folder(ctx).glob("*.kv")
    data = bytearray(entry.read_bytes())
    data[12 + 4 * 19] ^= 0x01  # the last token of the state changed: its CRC no longer matches
    entry.write_bytes(bytes(data))
    fresh = FakeModel().new_context(1, 64, 64)
    cache.restore(fresh, 0, [*text, 33])
    assert fresh.tokens(0) == [] and fresh.restores == []
    assert not entry.exists()
