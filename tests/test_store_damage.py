"""The store after damage and kills, met the way a user meets it (the installed `infer` in a
subprocess): a quantized model's damaged manifest is listed as damaged and `infer rm` removes it
and frees its file (as the Hub cache's damaged manifests are, tests/test_cache_damage.py); a
quantize killed with SIGKILL mid-write leaves no model listed and its partial file is swept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from infer.runtime.generation import prompt_store

from .conftest import INFER, run_infer
from .fake_hub import FakeHub, tiny_gguf


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _quantized(tiny_model: Path) -> tuple[str, Path, Path]:
    """Quantize the tiny model: its name, manifest and blob."""
    ok(run_infer("quantize", str(tiny_model), "Q8_0", "-t", "1"))
    [row] = json.loads(ok(run_infer("list", "--json")))["models"]
    [manifest] = (Path(row["path"]).parents[2] / "quantized" / "manifests").glob("*.json")
    return row["name"], manifest, Path(row["path"])


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "size": "big"})),
    ],
    ids=["truncated", "wrong-type"],
)
def test_a_damaged_quantized_manifest_is_listed_and_removed_with_its_file(
    tiny_model: Path, damage: object
) -> None:
    name, manifest, blob = _quantized(tiny_model)
    size = blob.stat().st_size
    damage(manifest)  # type: ignore[operator]

    listed = run_infer("list")
    lines = ok(listed).splitlines()
    assert "(damaged)" in lines[1] and lines[2].startswith("1 model, ")
    err = listed.stderr.decode()
    assert "infer: warning: " in err and str(manifest) in err and "infer rm " in err
    [row] = json.loads(ok(run_infer("list", "--json")))["models"]
    assert row["damaged"] and row["path"] == str(manifest) and row["size"] == size

    removed = ok(run_infer("rm", row["name"]))
    assert removed.startswith(f"removed the damaged manifest {manifest} (")
    assert not manifest.exists() and not blob.exists()
    after = json.loads(ok(run_infer("list", "--json")))
    assert after["models"] == [] and after["total_bytes"] == 0
    assert name  # the name, when readable, is what rm took (truncated: quantized/<id>)


def _killed_at(where: str, *args: str, env: dict[str, str] | None = None) -> None:
    """Run infer until it is held at the pause point `where` (its file half-written), then
    SIGKILL it: no handler runs, nothing is cleaned up."""
    assert INFER
    environ = {**os.environ, **(env or {}), "INFER_TEST_PAUSE_IN": where}
    proc = subprocess.Popen(
        [INFER, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=environ, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if f"paused in {where}" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"infer was not held at {where}"


def test_sigkill_during_quantize_leaves_nothing_listed_and_its_part_swept(
    tiny_model: Path, infer_home: Path
) -> None:
    tmp = infer_home / "cache" / "hub" / "tmp"
    _killed_at("quantize", "quantize", str(tiny_model), "Q8_0", "-t", "1")
    assert list(tmp.iterdir())  # the dead process's part file is there...
    listing = json.loads(ok(run_infer("list", "--json")))
    assert listing["models"] == []  # ...but no model is listed
    ok(run_infer("quantize", str(tiny_model), "Q8_0", "-t", "1"))
    [row] = json.loads(ok(run_infer("list", "--json")))["models"]
    assert row["complete"] and "damaged" not in row
    assert list(tmp.iterdir()) == []  # swept by the next quantize


def test_sigkill_during_a_prompt_cache_write_leaves_no_entry_and_is_swept(
    tiny_model: Path, infer_home: Path
) -> None:
    text = "abcdefgh" * 40  # long enough to be saved
    flags = ("-c", "1024", "-t", "1", "-n", "2", "--json", "--temp", "0")
    _killed_at("prompt-cache-save", "run", str(tiny_model), text, *flags)
    assert list(prompt_store.root().glob("*/.*"))  # the dead process's temp file is there...
    assert prompt_store.entries() == []  # ...but the half-written entry is not an entry
    first = ok(run_infer("run", str(tiny_model), text, *flags))
    assert len(prompt_store.entries()) == 1
    assert list(prompt_store.root().glob("*/.*")) == []  # swept by the next run
    again = ok(run_infer("run", str(tiny_model), text, *flags))
    assert json.loads(again)["text"] == json.loads(first)["text"]  # restored, same answer


def test_sigkill_during_a_pull_leaves_nothing_listed_and_the_next_pull_completes(
    infer_home: Path, tmp_path: Path
) -> None:
    assert INFER
    with FakeHub() as hub:
        # Over a few MiB (trailing bytes after the tensor data are allowed), so that the hub's
        # throttle, a pause after each MiB, holds the transfer open long enough to kill it.
        data = tiny_gguf(0) + b"\0" * (3 << 20)
        hub.add_repo("me/tiny-GGUF", {"tiny-Q4_K_M.gguf": data})
        hub.throttle = 1.0
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""}  # fmt: skip
        tmp = infer_home / "cache" / "hub" / "tmp"
        proc = subprocess.Popen(
            [INFER, "pull", "me/tiny-GGUF:Q4_K_M"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            for _ in range(6000):  # until the download has begun writing
                if proc.poll() is not None or (tmp.is_dir() and any(tmp.iterdir())):
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the pull ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        listing = json.loads(ok(run_infer("list", "--json", env=env)))
        assert listing["models"] == []  # nothing half-installed is listed
        hub.throttle = 0.0
        ok(run_infer("pull", "me/tiny-GGUF:Q4_K_M", env=env))
        [row] = json.loads(ok(run_infer("list", "--json", env=env)))["models"]
        assert row["complete"] and row["size"] == len(data)
        assert list(tmp.iterdir()) == []  # the killed pull's part: resumed or swept
