"""The load probe (runtime/llama/probe.py): a model file llama.cpp aborts on is loaded in a child
process first, so the caller gets an error instead of losing its process. Real files, a real
child: a tiny GGUF that loads, and one whose vocabulary llama.cpp GGML_ASSERTs on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infer.runtime.errors import EngineError
from infer.runtime.llama import probe
from infer.runtime.params import LoadOptions, LoraAdapter

from .tiny_gguf import write_tiny_gguf


def duplicated_vocabulary(path: Path) -> Path:
    """A tiny GGUF with two tokens of the same text: llama.cpp's vocabulary loader asserts."""
    import gguf

    add_tokens = gguf.GGUFWriter.add_token_list

    def duplicated(self: gguf.GGUFWriter, tokens: list[bytes]) -> None:
        tokens = list(tokens)
        tokens[5] = tokens[6]
        add_tokens(self, tokens)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf.GGUFWriter, "add_token_list", duplicated)
        return write_tiny_gguf(path)


@pytest.fixture(autouse=True)
def fresh_verdicts() -> None:
    probe._verdicts.clear()


def counting(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths each real probe run was started for."""
    runs: list[Path] = []
    real = probe.run_probe

    def run(path: Path, options: LoadOptions) -> probe.ProbeFailed | None:
        runs.append(path)
        return real(path, options)

    monkeypatch.setattr(probe, "run_probe", run)
    return runs


def test_a_file_that_loads_passes_and_is_probed_once(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = counting(monkeypatch)
    probe.check_loadable(tiny_model, LoadOptions())
    probe.check_loadable(tiny_model, LoadOptions())
    assert runs == [tiny_model]


def test_an_abort_in_the_child_is_the_callers_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = duplicated_vocabulary(tmp_path / "dup.gguf")
    runs = counting(monkeypatch)
    for _ in range(2):  # the verdict is kept: the second call starts no child
        with pytest.raises(EngineError) as e:
            probe.check_loadable(bad, LoadOptions())
        message = str(e.value)
        assert "while loading dup.gguf" in message and "GGML_ASSERT" in message, message
        assert not message.startswith("infer: error"), message
    assert len(runs) == 1
    # The same path with new contents (a new pull, a repair) is probed again.
    write_tiny_gguf(bad)
    os.utime(bad, ns=(1, 1))
    probe.check_loadable(bad, LoadOptions())
    assert len(runs) == 2


def test_a_child_ended_by_a_signal_says_which_and_what_was_thrown() -> None:
    stderr = (
        b"terminate called after throwing an instance of 'std::out_of_range'\n"
        b"  what():  vector::_M_range_check\n"
    )
    reason = probe.reason_of(-6, stderr, Path("m.gguf"))
    assert reason == (
        "llama.cpp crashed (SIGABRT) while loading m.gguf: what():  vector::_M_range_check"
    )
    assert probe.reason_of(-11, b"", Path("m.gguf")).endswith("(SIGSEGV) while loading m.gguf")
    said = probe.reason_of(1, b"noise\ninfer: error: llama.cpp failed: x\n", Path("m.gguf"))
    assert said == "llama.cpp failed: x"


def test_a_load_refused_cleanly_is_left_to_the_callers_own_load(tiny_model: Path) -> None:
    """A bad adapter is an OptionError in the child: the probe passes, so that the caller's load
    raises it with its own type (a usage error, exit 2), not as a failed probe."""
    options = LoadOptions(lora=(LoraAdapter(str(tiny_model)),))
    assert probe.run_probe(tiny_model, options) is None


def test_an_embedding_model_is_probed_through_its_embedder(tmp_path: Path) -> None:
    from .tiny_gguf import write_tiny_bert_gguf

    assert probe.run_probe(write_tiny_bert_gguf(tmp_path / "bert.gguf"), LoadOptions()) is None
