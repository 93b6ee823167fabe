"""`infer perplexity`: llama-perplexity's method (windows, second half scored, BOS, stderr) on
the bundled SmolLM2 and the tiny generated model, and the command's errors."""

from __future__ import annotations

import json
import math
import random
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infer.runtime import LoadOptions, load, resolve
from infer.runtime.llama.model import LlamaModel
from infer.runtime.tools.perplexity import perplexity, tokenize_text

from .conftest import INFER, run_infer

PROSE = """\
The lighthouse keeper climbed the stairs every evening at dusk, counting the steps as his
father had taught him. There were one hundred and twelve of them, worn smooth in the middle
by generations of boots. At the top he trimmed the wick, polished the great lens with a soft
cloth, and struck a match. The flame caught, steadied, and the beam swept out across the
water toward the ships that would never know his name.

In the village below, the baker was already asleep. She rose at three each morning to knead
the dough, and by six the smell of fresh bread drifted down to the harbour, where fishermen
bought warm loaves before setting out. Nobody remembered when the bakery had opened; the
oldest residents said it had always been there, like the church and the stone bridge.

Scientists who study sleep have found that most adults need between seven and nine hours
each night. Without enough rest, attention wanders, memory suffers, and even simple
decisions become harder. Yet modern life rarely leaves room for it: screens glow late into
the evening, work follows people home, and cities never fully go dark.

A good map leaves things out. If it showed every tree, every lamp post and every crack in
the pavement, it would be as large as the land itself and just as hard to read. The art of
the mapmaker lies in choosing what matters for the journey at hand: the roads for a driver,
the contour lines for a hiker, the depths and currents for a sailor.

When the railway reached the valley in the last century, the farmers worried that their
children would leave for the cities. Some did. Others stayed and found that the trains
carried their apples and cheese to markets they had never dreamed of reaching, and within a
generation the valley was richer than it had ever been.
"""
PPL_LINE = re.compile(r"^PPL = (\d+\.\d{4}) \+/- (\d+\.\d{4})\n$")


@pytest.fixture
def prose_file(tmp_path: Path) -> Path:
    path = tmp_path / "prose.txt"
    path.write_text(PROSE, "utf-8")
    return path


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaModel]:
    engine = load(resolve("smollm2"), LoadOptions(ctx_size=64, threads=1))
    assert isinstance(engine, LlamaModel)
    yield engine
    engine.close()


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "Traceback" not in err and "\x1b[" not in err
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith("infer: error: "), err
    for word in words:
        assert word in line, line
    return line


def test_perplexity_is_finite_above_one_and_the_same_every_time(prose_file: Path) -> None:
    args = ("perplexity", "smollm2", str(prose_file), "-c", "64", "--chunks", "2", "-t", "1")
    result = run_infer(*args)
    match = PPL_LINE.match(ok(result))
    assert match, result.stdout
    ppl, err = float(match[1]), float(match[2])
    assert 1 < ppl < 1000 and 0 < err < ppl
    assert "infer: perplexity: 2 windows to evaluate" in result.stderr.decode()
    record = json.loads(ok(run_infer(*args, "--json")))
    assert f"{record['ppl']:.4f}" == match[1] and f"{record['ppl_stderr']:.4f}" == match[2]
    assert set(record) == {
        "model", "ppl", "ppl_stderr", "nll", "ctx_size", "chunks", "tokens", "scored_tokens",
        "seconds",
    }  # fmt: skip
    assert (record["model"], record["ctx_size"], record["chunks"]) == ("smollm2", 64, 2)
    assert record["scored_tokens"] == 2 * (64 - 32 - 1)  # the second half, minus the last
    assert record["tokens"] > 4 * 64 and math.isclose(record["ppl"], math.exp(record["nll"]))


def test_prose_is_more_predictable_than_the_same_words_shuffled(smollm2: LlamaModel) -> None:
    words = PROSE.split()
    random.Random(0).shuffle(words)
    prose = perplexity(smollm2, PROSE, ctx_size=64, max_chunks=2)
    shuffled = perplexity(smollm2, " ".join(words), ctx_size=64, max_chunks=2)
    assert prose.chunks == shuffled.chunks == 2
    assert 1 < prose.ppl < shuffled.ppl / 5


def test_windows_batches_and_scoring_match_a_token_by_token_reference(tiny_model: Path) -> None:
    """Windows of 128 evaluated in batches of 32 (so logits span several batches) give the
    NLL of decoding one token at a time and scoring positions 64..126 of each window."""
    engine = load(resolve(str(tiny_model)), LoadOptions(ctx_size=128, batch_size=32, threads=1))
    assert isinstance(engine, LlamaModel)
    try:
        result = perplexity(engine, PROSE, ctx_size=128, max_chunks=3)
        tokens = tokenize_text(engine, PROSE)
        assert tokens[0] == engine.bos_id  # this vocabulary adds BOS
        nll = np.array(_reference_nll(engine, tokens, 128, 3))
    finally:
        engine.close()
    assert result.scored_tokens == len(nll) == 3 * 63
    assert math.isclose(result.nll, nll.mean(), rel_tol=1e-5)
    var = (nll * nll).mean() - nll.mean() ** 2
    expected = math.exp(nll.mean()) * math.sqrt(var / (len(nll) - 1))
    assert math.isclose(result.ppl_stderr, expected, rel_tol=1e-4)


def _reference_nll(engine: LlamaModel, tokens: np.ndarray, n_ctx: int, chunks: int) -> list:
    """One token per decode, each scored alone (the tool decodes batches of rows)."""
    session = engine.new_session()
    ctx, nll = session.context, []
    for i in range(chunks):
        window = [int(t) for t in tokens[i * n_ctx : (i + 1) * n_ctx]]
        window[0] = engine.bos_id
        session.reset()
        for pos, token in enumerate(window):
            row = ctx.add(0, [token], True)
            ctx.decode()
            if n_ctx // 2 <= pos < n_ctx - 1:
                raw = np.frombuffer(ctx.logits(row, 1), dtype=np.float32)
                logits = raw.astype(np.float64)
                peak = logits.max()
                lse = peak + math.log(np.exp(logits - peak).sum())
                nll.append(lse - logits[tokens[i * n_ctx + pos + 1]])
    session.close()
    return nll


def test_too_short_text_says_how_many_tokens_are_needed(prose_file: Path) -> None:
    line = one_line_error(run_infer("perplexity", "smollm2", str(prose_file), "-c", "2048"))
    assert re.search(r"the text is \d+ tokens; .* --ctx-size 2048 needs at least 4096", line)


def test_input_must_be_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    one_line_error(run_infer("perplexity", "smollm2", str(bad)), "not valid UTF-8", "offset 3")
    piped = run_infer("perplexity", "smollm2", input=b"caf\xe9")
    one_line_error(piped, "stdin is not valid UTF-8")
    one_line_error(run_infer("perplexity", "smollm2", str(tmp_path / "none.txt")), "none.txt")


def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_text(PROSE * 6, "utf-8")
    assert INFER
    proc = subprocess.Popen(
        [INFER, "perplexity", "smollm2", str(path), "-t", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline().decode()
    assert "windows to evaluate" in first, first
    timer = threading.Timer(0.3, proc.send_signal, (signal.SIGINT,))  # inside the first window
    timer.start()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert out == b"" and "Traceback" not in err.decode()
