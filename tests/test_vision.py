"""Images through libmtmd as a user meets them: `infer run --image` in a subprocess on a tiny
random-weight LLaVA-style model (tests/tiny_vision.py), compared token for token with llama.cpp's
own llama-mtmd-cli at temperature 0; the cache hit of a second question; every bad input refused
before decoding with one line and exit 2."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from .conftest import run_infer
from .llama_server import llamacpp_tool, whole_output
from .test_remote import StandIn
from .test_remote import standin as standin  # the stand-in OpenAI server (a fixture)
from .tiny_gguf import CONTROL
from .tiny_media import png, png_claiming, wav
from .tiny_vision import (
    IMAGE_TOKENS,
    write_tiny_audio_projector,
    write_tiny_projector,
    write_tiny_text_model,
)

N = "24"  # tokens generated: enough that two different pictures cannot agree by chance


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vision")
    files = {
        "model": write_tiny_text_model(d / "tiny.gguf"),
        "mmproj": write_tiny_projector(d / "mmproj.gguf"),
        "wrong": write_tiny_projector(d / "mmproj-128.gguf", n_embd_text=128),
    }
    for name, data in {
        "a": png(40, 30, seed=0),
        "b": png(40, 30, seed=1),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        "html": b"<!DOCTYPE html><html><body>not a picture</body></html>",
        "text": b"just some words\n",
        "truncated": png(40, 30, seed=2)[:60],
        "bomb": png_claiming(50_000, 50_000),
    }.items():
        files[name] = d / f"{name}.png"
        files[name].write_bytes(data)
    return files


@pytest.fixture(scope="module")
def mtmd_cli() -> Path:
    """llama.cpp's llama-mtmd-cli from the installed llama-cpp-python's sdist, built once into
    the cached build folder (benchmarks/vs_llamacpp.py)."""
    return llamacpp_tool("llama-mtmd-cli")


def infer_image(v: dict[str, Path], *images: str, prompt: str = "What is this?") -> str:
    args = [str(v["model"]), prompt, "--mmproj", str(v["mmproj"]), "--temperature", "0"]
    for image in images:
        args += ["--image", str(v[image])]
    result = run_infer("run", *args, "-n", N, "--no-prompt-cache")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def reference(cli: Path, v: dict[str, Path], *images: str, prompt: str = "What is this?") -> str:
    """llama-mtmd-cli's answer: --jinja renders the GGUF's template as infer does; flash
    attention left on auto on both sides (infer does not set it either)."""
    args = [str(cli), "-m", str(v["model"]), "--mmproj", str(v["mmproj"]), "-p", prompt]
    for image in images:
        args += ["--image", str(v[image])]
    args += ["--jinja", "--temp", "0", "-n", N, "-t", "2", "--seed", "0"]
    return _reference_output(args)


def _reference_output(args: list[str]) -> str:
    # A whole answer ends with the two newlines it prints after the last token (whole_output:
    # its logger thread can lose the end or all of it).
    longest = whole_output(args, lambda out: out.endswith(b"\n\n"))
    # It prints each token's bytes as they come (invalid UTF-8 included) framed by newlines, and
    # control tokens as their markup; infer decodes the same bytes with U+FFFD for the invalid
    # ones and shows no control token.
    text = longest.decode("utf-8", errors="replace")
    for markup in CONTROL:
        text = text.replace(markup, "")
    return text


@pytest.mark.parametrize("images", [("a",), ("b",), ("a", "b")])
def test_the_same_tokens_as_llama_mtmd_cli(
    mtmd_cli: Path, vision: dict[str, Path], images: tuple[str, ...]
) -> None:
    ours = infer_image(vision, *images)
    theirs = reference(mtmd_cli, vision, *images)
    assert ours.strip() and ours.strip() == theirs.strip()


def test_a_marker_in_the_prompt_places_the_image(mtmd_cli: Path, vision: dict[str, Path]) -> None:
    prompt = "Look: <__media__> what is it?"
    assert infer_image(vision, "a", prompt=prompt).strip() == (
        reference(mtmd_cli, vision, "a", prompt=prompt).strip()
    )


def test_different_images_give_different_answers(vision: dict[str, Path]) -> None:
    assert infer_image(vision, "a") != infer_image(vision, "b")


def test_image_from_stdin_and_stats_in_json(vision: dict[str, Path]) -> None:
    result = run_infer(
        "run", str(vision["model"]), "What is this?", "--mmproj", str(vision["mmproj"]),
        "--image", "-", "--temperature", "0", "-n", N, "--json", "--no-prompt-cache",
        input=vision["a"].read_bytes(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    out = json.loads(result.stdout)
    assert out["text"] == infer_image(vision, "a").rstrip("\n")
    stats = out["stats"]
    assert (stats["media"], stats["media_tokens"], stats["media_encoded"]) == (1, IMAGE_TOKENS, 1)
    assert stats["encode_s"] > 0


def test_a_second_question_about_the_same_image_is_not_encoded_again(
    vision: dict[str, Path],
) -> None:
    """Across runs, through the prompt cache: the image's KV state is restored, not encoded."""
    env = {"INFER_PROMPT_CACHE_MIN_TOKENS": "8"}
    runs = []
    for prompt in ("What is this?", "What colour is it?"):
        result = run_infer(
            "run", str(vision["model"]), prompt, "--mmproj", str(vision["mmproj"]),
            "--image", str(vision["a"]), "--temperature", "0", "-n", "4", "--json", env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        runs.append(json.loads(result.stdout)["stats"])
    assert runs[0]["media_encoded"] == 1
    assert runs[1]["media_encoded"] == 0
    assert runs[1]["prompt_eval_tokens"] < runs[1]["prompt_tokens"] - IMAGE_TOKENS
    # Another picture is a miss: it is encoded.
    result = run_infer(
        "run", str(vision["model"]), "What colour is it?", "--mmproj", str(vision["mmproj"]),
        "--image", str(vision["b"]), "-n", "4", "--json", env=env,
    )  # fmt: skip
    assert json.loads(result.stdout)["stats"]["media_encoded"] == 1


def test_the_chat_attaches_an_image_to_the_next_message(vision: dict[str, Path]) -> None:
    """Off a terminal the chat is not reachable; its Repl is driven directly, with the local
    engine, and the second question about the image must not encode it again."""
    from infer.cli.chat import ChatSettings, Repl
    from infer.runtime import LoadOptions, load
    from infer.runtime.answer import AnswerRequest
    from infer.runtime.generation.conversation import Conversation
    from infer.runtime.local import LocalAnswer, LocalAnswerer
    from infer.runtime.options import Overrides

    model = load(str(vision["model"]), LoadOptions(ctx_size=256, mmproj=vision["mmproj"]))
    try:
        answerer = LocalAnswerer(model.new_session(), "tiny", str(vision["model"]))
        base = AnswerRequest((), overrides=Overrides(temperature=0), max_tokens=4)
        repl = Repl(answerer, Conversation("tiny-vision-test"), ChatSettings(base))
        seen: list[LocalAnswer] = []
        original = answerer.answer

        def spy(request: AnswerRequest, cancel: threading.Event | None = None) -> LocalAnswer:
            answer = original(request, cancel)
            seen.append(answer)
            return answer

        answerer.answer = spy  # type: ignore[method-assign]
        repl.command(f"/image {vision['a']}")
        repl.ask("What is this?")
        repl.ask("And now?")
        first, second = (a.stats for a in seen)
        assert (first.media, first.media_encoded) == (1, 1)
        assert (second.media, second.media_encoded) == (1, 0)
    finally:
        model.close()


BAD = {
    "svg": "SVG or HTML",
    "html": "SVG or HTML",
    "text": "not an image",
    "truncated": "truncated",
    "bomb": "50,000 x 50,000",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_are_one_line_and_exit_2(vision: dict[str, Path], name: str) -> None:
    result = run_infer(
        "run",
        str(vision["model"]),
        "hi",
        "--mmproj",
        str(vision["mmproj"]),
        "--image",
        str(vision[name]),
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and BAD[name] in err and not result.stdout


def test_refusals_of_models_and_projectors(vision: dict[str, Path], tmp_path: Path) -> None:
    m, a = str(vision["model"]), str(vision["a"])
    cases = {
        "no projector": ([m, "hi", "--image", a], "no projector"),
        "wrong projector": ([m, "hi", "--mmproj", str(vision["wrong"]), "--image", a], "128"),
        "a model as projector": ([m, "hi", "--mmproj", m, "--image", a], "not a projector"),
        "audio to a vision projector": (
            [m, "hi", "--mmproj", str(vision["mmproj"]), "--audio", str(tmp_path / "c.wav")],
            "takes no audio",
        ),
        "more than the context holds": (
            [
                m,
                "hi",
                "--mmproj",
                str(vision["mmproj"]),
                "--ctx-size",
                "40",
                "--image",
                a,
                "--image",
                a,
            ],
            "the context holds",
        ),
        "markers without media": (
            [m, "<__media__> <__media__>", "--mmproj", str(vision["mmproj"]), "--image", a],
            "markers",
        ),
    }
    (tmp_path / "c.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32))
    for what, (args, needle) in cases.items():
        result = run_infer("run", *args)
        err = result.stderr.decode()
        assert result.returncode == 2, (what, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, (what, err)


def test_images_go_to_a_remote_as_data_uris(
    standin: str,
    vision: dict[str, Path],
) -> None:
    """Over --remote the image is sent as OpenAI's image_url part (a data: URI) where infer
    would place it; --mmproj is the remote's business."""
    import base64

    result = run_infer(
        "run", "alpha", "What is this?", "--remote", standin, "--image", str(vision["a"])
    )
    assert result.returncode == 0, result.stderr
    data = base64.b64encode(vision["a"].read_bytes()).decode()
    assert StandIn.seen[0]["body"]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    refused = run_infer(
        "run", "alpha", "hi", "--remote", standin, "--mmproj", str(vision["mmproj"]),
        "--image", str(vision["a"]),
    )  # fmt: skip
    assert refused.returncode == 2 and b"--mmproj" in refused.stderr


@pytest.fixture(scope="module")
def hearing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny text model with a tiny Qwen2-Audio-style projector, and two tones. libmtmd pads
    a clip to Whisper's 30 s window: 750 audio tokens, so the context is 2048 on both sides."""
    d = tmp_path_factory.mktemp("audio")
    files = {
        "model": write_tiny_text_model(d / "tiny.gguf"),
        "mmproj": write_tiny_audio_projector(d / "mmproj-audio.gguf"),
    }
    # 10 s each: a 1 s tone is mostly the window's silence, too little for random weights to
    # tell two apart.
    for name, hz in {"low": 440.0, "high": 3000.0}.items():
        files[name] = d / f"{name}.wav"
        files[name].write_bytes(wav(10.0, hz))
    return files


# Audio is compared on fewer tokens than images: the 440 Hz clip's answers agree for 20 tokens
# and then part at a near tie. The likely cause is the log-mel spectrogram, computed in libmtmd's
# own C++ (not ggml), which the installed wheel and the llama.cpp tools build with different
# compiler flags (floating-point contraction); images go through no such code and agree on all
# 24 tokens.
N_AUDIO = "16"


@pytest.mark.parametrize("clip", ["low", "high"])
def test_audio_gives_the_same_tokens_as_llama_mtmd_cli(
    mtmd_cli: Path, hearing: dict[str, Path], clip: str
) -> None:
    m, p, f = str(hearing["model"]), str(hearing["mmproj"]), str(hearing[clip])
    ours = run_infer(
        "run", m, "What do you hear?", "--mmproj", p, "--audio", f, "--temperature", "0",
        "-n", N_AUDIO, "--ctx-size", "2048", "--no-prompt-cache",
    )  # fmt: skip
    assert ours.returncode == 0, ours.stderr.decode()
    args = ["-m", m, "--mmproj", p, "--audio", f, "-p", "What do you hear?", "-c", "2048"]
    args += ["--jinja", "--temp", "0", "-n", N_AUDIO, "-t", "2"]
    theirs = _reference_output([str(mtmd_cli), *args])
    # llama-mtmd-cli prints pieces with "%s": a NUL byte token prints as nothing there.
    text = ours.stdout.decode().replace("\x00", "")
    assert text.strip() and text.strip() == theirs.strip()


def test_different_sounds_give_different_answers(hearing: dict[str, Path]) -> None:
    answers = set()
    for clip in ("low", "high"):
        result = run_infer(
            "run", str(hearing["model"]), "hi", "--mmproj", str(hearing["mmproj"]),
            "--audio", str(hearing[clip]), "--temperature", "0", "-n", N, "--ctx-size", "2048",
            "--no-prompt-cache", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        out = json.loads(result.stdout)
        assert out["stats"]["media"] == 1 and out["stats"]["media_tokens"] == 750
        answers.add(out["text"])
    assert len(answers) == 2


def test_chat_on_a_terminal_attaches_images_with_slash_image(vision: dict[str, Path]) -> None:
    """Through a real pseudo-terminal: /image attaches a picture to the next message; the next
    question about it finds it in the KV cache (0 encoded in the stats line)."""
    import os
    import re

    import pexpect

    from .conftest import INFER

    assert INFER
    child = pexpect.spawn(
        INFER,
        ["chat", str(vision["model"]), "--mmproj", str(vision["mmproj"]), "--temperature", "0",
         "-n", "6", "--stats"],
        encoding="utf-8", timeout=120, dimensions=(50, 200), env=dict(os.environ),
    )  # fmt: skip
    try:

        def say(line: str) -> str:
            child.sendline(line)
            child.expect_exact(">>> ")
            return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before or "")

        child.expect_exact(">>> ")
        assert "goes with your next message" in say(f"/image {vision['a']}")
        assert "media 1 (16 tok), 1 encoded" in say("What is this?")
        assert "media 1 (16 tok), 0 encoded" in say("And now?")
        assert "not an image" in say(f"/image {vision['text']}")
        # The refused file attached nothing: the prompt's one picture is still the first
        # message's, held in the cache.
        assert "media 1 (16 tok), 0 encoded" in say("A question without it")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_the_bundled_model_with_a_projector_answers_as_llama_mtmd_cli(
    mtmd_cli: Path, vision: dict[str, Path], bundled_model: Path, tmp_path: Path
) -> None:
    """A real vocabulary (SmolLM2's BPE) and real weights: a random projector of its n_embd
    (576) in front, so the image steers real text; each answer token for token llama.cpp's."""
    mmproj = write_tiny_projector(tmp_path / "mmproj-576.gguf", n_embd_text=576)
    answers = set()
    for image in ("a", "b"):
        ours = run_infer(
            "run", "smollm2", "Describe the picture.", "--mmproj", str(mmproj),
            "--image", str(vision[image]), "--temperature", "0", "-n", "32", "--no-prompt-cache",
            "--ctx-size", "2048",
        )  # fmt: skip
        assert ours.returncode == 0, ours.stderr.decode()
        theirs = _reference_output(
            [str(mtmd_cli), "-m", str(bundled_model), "--mmproj", str(mmproj), "--image",
             str(vision[image]), "-p", "Describe the picture.", "--jinja", "--temp", "0",
             "-n", "32", "-t", "2", "-c", "2048", "--no-warmup"]
        )  # fmt: skip
        assert ours.stdout.decode().strip() == theirs.strip() != ""
        answers.add(theirs.strip())
    assert len(answers) == 2
