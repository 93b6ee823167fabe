"""SIGTERM and SIGHUP while infer writes a file: the process stops with 128 + the signal's
number, no traceback, and no temp file behind; temp files of processes that died anyway
(SIGKILL) are swept by the next run. Real subprocesses and real signals: INFER_TEST_PAUSE_IN
holds the process at the point where its file is half-written, so the signal lands there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from infer.runtime.generation import prompt_store
from infer.runtime.models import blob_store
from infer.runtime.models import quantized_store as quantized

from .conftest import INFER, run_infer

TEXT = "abcdefgh" * 40  # 320+ byte tokens of the tiny model: long enough to be saved
RUN_FLAGS = ("-c", "1024", "-t", "1", "-n", "2", "--json", "--temp", "0")
DEAD_PID = 2**22 + 7  # above Linux's largest pid_max: never a live process


def signal_when_paused(where: str, signum: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run infer until it reports being held at `where`, send `signum`, wait for it to end."""
    assert INFER
    env = {**os.environ, "INFER_TEST_PAUSE_IN": where}
    proc = subprocess.Popen(
        [INFER, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:  # ends at EOF: an infer without the hook just finishes
            seen.append(line)
            if f"paused in {where}" in line:
                proc.send_signal(signum)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err)


def stopped_cleanly(result: subprocess.CompletedProcess[str], signum: int) -> None:
    assert result.returncode == 128 + signum, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_prompt_cache_save_leaves_no_temp_file(
    tiny_model: Path, signum: int
) -> None:
    result = signal_when_paused(
        "prompt-cache-save", signum, "run", str(tiny_model), TEXT, *RUN_FLAGS
    )
    stopped_cleanly(result, signum)
    assert list(prompt_store.root().glob("*/*")) == []  # neither an entry nor a temp file


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_quantize_leaves_no_part_and_no_model(
    tiny_model: Path, signum: int
) -> None:
    result = signal_when_paused("quantize", signum, "quantize", str(tiny_model), "Q8_0", "-t", "1")
    stopped_cleanly(result, signum)
    assert list(blob_store.tmp_dir().glob("*")) == []
    assert quantized.models() == [] and not list(blob_store.blobs_dir().glob("*"))


def test_temp_files_of_dead_processes_are_swept_by_the_next_run(tiny_model: Path) -> None:
    args = ("run", str(tiny_model), TEXT, *RUN_FLAGS)
    assert run_infer(*args).returncode == 0
    [entry] = prompt_store.entries()
    dead = entry.path.with_name(f".tmp-{DEAD_PID}-0123abcd")  # a writer killed by SIGKILL
    live = entry.path.with_name(f".tmp-{os.getpid()}-0123abcd")  # a writer still at work
    for path in (dead, live):
        path.write_bytes(b"half a state")
    result = run_infer(*args[:2], "another prompt: " + TEXT, *RUN_FLAGS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] is not None
    assert not dead.exists() and live.exists()
    listing = json.loads(run_infer("cache", "list", "--json").stdout)
    assert len(listing["entries"]) == 2  # the temp files were never entries
