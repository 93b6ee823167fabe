"""A damaged or unwritable cache, met the way a user meets it (the installed `infer` in a
subprocess): a read-only cache makes `cache clear` and `quantize` fail with one line naming the
path; a FIFO under a prompt-cache entry's name does not hang `run`; a damaged model manifest is
listed as damaged, removed by `rm` (its blob freed) and repaired by `pull`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infer.runtime.generation import prompt_store
from infer.runtime.models import hub_cache as cache

from .conftest import INFER, run_infer
from .fake_hub import FakeHub, tiny_gguf

TEXT = "abcdefgh" * 40  # 320+ byte tokens of the tiny model: long enough to be saved
RUN_FLAGS = ("-c", "1024", "-t", "1", "-n", "2", "--json", "--temp", "0")
REPO = "me/tiny-GGUF"
_REMOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err and "unexpected" not in err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("infer: error: "), err
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="session")
def can_mount_read_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A private mount namespace (`unshare -rm`) lets a test make a folder read-only for one
    process, even as root, which ignores file permissions."""
    folder = tmp_path_factory.mktemp("ro-probe")
    probe = ["unshare", "-rm", "sh", "-c", _REMOUNT, "sh", str(folder), "touch", f"{folder}/x"]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    result = subprocess.run(probe, capture_output=True, timeout=30)
    if b"Read-only file system" not in result.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {result.stderr.decode()[:200]}")


def infer_read_only(folder: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run infer with `folder` read-only for it (a read-only bind mount only it sees)."""
    assert INFER
    command = ["unshare", "-rm", "sh", "-c", _REMOUNT, "sh", str(folder), INFER, *args]
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


# --- a read-only cache -------------------------------------------------------------------------
def test_cache_clear_of_a_read_only_cache_says_so_and_keeps_the_entry(
    tiny_model: Path, can_mount_read_only: None
) -> None:
    assert run_infer("run", str(tiny_model), TEXT, *RUN_FLAGS).returncode == 0
    [entry] = prompt_store.entries()
    line = one_line_error(
        infer_read_only(prompt_store.root(), "cache", "clear"), "cannot remove", "read-only"
    )
    assert str(entry.path) in line
    assert prompt_store.entries() == [entry]
    assert run_infer("cache", "clear").stdout.decode().startswith("removed 1 prompt cache entry")


def test_cache_clear_reports_a_file_it_cannot_remove(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same without a mount namespace: in process, unlink fails as on a read-only disk."""
    import errno

    from infer.cli.app import main

    assert run_infer("run", str(tiny_model), TEXT, *RUN_FLAGS).returncode == 0
    [entry] = prompt_store.entries()

    unlink, cache = Path.unlink, prompt_store.root()

    def refuse(self: Path, missing_ok: bool = False) -> None:
        # Only the cache's files: the patch is process-wide, and another test's server thread
        # still winding down may remove a file of its own meanwhile.
        if not self.is_relative_to(cache):
            return unlink(self, missing_ok)
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    with monkeypatch.context() as patch, pytest.raises(SystemExit) as exit_:
        patch.setattr(Path, "unlink", refuse)
        main(["cache", "clear"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"infer: error: cannot remove {entry.path}: Read-only file system (")
    assert err.count("\n") == 1
    assert prompt_store.entries() == [entry]


def test_quantize_into_a_read_only_cache_names_the_path(
    tiny_model: Path, infer_home: Path, can_mount_read_only: None
) -> None:
    (infer_home / "cache").mkdir(parents=True)
    result = infer_read_only(infer_home / "cache", "quantize", str(tiny_model), "Q8_0", "-t", "1")
    line = one_line_error(result, "cannot write to", str(infer_home / "cache"), "read-only")
    assert "INFER_HOME" in line
    ok = run_infer("quantize", str(tiny_model), "Q8_0", "-t", "1")  # the store exists now
    assert ok.returncode == 0, ok.stderr
    result = infer_read_only(infer_home / "cache", "quantize", str(tiny_model), "Q4_0", "-t", "1")
    one_line_error(
        result, "cannot write to", str(infer_home / "cache" / "hub" / "tmp"), "read-only"
    )
    assert not list((infer_home / "cache" / "hub" / "tmp").glob("*"))


# --- a FIFO in the prompt cache ---------------------------------------------------------------
def test_a_fifo_named_like_a_prompt_cache_entry_does_not_hang_run(tiny_model: Path) -> None:
    args = ("run", str(tiny_model), TEXT, *RUN_FLAGS)
    first = run_infer(*args)
    assert first.returncode == 0, first.stderr
    [entry] = prompt_store.entries()
    entry.path.unlink()
    os.mkfifo(entry.path)  # opening it for reading would wait for a writer forever
    os.mkfifo(entry.path.with_name("0" * 32 + prompt_store.SUFFIX))
    again = run_infer(*args, timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["text"] == json.loads(first.stdout)["text"]
    listing = run_infer("cache", "list", "--json", timeout=60)
    assert len(json.loads(listing.stdout)["entries"]) == 1  # the new entry, not the FIFO
    assert run_infer("cache", "clear", timeout=60).returncode == 0


# --- a damaged manifest in the model cache ----------------------------------------------------
@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with FakeHub() as hub:
        hub.add_repo(REPO, {"tiny-Q4_K_M.gguf": tiny_gguf(0), "tiny-Q8_0.gguf": tiny_gguf(1)})
        yield {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}  # fmt: skip


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    return result.stdout.decode()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def bad_refs(path: Path) -> None:
    data = json.loads(path.read_text())
    data["refs"] = "me/tiny-gguf@#default"  # a string: once read as a tuple of characters
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [truncate, bad_refs], ids=["truncated", "bad-refs"])
def test_a_damaged_manifest_is_listed_removed_and_repaired(
    env: dict[str, str], damage: object
) -> None:
    name = f"{REPO}:Q4_K_M"
    ok(run_infer("pull", name, env=env))
    [manifest] = (cache.root() / "manifests").rglob("*.json")
    damage(manifest)  # type: ignore[operator]

    listed = run_infer("list", env=env)
    lines = ok(listed).splitlines()
    assert lines[1].split()[1] == "(damaged)" and lines[2].startswith("1 model, 470.0 kB in ")
    assert "infer: warning: " in listed.stderr.decode() and str(manifest) in listed.stderr.decode()
    [row] = json.loads(ok(run_infer("list", "--json", env=env)))["models"]
    assert row["damaged"] and row["path"] == str(manifest) and row["size"] == len(tiny_gguf(0))

    shown = run_infer("show", name, env=env)
    one_line_error(shown, "damaged", str(manifest), f"infer pull {name}", f"infer rm {name}")
    ok(run_infer("pull", name, env=env))  # repairs it: no damaged row, the same blob
    assert [m["name"] for m in json.loads(ok(run_infer("list", "--json", env=env)))["models"]] == [
        name
    ]
    assert "architecture    llama" in ok(run_infer("show", name, env=env))

    damage(manifest)  # type: ignore[operator]
    removed = ok(run_infer("rm", name, env=env))
    assert removed == f"removed the damaged manifest {manifest} (470.0 kB freed)\n"
    after = json.loads(ok(run_infer("list", "--json", env=env)))
    assert after["models"] == [] and after["total_bytes"] == 0


def test_a_damaged_manifest_keeps_its_blob_through_another_pull(env: dict[str, str]) -> None:
    ok(run_infer("pull", f"{REPO}:Q4_K_M", env=env))
    [manifest] = (cache.root() / "manifests").rglob("*.json")
    truncate(manifest)
    ok(run_infer("pull", f"{REPO}:Q8_0", env=env))  # collects garbage afterwards
    assert json.loads(ok(run_infer("list", "--json", env=env)))["total_bytes"] == 2 * len(
        tiny_gguf(0)
    )
    out = ok(run_infer("run", f"{REPO}:Q4_K_M", "hi", "-n", "2", env=env))  # repairs it
    assert out
    names = sorted(
        m["name"] for m in json.loads(ok(run_infer("list", "--json", env=env)))["models"]
    )
    assert names == [f"{REPO}:Q4_K_M", f"{REPO}:Q8_0"]


def test_a_fifo_in_place_of_a_manifest_is_damaged_not_a_hang(env: dict[str, str]) -> None:
    name = f"{REPO}:Q4_K_M"
    ok(run_infer("pull", name, env=env))
    [manifest] = (cache.root() / "manifests").rglob("*.json")
    manifest.unlink()
    os.mkfifo(manifest)
    [row] = json.loads(ok(run_infer("list", "--json", env=env, timeout=60)))["models"]
    assert row["damaged"] == "unreadable (not a regular file)" and row["name"] == REPO.lower()
    removed = ok(run_infer("rm", name, env=env, timeout=60))
    assert removed == f"removed the damaged manifest {manifest} (470.0 kB freed)\n"
