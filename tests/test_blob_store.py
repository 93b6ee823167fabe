"""The one blob store under pulled and quantized models: its collector keeps every blob any
manifest of either kind names, a file both kinds use is stored once, and a cache from before the
stores were one (quantized/blobs/) is migrated on first use — idempotent, safe to interrupt, safe
with two processes at once, copied and checked across file systems."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infer.runtime.models import blob_store, hub_cache, inventory, pull, quantized_store
from infer.runtime.models import resolve as store
from infer.runtime.models.quantized_store import QuantizedModel
from infer.runtime.models.refs import HubRef

from .conftest import run_infer
from .fake_hub import FakeHub, point_env_at, tiny_gguf

REPO = "me/tiny-GGUF"
DEAD_PID = 2**22 + 7  # above the default pid_max: never a live process


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A fake hub with one repository (Q4_K_M = tiny_gguf(0)), the environment pointing at it."""
    with FakeHub() as h:
        h.add_repo(REPO, {"tiny-Q4_K_M.gguf": tiny_gguf(0)})
        point_env_at(h, monkeypatch, tmp_path)
        yield h


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model(data: bytes, name: str = "tiny:Q8_0") -> QuantizedModel:
    return QuantizedModel(
        name=name, type=name.rpartition(":")[2], sha256=digest(data), size=len(data),
        source="tiny", source_path="/nowhere/tiny.gguf", base=name.rpartition(":")[0],
        created_at="2025-01-01T00:00:00.000+00:00",
    )  # fmt: skip


def add_quantized(data: bytes, name: str = "tiny:Q8_0") -> QuantizedModel:
    """A quantized model as `infer quantize` records it (without running the quantizer)."""
    part = blob_store.new_part()
    part.write_bytes(data)
    m = model(data, name)
    quantized_store.install(part, m)
    return m


def old_layout(*models: tuple[bytes, str]) -> list[QuantizedModel]:
    """A cache as versions before the one store wrote it: quantized/blobs/ and manifests/, and
    a part a killed quantizer left in quantized/tmp/."""
    root = quantized_store.root()
    made = []
    for data, name in models:
        m = model(data, name)
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / m.sha256).write_bytes(data)
        (root / "manifests").mkdir(parents=True, exist_ok=True)
        (root / "manifests" / f"{m.id}.json").write_text(m.to_json())
        made.append(m)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp" / f"{DEAD_PID}-{'0' * 16}.part").write_bytes(b"half a model")
    return made


def blobs() -> list[str]:
    return sorted(p.name for p in blob_store.blobs_dir().glob("*"))


def old_folders() -> list[Path]:
    return [p for p in (quantized_store.root() / "blobs", quantized_store.root() / "tmp")
            if p.exists()]  # fmt: skip


# --- one collector for both kinds of manifest ----------------------------------------------
def test_a_quantized_model_survives_rm_of_a_hub_model(hub: FakeHub) -> None:
    pulled = pull.pull(HubRef(REPO))
    made = add_quantized(tiny_gguf(1))
    assert blobs() == sorted([digest(tiny_gguf(0)), made.sha256])
    removed = run_infer("rm", REPO)  # the Hub's collector, in a real `infer rm`
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.decode() == f"removed {pulled.name} (470.0 kB freed)\n"
    assert blobs() == [made.sha256]
    resolved = store.resolve("tiny:q8_0")
    assert resolved.quantized == made and resolved.path.read_bytes() == tiny_gguf(1)


@pytest.mark.parametrize("hub_first", [True, False], ids=["rm-hub-first", "rm-quantized-first"])
def test_a_blob_both_kinds_name_is_stored_once_and_stays_until_both_are_gone(
    hub: FakeHub, hub_first: bool
) -> None:
    pulled = pull.pull(HubRef(REPO))
    made = add_quantized(tiny_gguf(0), "tiny:Q4_K_M")  # the very bytes of the pulled file
    size = len(tiny_gguf(0))
    assert blobs() == [made.sha256]
    listed = inventory.cached_models()
    assert len(listed["models"]) == 2 and listed["total_bytes"] == size  # not twice

    def rm_hub() -> int:
        return hub_cache.remove(pulled)

    def rm_quantized() -> int:
        return quantized_store.remove(made)

    first, second = (rm_hub, rm_quantized) if hub_first else (rm_quantized, rm_hub)
    assert first() == 0
    assert blobs() == [made.sha256]
    survivor = "tiny:Q4_K_M" if hub_first else REPO
    assert store.resolve(survivor).path.read_bytes() == tiny_gguf(0)
    assert second() == size
    assert blobs() == [] and inventory.cached_models()["models"] == []


def test_the_collector_reads_only_the_digests_a_manifest_names() -> None:
    """A quantized model made from a pulled one records its source's path, which is a blob's:
    that must not keep the source's blob alive after `infer rm` of the source."""
    source, own = "a" * 64, "b" * 64
    m = model(b"x")
    text = json.dumps({**json.loads(m.to_json()), "sha256": own, "source_path": f"/c/{source}"})
    assert blob_store.named_blobs(text.encode()) == {own}
    hub_manifest = {"files": [{"path": "m.gguf", "sha256": source, "size": 1}], "commit": "c" * 40}
    assert blob_store.named_blobs(json.dumps(hub_manifest).encode()) == {source}
    # A damaged manifest keeps everything that looks like a digest in it.
    assert blob_store.named_blobs(text.encode()[:-40]) == {own, source}


# --- migration of a cache from before the stores were one ----------------------------------
def test_an_old_layout_cache_is_migrated_on_first_use_and_runs(tiny_model: Path) -> None:
    [m] = old_layout((tiny_model.read_bytes(), "tiny:Q8_0"))
    listed = run_infer("list", "--json")  # the first use
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["models"]
    assert (row["name"], row["complete"], row["size"]) == ("tiny:Q8_0", True, m.size)
    assert row["path"] == str(blob_store.blob_path(m.sha256))
    assert blobs() == [m.sha256] and old_folders() == []
    ran = run_infer("run", "tiny:Q8_0", "hi", "-n", "2", "--temperature", "0")
    assert ran.returncode == 0 and ran.stdout, ran.stderr

    quantized_store.migrate()  # again: nothing to do, nothing changes
    assert blobs() == [m.sha256] and old_folders() == []
    assert quantized_store.models() == [m]


def test_migration_stores_a_file_the_hub_cache_has_once(hub: FakeHub) -> None:
    pull.pull(HubRef(REPO))
    [m] = old_layout((tiny_gguf(0), "tiny:Q4_K_M"))  # quantized to the same bytes, long ago
    assert inventory.cached_models()["total_bytes"] == len(tiny_gguf(0))
    assert blobs() == [m.sha256] and old_folders() == []
    assert store.resolve("tiny:Q4_K_M").path == blob_store.blob_path(m.sha256)


def test_an_interrupted_migration_still_resolves_and_then_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moved, copied, waiting = old_layout(
        (tiny_gguf(0), "tiny:Q8_0"), (tiny_gguf(1), "tiny:Q4_0"), (tiny_gguf(2), "tiny:Q4_1")
    )
    old = quantized_store.root() / "blobs"
    blob_store.blobs_dir().mkdir(parents=True)
    os.replace(old / moved.sha256, blob_store.blob_path(moved.sha256))  # renamed, then killed
    blob_store.blob_path(copied.sha256).write_bytes(tiny_gguf(1))  # copied, old not yet deleted

    def read_only(*_: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:  # the next run cannot finish it (read-only cache)
        patch.setattr(blob_store, "lock", read_only)
        for m, data in ((moved, 0), (copied, 1), (waiting, 2)):
            resolved = store.resolve(m.name)
            assert resolved.quantized == m and resolved.path.read_bytes() == tiny_gguf(data)
        assert (old / waiting.sha256).is_file()
        assert len(inventory.cached_models()["models"]) == 3
    assert sorted(m.name for m in quantized_store.models()) == [
        "tiny:Q4_0",
        "tiny:Q4_1",
        "tiny:Q8_0",
    ]
    assert blobs() == sorted(m.sha256 for m in (moved, copied, waiting))
    assert old_folders() == []


def test_two_processes_migrating_at_once_lose_nothing(infer_home: Path) -> None:
    files = [f"model {i}".encode() * 1000 for i in range(40)]
    old_layout(*((data, f"m{i}:Q8_0") for i, data in enumerate(files)))
    code = "from infer.runtime.models import quantized_store as q; q.migrate()"
    env = {**os.environ, "INFER_HOME": str(infer_home)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert blobs() == sorted(digest(d) for d in files) and old_folders() == []
    for path in blob_store.blobs_dir().iterdir():
        assert digest(path.read_bytes()) == path.name
    assert len(quantized_store.models()) == 40


def test_across_file_systems_a_blob_is_copied_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good, bad = old_layout((tiny_gguf(0), "tiny:Q8_0"), (tiny_gguf(1), "tiny:Q4_0"))
    old = quantized_store.root() / "blobs"
    (old / bad.sha256).write_bytes(tiny_gguf(2))  # not the bytes its name promises
    rename = os.replace

    def cross_device(src: object, dst: object) -> None:
        if Path(str(src)).parent == old:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", cross_device)
    quantized_store.migrate()
    assert blobs() == [good.sha256]  # checked, then installed
    assert blob_store.blob_path(good.sha256).read_bytes() == tiny_gguf(0)
    assert not (old / good.sha256).exists()
    assert (old / bad.sha256).is_file()  # never counted as a blob: left where it was
    assert list(blob_store.tmp_dir().iterdir()) == []
