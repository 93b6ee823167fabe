"""`infer bench`: argument handling, the JSON schema and the history, on the tiny GGUF. Timings
are never asserted here (benchmarks/ measures speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infer.runtime.errors import UsageError
from infer.runtime.models.resolve import resolve
from infer.runtime.tools.bench import BenchPoint, history_path, parse_list, run_bench, sweep

from .conftest import run_infer

SPREAD_KEYS = {"median", "mean", "stdev", "min", "max", "samples"}
RESULT_KEYS = {
    "model", "model_path", "model_size_bytes", "backend", "gpu_offload_supported", "threads",
    "gpu_layers", "layers_total", "ctx_size", "batch_size", "n_prompt", "n_gen", "repetitions",
    "load_s", "prompt_tokens_per_s", "ttft_s", "generate_tokens_per_s", "system_info", "split",
    "timestamp", "infer_version", "llama_cpp_python_version",
}  # fmt: skip
TINY = ("-p", "8", "-n", "4", "-c", "256")  # llama.cpp rounds a context up to 256


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int, *words: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert result.stdout == b""
    assert err.count("\n") == 1 and err.startswith("infer: error: "), err
    for word in words:
        assert word in err, err


def bench_json(model: Path, *args: str) -> list[dict]:
    result = run_infer("bench", str(model), *args, "--json")
    assert result.returncode == 0, result.stderr.decode()
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


# --- sweeps and counts, without a model ---


def test_parse_list_reads_comma_lists() -> None:
    assert parse_list("1,2, 4", "--threads", 1) == [1, 2, 4]
    assert parse_list("2,2,1", "--threads", 1) == [2, 1]  # each point once
    assert parse_list(None, "--threads", 1) == [None]  # not given: infer's default
    assert parse_list("-1,0", "--gpu-layers", -1) == [-1, 0]


@pytest.mark.parametrize("text", ["a", "1,,2", "1.5", "2;4", " , "[1:]])
def test_parse_list_rejects_non_integers(text: str) -> None:
    with pytest.raises(UsageError, match="--threads"):
        parse_list(text, "--threads", 1)


def test_parse_list_rejects_values_below_the_minimum() -> None:
    with pytest.raises(UsageError, match=">= 1"):
        parse_list("2,0", "--threads", 1)
    with pytest.raises(UsageError, match=">= -1"):
        parse_list("-2", "--gpu-layers", -1)


def test_sweep_is_every_combination_last_option_fastest() -> None:
    points = sweep([1, 2], [None], [64, 128], [None])
    assert points == [
        BenchPoint(1, None, 64, 512), BenchPoint(1, None, 128, 512),
        BenchPoint(2, None, 64, 512), BenchPoint(2, None, 128, 512),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("-t", "1,x"), ("--threads", "1,x")),
        (("--gpu-layers", "-5"), ("--gpu-layers", ">= -1")),
        (("-c", "8"), ("--ctx-size", ">= 16")),
        (("-b", "0"), ("--batch-size",)),
        (("-r", "0"), ("-r",)),
        (("-p", "0", "-n", "0"), ("nothing to measure",)),
        (("-n", "-3"), ("-n",)),
        (("-p", "600", "-n", "8", "-c", "256"), ("--ctx-size", "-p 600", "256 tokens")),
    ],
)
def test_invalid_values_are_one_line_usage_errors(
    tiny_model: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    one_line_error(run_infer("bench", str(tiny_model), "-r", "1", *args), 2, *words)


def test_no_model_is_a_usage_error() -> None:
    one_line_error(run_infer("bench"), 2, "MODEL", "--history")


def test_unknown_model_is_a_runtime_error() -> None:
    one_line_error(run_infer("bench", "no-such-model-xyz"), 1, "no-such-model-xyz")


# --- measurements on the tiny GGUF ---


def test_json_schema(tiny_model: Path) -> None:
    (result,) = bench_json(tiny_model, *TINY, "-r", "2", "-t", "1", "-b", "4")
    assert set(result) == RESULT_KEYS
    assert result["model_path"] == str(tiny_model)
    assert result["model_size_bytes"] == tiny_model.stat().st_size
    assert (result["threads"], result["ctx_size"], result["batch_size"]) == (1, 256, 4)
    assert (result["n_prompt"], result["n_gen"], result["repetitions"]) == (8, 4, 2)
    assert result["layers_total"] == 3  # 2 blocks + the output layer
    assert 0 <= result["gpu_layers"] <= result["layers_total"]
    assert isinstance(result["gpu_offload_supported"], bool)
    assert result["backend"] and "CPU" in result["system_info"]
    for key in ("load_s", "prompt_tokens_per_s", "ttft_s", "generate_tokens_per_s"):
        spread = result[key]
        assert set(spread) == SPREAD_KEYS, key
        assert len(spread["samples"]) == 2, key
        assert all(s > 0 for s in spread["samples"]), key
        assert spread["min"] <= spread["median"] <= spread["max"], key


def test_skipped_tests_are_null(tiny_model: Path) -> None:
    (result,) = bench_json(tiny_model, "-p", "0", "-n", "3", "-c", "256", "-r", "1")
    assert result["prompt_tokens_per_s"] is None and result["ttft_s"] is None
    assert result["generate_tokens_per_s"]["samples"][0] > 0
    (result,) = bench_json(tiny_model, "-p", "5", "-n", "0", "-c", "256", "-r", "1")
    assert result["generate_tokens_per_s"] is None
    assert result["ttft_s"]["median"] > 0


def test_sweeps_give_one_result_per_combination(tiny_model: Path) -> None:
    results = bench_json(tiny_model, "-p", "4", "-n", "2", "-r", "1", "-t", "1,2", "-c", "256,512")
    got = [(r["threads"], r["ctx_size"]) for r in results]
    assert got == [(1, 256), (1, 512), (2, 256), (2, 512)]


def test_table_output_names_backend_and_offload(tiny_model: Path) -> None:
    result = run_infer("bench", str(tiny_model), *TINY, "-r", "1", "-t", "1")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert "backend: " in lines[0] and "GPU offload: " in lines[0]
    assert (
        lines[1].startswith("| threads | gpu layers |") and "pp8" in lines[1] and "tg4" in lines[1]
    )
    assert re.match(r"\| 1 \| [0-3]/3 \| 256 \| 256 \| ", lines[3]), lines[3]
    assert len(lines) == 4


def test_runtime_api_without_the_cli(tiny_model: Path) -> None:
    results = list(run_bench(resolve(str(tiny_model)), [BenchPoint(1, None, 256)], 6, 3, 1))
    assert len(results) == 1
    record = json.loads(json.dumps(results[0].as_dict()))
    assert record["n_prompt"] == 6 and record["prompt_tokens_per_s"]["samples"][0] > 0


# --- history ---


def test_results_are_appended_to_the_history(tiny_model: Path, infer_home: Path) -> None:
    bench_json(tiny_model, *TINY, "-r", "1")
    bench_json(tiny_model, *TINY, "-r", "1", "-t", "1,2")
    lines = history_path().read_text().splitlines()
    assert history_path().is_relative_to(infer_home / "state")
    assert len(lines) == 3
    assert [json.loads(line)["threads"] for line in lines[1:]] == [1, 2]

    shown = run_infer("bench", "--history", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == [json.loads(line) for line in lines]

    table = run_infer("bench", "--history")
    assert table.returncode == 0 and table.stderr == b""
    rows = table.stdout.decode().splitlines()
    assert rows[0].startswith("| date (UTC) | model |")
    assert len(rows) == 2 + 3
    assert all(str(tiny_model) in row and "| 8/4 |" in row for row in rows[2:])


def test_history_when_empty_and_with_a_bad_line(infer_home: Path) -> None:
    empty = run_infer("bench", "--history")
    assert empty.returncode == 0 and empty.stdout == b""
    assert b"no benchmark results yet" in empty.stderr
    assert json.loads(run_infer("bench", "--history", "--json").stdout) == []

    history_path().parent.mkdir(parents=True)
    history_path().write_text('{"not": "a result"}\nnot json\n')
    shown = run_infer("bench", "--history")
    assert shown.returncode == 0
    assert b"1 unreadable line" in shown.stderr and b"missing fields" in shown.stderr


def test_bench_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from infer.cli.app import main\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('llama_cpp', 'llama_cpp.llama_cpp', 'huggingface_hub',"
        " 'rich.progress', 'numpy') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1] == "HEAVY:"


def test_backends_are_read_from_llama_cpp_system_info() -> None:
    from infer.runtime.llama.engine import backends

    assert backends("CPU : SSE3 = 1 | AVX2 = 1 | ") == ["CPU"]
    cuda = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX = 1 | "
    assert backends(cuda) == ["CUDA", "CPU"]
    assert backends("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ") == ["Metal", "CPU"]
    assert backends("") == ["CPU"]
    assert "CPU" in backends()  # this build
