"""`infer run --batch`: the same answers as one-at-a-time runs, in input order, per-line errors
isolated. In-process tests on the tiny GGUF; end to end on the bundled SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime import GenerateOptions, LoadOptions, Message, SamplingParams, generate, load
from infer.runtime.api import prompt_tokens
from infer.runtime.errors import InputError, Interrupted
from infer.runtime.generation.batch import BatchDecoder, BatchRequest, BatchResult, BatchStats
from infer.runtime.llama.model import LlamaModel
from infer.runtime.models.resolve import resolve

from .conftest import INFER, run_infer

GREEDY = SamplingParams(temperature=0)
PROMPTS = ["What is 2+2?", "Name a colour.", "Write a haiku about rain.", "Say hi.", "Who wrote?"]
PIRATE = "You are a pirate."
N = "16"


# --- the runtime, on the tiny random model -----------------------------------------------------


@pytest.fixture()
def tiny(tiny_model: Path) -> Iterator[LlamaModel]:
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=256))
    assert isinstance(model, LlamaModel)
    yield model
    model.close()


TINY_PROMPTS = ["hello", "what?", "x" * 40, "a", "fox"]  # the tiny vocabulary has no "▁"


def one_at_a_time(engine: LlamaModel, sampling: SamplingParams, options: GenerateOptions):
    answers, session = [], engine.new_session()
    for text in TINY_PROMPTS:
        session.reset()  # as a fresh `infer run`
        gen = generate(session, [Message("user", text)], sampling, options)
        list(gen)
        answers.append((gen.text, gen.stats.finish_reason, gen.stats.generated_tokens))
    session.close()
    return answers


def batched(
    engine: LlamaModel, sampling: SamplingParams, options: GenerateOptions, parallel: int
) -> list[tuple[str, str, int]]:
    requests = [
        BatchRequest(i, prompt_tokens(engine, [Message("user", text)]), sampling, options)
        for i, text in enumerate(TINY_PROMPTS)
    ]
    with BatchDecoder.for_requests(engine, requests, parallel, ctx_size=256) as decoder:
        results = sorted(decoder.run(requests), key=lambda r: r.index)
    return [(r.text, r.finish_reason, r.generated_tokens) for r in results]


@pytest.mark.parametrize("parallel", [1, 3])
def test_greedy_batch_equals_one_at_a_time(tiny: LlamaModel, parallel: int) -> None:
    limited = GenerateOptions(max_tokens=24)
    assert batched(tiny, GREEDY, limited, parallel) == one_at_a_time(tiny, GREEDY, limited)
    # No limit: answers run into the 256-token window ("context") or end ("stop"); invalid
    # UTF-8 from random bytes comes out as the same replacement characters.
    unlimited = one_at_a_time(tiny, GREEDY, GenerateOptions())
    assert {reason for _, reason, _ in unlimited} >= {"context"}
    assert batched(tiny, GREEDY, GenerateOptions(), parallel) == unlimited


def test_stop_strings_as_one_at_a_time(tiny: LlamaModel) -> None:
    plain = one_at_a_time(tiny, GREEDY, GenerateOptions(max_tokens=24))
    stop = plain[2][0][6:8]  # text that occurs in the third answer
    options = GenerateOptions(max_tokens=24, stop=[stop])
    expected = one_at_a_time(tiny, GREEDY, options)
    assert expected[2][1] == "stop" and stop not in expected[2][0]
    assert batched(tiny, GREEDY, options, 3) == expected


def test_seeded_sampling_is_reproducible(tiny: LlamaModel) -> None:
    sampling = SamplingParams(temperature=1.0, seed=3)
    options = GenerateOptions(max_tokens=24)
    # One at a time in the batch decoder is the same computation as `infer run`. Several at a
    # time round matrix products differently, so sampled answers may differ from those, but a
    # batch run is repeatable.
    assert batched(tiny, sampling, options, 1) == one_at_a_time(tiny, sampling, options)
    assert batched(tiny, sampling, options, 3) == batched(tiny, sampling, options, 3)


def test_cancel_yields_partial_answers_then_raises(tiny: LlamaModel) -> None:
    tokens = prompt_tokens(tiny, [Message("user", "hi")])
    requests = [BatchRequest(i, tokens, GREEDY) for i in range(4)]
    cancel = threading.Event()

    def on_step(stats: BatchStats) -> None:
        if stats.steps == 3:
            cancel.set()

    results: list[BatchResult] = []
    with BatchDecoder(tiny, 2, 256) as decoder, pytest.raises(Interrupted):
        for result in decoder.run(requests, cancel, on_step=on_step):
            results.append(result)
    running = [r for r in results if r.finish_reason == "interrupted"]
    assert {r.index for r in running} == {0, 1}  # the two slots; 2 and 3 never started
    assert all(r.generated_tokens == 3 for r in running)  # one per step


def test_oversized_and_zero_token_requests_answer_without_decoding(tiny: LlamaModel) -> None:
    ok = prompt_tokens(tiny, [Message("user", "hi")])
    requests = [
        BatchRequest(0, [1] * 300),
        BatchRequest(1, ok, GREEDY, GenerateOptions(max_tokens=0)),
        BatchRequest(2, ok, GREEDY, GenerateOptions(max_tokens=3)),
    ]
    with BatchDecoder(tiny, 2, 256) as decoder:
        results = {r.index: r for r in decoder.run(requests)}
    assert results[0].finish_reason == "error" and "300 tokens" in (results[0].error or "")
    assert (results[1].finish_reason, results[1].generated_tokens) == ("length", 0)
    assert results[2].generated_tokens == 3


# --- reading the input -------------------------------------------------------------------------


def read(tmp_path: Path, name: str, text: str) -> list[Any]:
    from infer.cli.batch import read_batch

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_batch(str(path), SamplingParams(), GenerateOptions(max_tokens=5))


def test_format_is_told_by_suffix_then_first_line(tmp_path: Path) -> None:
    jsonl = '\ufeff{"prompt": "a", "max_tokens": 2, "stop": "x"}\r\n\n{"prompt": "b"}\n'
    items = read(tmp_path, "p.data", jsonl)
    assert [(i.line, i.prompt, i.options.max_tokens) for i in items] == [(1, "a", 2), (3, "b", 5)]
    assert items[0].options.stop == ["x"]
    text = read(tmp_path, "p.txt", '{"prompt": "a"}\n\nsecond\n')
    assert [i.prompt for i in text] == ['{"prompt": "a"}', "second"]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"prompt": "x",}', "not valid JSON"),
        ('["x"]', "JSON object"),
        ('{"system": "x"}', '"prompt" is missing'),
        ('{"prompt": "x", "max_tokens": "5"}', "'max_tokens' has the wrong type"),
        ('{"prompt": "x", "temprature": 1}', "unknown field 'temprature'"),
        ('{"prompt": "x", "top_p": 2}', "'top_p' must be between 0 and 1 (got 2)"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, line: str, words: str) -> None:
    with pytest.raises(InputError) as err:
        read(tmp_path, "p.jsonl", '{"prompt": "fine"}\n' + line + "\n")
    assert "p.jsonl, line 2: " in str(err.value) and words in str(err.value)


# --- end to end with the bundled model ---------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`infer run --json` answers, one process per prompt."""
    env = {"INFER_HOME": str(tmp_path_factory.mktemp("home")), "HF_HUB_OFFLINE": "1"}
    runs = {p: ["run", "smollm2", p] for p in PROMPTS}
    runs["pirate"] = ["run", "smollm2", "Say hi.", "-s", PIRATE]
    answers = {}
    for key, args in runs.items():
        result = run_infer(*args, "-n", N, "--temperature", "0", "--json", env=env)
        assert result.returncode == 0, result.stderr
        answers[key] = json.loads(result.stdout)
    return answers


def records(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def assert_same(record: dict[str, Any], answer: dict[str, Any]) -> None:
    assert record["text"] == answer["text"]
    assert record["finish_reason"] == answer["finish_reason"]
    assert record["generated_tokens"] == answer["stats"]["generated_tokens"]
    assert record["prompt_tokens"] == answer["stats"]["prompt_tokens"]


@pytest.mark.parametrize("parallel", ["2", "4"])
def test_batch_equals_sequential_runs_in_input_order(
    tmp_path: Path, reference: dict[str, dict[str, Any]], parallel: str
) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    result = run_infer(
        "run", "smollm2", "--batch", str(path), "--parallel", parallel, "-n", N, "--temp", "0"
    )
    got = records(result)
    assert [r["index"] for r in got] == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in got] == PROMPTS
    for record, prompt in zip(got, PROMPTS, strict=True):
        assert_same(record, reference[prompt])
    assert b"error" not in result.stderr  # (progress lines, if the run took long)


def test_jsonl_per_line_settings_and_stdin(reference: dict[str, dict[str, Any]]) -> None:
    first = reference[PROMPTS[0]]["text"]
    stop = first.split()[3]
    lines = [
        {"id": "q1", "prompt": PROMPTS[0], "stop": [stop]},
        {"id": 2, "prompt": PROMPTS[1], "max_tokens": 3},
        {"prompt": "Say hi.", "system": PIRATE},
        {"prompt": PROMPTS[2]},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    got = records(run_infer("run", "smollm2", "--batch", "-", "-n", N, "--temp", "0", input=text))
    assert [r.get("id") for r in got] == ["q1", 2, None, None]
    assert got[0]["text"] == first[: first.index(stop)] and got[0]["finish_reason"] == "stop"
    assert reference[PROMPTS[1]]["text"].startswith(got[1]["text"])
    assert (got[1]["generated_tokens"], got[1]["finish_reason"]) == (3, "length")
    assert_same(got[2], reference["pirate"])
    assert_same(got[3], reference[PROMPTS[2]])


def test_a_prompt_over_the_context_fails_alone(reference: dict[str, dict[str, Any]]) -> None:
    text = "Summarise: " + "word " * 400 + "\n" + PROMPTS[3] + "\n"
    result = run_infer(
        "run", "smollm2", "--batch", "-", "-c", "256", "-n", N, "--temp", "0", input=text
    )
    failed, ok = records(result)
    assert failed["finish_reason"] == "error" and "context window is 256" in failed["error"]
    assert_same(ok, reference[PROMPTS[3]])
    assert b"1 prompt(s) failed" in result.stderr


def test_malformed_jsonl_is_one_line_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    result = run_infer("run", "smollm2", "--batch", str(path))
    err = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b""
    assert err.count("\n") == 1 and err.startswith("infer: error: ") and "line 2" in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["--batch", "-", "--parallel", "0"],
        ["--batch", "-", "--parallel", "257"],
        ["--parallel", "2", "hi"],
        ["hi", "--batch", "-"],
        ["--batch", "-", "--continue"],
    ],
)
def test_flag_misuse_is_a_usage_error(args: list[str]) -> None:
    result = run_infer("run", "smollm2", *args, input="hi\n")
    assert result.returncode == 2, result.stderr
    assert result.stdout == b"" and result.stderr.decode().startswith("infer: error: ")


def test_ctrl_c_writes_what_is_finished_and_exits_130() -> None:
    assert INFER
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "--batch", "-", "--parallel", "1", "-n", "64", "--temp", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(("Tell me a long story.\n" * 6).encode())
    proc.stdin.close()
    first = proc.stdout.readline()  # the first answer is written as soon as it is finished
    os.kill(proc.pid, signal.SIGINT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    got = [json.loads(line) for line in (first + out).decode().splitlines()]
    assert [r["index"] for r in got] == list(range(len(got)))
    assert got[0]["finish_reason"] != "interrupted" and len(got) < 6
    assert got[-1]["finish_reason"] == "interrupted"
    assert b"Traceback" not in err


def test_forks_copy_the_prompt_cells_in_llama_cpp(tiny: LlamaModel) -> None:
    """n choices of one prompt: the forks' copied KV cells give the parent's answer at
    temperature 0 (and each fork keeps its own sampler: a freed one would crash)."""
    from infer.runtime.generation.scheduler import Scheduler

    prompt = prompt_tokens(tiny, [Message("user", "x" * 40)])
    with tiny.new_context(3, 256, 64) as ctx:
        s = Scheduler(tiny, ctx)
        options = GenerateOptions(max_tokens=12)
        parent = s.join(BatchRequest(0, prompt, GREEDY, options))
        for i in (1, 2):
            s.join(BatchRequest(i, prompt, GREEDY, options), fork_of=parent)
        results = []
        while s.running():
            results += s.step()[0]
    texts = {r.index: (r.text, r.generated_tokens) for r in results}
    assert texts[0] == texts[1] == texts[2] and texts[0][1] == 12
