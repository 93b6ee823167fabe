"""The store after damage and kills, met the way a user meets it (the installed `infer` in a
subprocess): a quantized model's damaged manifest is listed as damaged and `infer rm` removes it
and frees its file (as the Hub cache's damaged manifests are, tests/test_cache_damage.py); a
quantize killed with SIGKILL mid-write leaves no model listed and its partial file is swept."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import INFER, run_infer


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


def test_quantize_killed_mid_write_leaves_nothing_listed_and_is_swept(
    tiny_model: Path, infer_home: Path
) -> None:
    """SIGKILL while the quantizer writes: no model listed; the next quantize of the same
    model succeeds and the partial file is gone from tmp/."""
    assert INFER
    tmp = infer_home / "cache" / "hub" / "tmp"
    killed = 0
    for _ in range(20):  # the tiny model quantizes fast: kill it once its part file exists
        proc = subprocess.Popen(
            [INFER, "quantize", str(tiny_model), "Q8_0", "-t", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while proc.poll() is None and not (tmp.is_dir() and any(tmp.iterdir())):
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
            break
        proc.wait()
        ok(run_infer("rm", json.loads(ok(run_infer("list", "--json")))["models"][0]["name"]))
    if not killed:
        pytest.skip("the quantizer finished before it could be killed")
    listing = json.loads(ok(run_infer("list", "--json")))
    assert listing["models"] == []  # nothing half-installed listed
    ok(run_infer("quantize", str(tiny_model), "Q8_0", "-t", "1"))
    [row] = json.loads(ok(run_infer("list", "--json")))["models"]
    assert row["complete"] and "damaged" not in row
    leftovers = list(tmp.iterdir()) if tmp.is_dir() else []
    assert leftovers == [], leftovers  # the killed run's part file was swept
