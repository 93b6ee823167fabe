"""The benchmark tables in the READMEs and docs are rendered from benchmarks/results/*.json by
benchmarks/render.py, never typed: a table that differs from its file fails here, and so does a
script that writes no results file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RENDER = BENCH / "render.py"
HELPERS = {"common.py", "render.py", "bench_tables.py", "bench_lines.py", "bench_tables_added.py",
           "soak_mix.py"}  # fmt: skip
HELPERS |= {"bench_tables_determinism.py", "determinism_cost.py"}  # determinism.py's
MARKER = re.compile(r"^<!-- table:([\w.-]+)(?:/[\w.-]+)? -->$", re.M)


def render(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RENDER), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def documents(root: Path) -> list[Path]:
    return [root / "README.md", root / "benchmarks" / "README.md", *(root / "docs").glob("*.md")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the documents and results, for render.py to find stale and rewrite."""
    for doc in documents(ROOT):
        target = tmp_path / doc.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(doc, target)
    shutil.copytree(BENCH / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def test_the_tables_match_the_results_files() -> None:
    result = render("--check")
    assert result.returncode == 0, result.stdout + result.stderr  # run benchmarks/render.py


def test_a_changed_figure_makes_the_check_fail_until_rendered(tree: Path) -> None:
    results = tree / "benchmarks" / "results" / "vs_llamacpp.json"
    record = json.loads(results.read_text())
    record["results"]["generation"]["ratio_of_medians"] = 0.123456
    results.write_text(json.dumps(record))
    stale = render("--check", root=tree)
    assert stale.returncode == 1
    assert "+| generation (tg128) tok/s |" in stale.stdout and "| 0.123 |" in stale.stdout
    assert "**0.12×**" in stale.stdout  # the README's sentence comes from the same file
    assert stale.stderr.strip().endswith("run python benchmarks/render.py")
    assert "README.md" in stale.stderr and "docs/bench.md" in stale.stderr

    assert render(root=tree).returncode == 0
    assert "**0.12×**" in (tree / "README.md").read_text()
    assert render("--check", root=tree).returncode == 0


def test_a_hand_edit_inside_a_table_is_undone(tree: Path) -> None:
    doc = tree / "benchmarks" / "README.md"
    text = doc.read_text()
    start = text.index("<!-- table:vs_llamacpp -->")
    edited = text[:start] + text[start:].replace("| ", "| 9", 1)
    doc.write_text(edited)
    assert render("--check", root=tree).returncode == 1
    assert render(root=tree).returncode == 0 and doc.read_text() == text


def test_a_new_scripts_file_renders_as_a_generic_table(tree: Path) -> None:
    results = tree / "benchmarks" / "results"
    record = {
        "script": "newthing.py",
        "date": "2026-12-07T10:00:00Z",
        "machine": "Test CPU, 2 CPUs",
        "commit": "abc1234",
        "settings": {"rounds": 3},
        "results": {"infer": {"tps": 101.25, "ok": True}, "llama.cpp": {"tps": 99.5}},
    }
    (results / "newthing.json").write_text(json.dumps(record))
    unshown = render("--check", root=tree)
    assert unshown.returncode == 0 and "newthing" in unshown.stderr  # said, not failed
    doc = tree / "docs" / "bench.md"
    doc.write_text(doc.read_text() + "\n<!-- table:newthing -->\n<!-- /table:newthing -->\n")
    assert render(root=tree).returncode == 0
    text = doc.read_text()
    assert "commit abc1234 (rounds 3) — `benchmarks/newthing.py`." in text
    assert "| infer | 101.250 | yes |" in text and "| llama.cpp | 99.500 | - |" in text


def test_a_missing_results_file_names_the_script_that_writes_it(tree: Path) -> None:
    (tree / "benchmarks" / "results" / "startup.json").unlink(missing_ok=True)
    assert render(root=tree).returncode == 0
    assert (
        "*No results yet: `python benchmarks/startup.py` writes `startup.json`.*"
        in (tree / "docs" / "bench.md").read_text()
    )


def test_a_file_of_an_older_shape_is_an_error_not_a_table(tree: Path) -> None:
    (tree / "benchmarks" / "results" / "serve.json").write_text('{"results": {"1": {}}}')
    result = render(root=tree)
    assert result.returncode == 1
    assert "cannot render serve.json (serve): KeyError" in result.stderr


def test_every_table_names_a_script_that_exists() -> None:
    """A table names a script, or a results file a script wrote under another name (`--json`:
    another run of it, e.g. workloads_slots.json), as the file's "script" says."""
    names = {m for doc in documents(ROOT) for m in MARKER.findall(doc.read_text())}
    assert names  # the tables are there at all

    def script(name: str) -> str:
        results = BENCH / "results" / f"{name}.json"
        if (BENCH / f"{name}.py").exists() or not results.exists():
            return f"{name}.py"
        return str(json.loads(results.read_text())["script"])

    missing = sorted(n for n in names if not (BENCH / script(n)).exists())
    assert missing == []


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)
)
def test_every_benchmark_writes_a_results_file(script: str) -> None:
    # common.add_json_arg: `--json FILE`, by default benchmarks/results/NAME.json, what render.py
    # reads; --help shows it (and runs nothing else)
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True, text=True, timeout=60, check=False, cwd=BENCH,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert f"(default: benchmarks/results/{script[:-3]}.json)" in help_text, help_text[-300:]


# The shapes perplexity.py, batched.py and rpc.py write (their runs need llama.cpp tools the
# suite does not build): their renderers must take them, before anyone runs the scripts.
PPL = {"ppl": 42.19601, "stderr": 2.81022, "seconds": 1.0, "tokens": 5420, "chunks": 10}
SHAPES: dict[str, Any] = {
    "perplexity": [
        {"model": "smollm2", "size": 98_400_000, "quantize": None, "infer": PPL,
         "llama_cpp": {**PPL, "ppl": 42.1960}, "rel_diff": 1e-7, "same_to_4_decimals": True},
        {"model": "smollm2:Q8_0", "size": 144_800_000,
         "quantize": {"name": "smollm2:Q8_0", "path": "/x", "size": 1, "seconds": 0.9},
         "infer": PPL, "llama_cpp": {**PPL, "ppl": 42.1970}, "rel_diff": 2e-5,
         "same_to_4_decimals": False},
    ],
    "batched": {
        "1": {"llama": [136.2, 130.0], "infer": [136.4, 131.0], "total": [89.4],
              "sequential": [94.9]},
        "8": {"llama": [194.7], "infer": [190.2], "total": [116.4], "sequential": [89.7]},
    },
    "rpc": {
        "speed": {
            name: [{"pp": 298.4, "tg": tg, "ttft_ms": 429.0, "load_s": 0.22, "llama_pp": 299.6,
                    "llama_tg": 138.7, "split": "", "layers_total": 31}]
            for name, tg in (("local", 148.2), ("1 server", 127.9), ("2 servers", 92.9))
        },
        "traffic": {"1 server": {"per_generated_token": 204540.4, "per_prompt_token": 2883.0,
                                 "load": 105_900_000.0}},
    },
}  # fmt: skip
SHOWN = {
    "perplexity": ["| smollm2 | 98.4 MB | - | 42.1960 ± 2.8102 | 42.1960 ± 2.8102 | yes |",
                   "| smollm2:Q8_0 | 144.8 MB | 0.9 s | 42.1960 ± 2.8102 | 42.1970 ± 2.8102 "
                   "| **no** |"],
    "batched": ["| 8 | 194.7 (± 0.0, n=1) | 190.2 (± 0.0, n=1) | 0.977 |", "| 1.30× |"],
    "rpc": ["| 2 servers | 298.4 | 92.9 | 429 | 0.22 | 299.6 | 138.7 | 0.996 | 0.670 | 0.63× |",
            "| 1 server | 204,540 | 2,883 | 105.9 MB |"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_scripts_not_run_here_render(tree: Path, name: str) -> None:
    record = {"script": f"{name}.py", "date": "2026-12-07T10:00:00Z", "machine": "CPU, 2 CPUs",
              "commit": "abc1234", "settings": {}, "results": SHAPES[name]}  # fmt: skip
    (tree / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(record))
    result = render(root=tree)
    assert result.returncode == 0, result.stderr
    text = (tree / "benchmarks" / "README.md").read_text()
    for line in SHOWN[name]:
        assert line in text, line
