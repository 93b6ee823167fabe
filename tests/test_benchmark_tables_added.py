"""The renderers of benchmarks/bench_tables_added.py on the shapes their scripts write, for the
scripts whose runs need llama.cpp's test suite or llama-server (not run here): the shapes come
from the scripts' own summarising functions where they have one, so a renderer out of step
with its script fails here before anyone runs the script."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_tables_added  # noqa: E402, F401  (registers the renderers)
from bench_tables import RENDERERS  # noqa: E402


def record(script: str, results: Any, smoke: bool = False) -> dict[str, Any]:
    return {"script": script, "date": "2026-12-07T10:00:00Z", "machine": "CPU, 2 CPUs",
            "commit": "abc1234", "settings": {"rounds": 3}, "smoke": smoke,
            "results": results}  # fmt: skip


def test_llamacpp_suite_renders_what_its_report_function_returns() -> None:
    import llamacpp_suite

    llama = {
        "test_basic.py::test_health": "passed",
        "test_basic.py::test_server_slots": "passed",
        "test_lora.py::test_lora[1]": "passed",
        "test_basic.py::test_broken": "failed",
    }
    infer = {"test_basic.py::test_health": "passed", "test_basic.py::test_server_slots": "failed"}
    summary = llamacpp_suite.report(llama, infer)
    text = RENDERERS["llamacpp_suite"](record("llamacpp_suite.py", {**summary, "outcomes": {}}))
    assert "| `test_basic.py` | 2 | 1 |" in text
    assert "| `test_lora.py` | 1 | 0 |" in text
    assert "| **all** | **3** | **1** (33%) |" in text
    assert "| `test_basic.py::test_server_slots` | failed | llama-server-only | the /slots " in text
    assert "| `test_lora.py::test_lora[1]` | not run | not-run |" in text


def test_llamacpp_suite_reuses_outcomes_of_either_shape(tmp_path: Path) -> None:
    import llamacpp_suite

    outcomes = {"llama-server": {"a.py::t": "passed"}, "infer": {"a.py::t": "failed"}}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"script": "llamacpp_suite.py", "outcomes": outcomes}))
    new.write_text(json.dumps(record("llamacpp_suite.py", {"outcomes": outcomes})))
    assert llamacpp_suite.outcomes_in(old) == outcomes == llamacpp_suite.outcomes_in(new)


def test_serve_draft_renders_what_its_summarise_function_returns() -> None:
    import serve_draft

    samples = {"infer plain": [100.0, 110.0], "infer lookup": [150.0, 160.0],
               "llama-server plain": [120.0], "llama-server lookup": [90.0]}  # fmt: skip
    answers = {"infer plain": ["a"], "infer lookup": ["a"], "llama-server plain": ["b"],
               "llama-server lookup": ["c"]}  # fmt: skip
    report = serve_draft.summarise(samples, answers)
    text = RENDERERS["serve_draft"](record("serve_draft.py", report, smoke=True))
    assert text.startswith("**A smoke run**")
    assert "| infer | lookup | 155.0 (± 7.1, n=2) | **1.48×** | yes |" in text
    assert "| llama-server | lookup | 90.0 (± 0.0, n=1) | **0.75×** | **no** |" in text
    assert "| infer | plain | 105.0 (± 7.1, n=2) | - | - |" in text


def test_workloads_renders_the_shape_workloads_py_writes() -> None:
    # benchmarks/workloads.py (branch fork): results[workload][server], as its main() builds it
    def side(total: list[float], ttft: float, stat: str) -> dict[str, Any]:
        return {"total_s": statistics.median(total), "total_rounds": total, "ttft": ttft,
                "ttft_stat": stat, "ttft_p50": 0.25, "ttft_n": 48,
                "prompt_tokens_mean": 2104.5}  # fmt: skip

    results = {
        w: {"infer": side([2.0, 2.2, 2.1], 0.5, "p95"),
            "llama-server": side([4.0, 4.2], 1.5, "max")}
        for w in ("chat", "document", "restart")
    }  # fmt: skip
    text = RENDERERS["workloads"](record("workloads.py", results))
    assert (
        "| (c) (b) after a server restart | 2.10 (± 0.10, n=3) | 4.10 (± 0.14, n=2) | 0.512 |"
        in text
    )
    assert "| 0.500 (p95, n=48) / 1.500 (max, n=48) | 2,104 / 2,104 |" in text
