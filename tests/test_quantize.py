"""`infer quantize`: real llama.cpp quantizations of the tiny generated model (and header-only
checks of the bundled SmolLM2), stored, resolved, listed, shown and removed like pulled models."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime.errors import Interrupted, NotEnoughSpaceError
from infer.runtime.models import blob_store
from infer.runtime.models import quantized_store as quantized
from infer.runtime.models.gguf import read_header
from infer.runtime.models.quantized_store import TYPES
from infer.runtime.tools.quantize import ftype_value, plan, quantize, run

from .conftest import run_infer
from .fake_hub import FakeHub, tiny_gguf


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "Traceback" not in err and "\x1b[" not in err  # not a TTY: plain lines
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int, *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("infer: error: "), err
    for word in words:
        assert word in line, line
    return line


def listing() -> dict[str, Any]:
    return json.loads(ok(run_infer("list", "--json")))


def nothing_left_behind() -> None:
    assert quantized.models() == []
    assert list(blob_store.tmp_dir().glob("*")) == []
    assert not list(blob_store.blobs_dir().glob("*"))


def test_every_type_names_a_distinct_llama_ftype() -> None:
    from infer.runtime.llama.bindings import bindings

    values = {name: ftype_value(bindings(), name) for name in TYPES}
    assert len(set(values.values())) == len(TYPES)
    assert (values["F32"], values["Q8_0"], values["Q4_K_M"], values["Q6_K"]) == (0, 7, 15, 18)


def test_quantized_model_runs_lists_shows_and_is_removed(tiny_model: Path) -> None:
    result = run_infer("quantize", str(tiny_model), "q8_0", "--threads", "1")
    assert ok(result).startswith("quantized tiny:Q8_0 (470.0 kB → 131.7 kB, ")
    assert f"quantizing {tiny_model} (F32, 470.0 kB) to tiny:Q8_0" in result.stderr.decode()
    ok(run_infer("run", "tiny:Q8_0", "hi", "-n", "4", "--temperature", "0"))

    data = listing()
    [row] = data["models"]
    assert (row["name"], row["quantization"], row["complete"]) == ("tiny:Q8_0", "Q8_0", True)
    assert row["quantized_from"] == str(tiny_model.resolve())
    assert Path(row["path"]).stat().st_size == row["size"] == data["total_bytes"]
    assert read_header(row["path"]).quantization == "Q8_0"  # the file says so, not just infer

    info = json.loads(ok(run_infer("show", "tiny:Q8_0", "--json")))
    assert info["quantization"] == "Q8_0" and info["source"]["type"] == "quantized"
    assert info["source"]["sha256"] == row["files"][0]["sha256"]
    assert "source          quantized from " in ok(run_infer("show", "tiny:q8_0"))

    assert ok(run_infer("rm", "tiny:q8_0")).startswith("removed tiny:Q8_0 (131.7 kB freed)")
    assert listing()["models"] == [] and listing()["total_bytes"] == 0
    one_line_error(run_infer("run", "tiny:Q8_0", "hi"), 1, "unknown model 'tiny:Q8_0'")


def test_k_quants_of_short_rows_fall_back_and_still_run(tiny_model: Path) -> None:
    """n_embd 64 is not a multiple of the K-quants' 256-element blocks: llama.cpp picks a
    nearby 32-block type for those tensors, says so, and the model works."""
    import threading

    from infer.runtime import SamplingParams, load, resolve

    result = quantize(str(tiny_model), "Q4_K_M", threads=1)
    assert result.fallbacks > 0
    header = read_header(quantized.model_path(result.model))
    assert header.quantization == "Q4_K_M"
    assert {t.type for t in header.tensors if len(t.shape) == 2} <= {6, 8}  # Q5_0, Q8_0
    engine = load(resolve("tiny:Q4_K_M"))
    try:
        prompt = engine.with_bos(engine.tokenize("hi", False))
        greedy = SamplingParams(temperature=0)
        gen = engine.new_session().generate(prompt, greedy, threading.Event(), ignore_eog=True)
        pieces = [p for _, p in zip(range(4), gen, strict=False)]
    finally:
        engine.close()
    assert len(pieces) == 4


def test_low_bit_sources_need_allow_requantize(tiny_model: Path) -> None:
    quantize(str(tiny_model), "Q4_0", threads=1)
    line = one_line_error(run_infer("quantize", "tiny:Q4_0", "Q8_0"), 2, "--allow-requantize")
    assert "already quantized (Q4_0)" in line
    refused = run_infer("quantize", "smollm2", "Q4_K_M")  # the bundled Q4_1, header only
    one_line_error(refused, 2, "smollm2", "Q4_1", "--allow-requantize")
    assert [m.name for m in quantized.models()] == ["tiny:Q4_0"]

    out = ok(run_infer("quantize", "tiny:Q4_0", "Q8_0", "--allow-requantize", "-t", "1"))
    assert out.startswith("quantized tiny:Q8_0 ")
    # An 8-bit source is not "low-bit": no flag needed to go down from Q8_0.
    assert ok(run_infer("quantize", "tiny:Q8_0", "Q4_1", "-t", "1")).startswith(
        "quantized tiny:Q4_1"
    )
    q4_1 = quantized.find("tiny:q4_1")
    assert q4_1 is not None and read_header(quantized.model_path(q4_1)).quantization == "Q4_1"


def test_unknown_type_is_a_usage_error_listing_the_valid_ones() -> None:
    line = one_line_error(run_infer("quantize", "no-such-model", "Q9_K"), 2, "'Q9_K'")
    assert "Q8_0" in line and "Q4_K_M" in line and "F16" in line


@pytest.fixture
def hub_env(tmp_path: Path) -> Iterator[tuple[FakeHub, dict[str, str]]]:
    with FakeHub() as hub:
        files = {"tiny-F16.gguf": tiny_gguf(0), "tiny-Q4_K_M.gguf": tiny_gguf(1)}
        hub.add_repo("me/tiny-GGUF", files, license="apache-2.0")
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}  # fmt: skip
        yield hub, env


def test_a_hub_model_quantized_runs_offline_as_repo_colon_type(
    hub_env: tuple[FakeHub, dict[str, str]],
) -> None:
    hub, env = hub_env
    ok(run_infer("pull", "me/tiny-GGUF:F16", env=env))
    ok(run_infer("pull", "me/tiny-GGUF:Q4_K_M", env=env))
    hub.requests.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    out = ok(run_infer("quantize", "me/tiny-GGUF:F16", "Q8_0", "-t", "1", env=offline))
    assert out.startswith("quantized me/tiny-GGUF:Q8_0 ")
    ok(run_infer("run", "me/tiny-GGUF:q8_0", "hi", "-n", "3", env=env))  # online: no pull
    info = json.loads(ok(run_infer("show", "me/tiny-GGUF:Q8_0", "--json", env=env)))
    assert info["license"] == "apache-2.0" and info["source"]["from"] == "me/tiny-GGUF:F16"
    assert hub.requests == []
    # A name the Hub cache already has stays the Hub's: refused, not shadowed.
    taken = run_infer("quantize", "me/tiny-GGUF:F16", "Q4_K_M", env=offline)
    one_line_error(taken, 2, "already in the cache", "infer rm me/tiny-GGUF:Q4_K_M")
    ok(run_infer("rm", "me/tiny-GGUF:Q8_0", env=env))
    names = sorted(m["name"] for m in listing()["models"])
    assert names == ["me/tiny-GGUF:F16", "me/tiny-GGUF:Q4_K_M"]


def test_a_failing_quantizer_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "no-such-architecture")
    w.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    one_line_error(run_infer("quantize", str(path), "Q8_0"), 1, "could not quantize odd.gguf")
    nothing_left_behind()


def test_an_interrupted_quantization_leaves_nothing(tiny_model: Path) -> None:
    class CtrlC:
        def tensor(self, index: int, total: int, name: str) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the quantizer runs

    stale = blob_store.tmp_dir() / f"{2**22 + 7}-{'0' * 16}.part"  # a dead process's
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a model")
    with pytest.raises(Interrupted):
        run(plan(str(tiny_model), "Q8_0"), threads=1, progress=CtrlC())
    nothing_left_behind()


def test_not_enough_disk_space_is_checked_first(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    usage = shutil.disk_usage(os.getcwd())
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=10 << 20))
    with pytest.raises(NotEnoughSpaceError, match=r"needs about 0\.5 MB, 10\.5 MB free"):
        plan(str(tiny_model), "F32")
