"""Multimodal projectors in the store: `infer pull` fetches a repository's mmproj with its model
(chosen as llama.cpp's -hf chooses), verified and recorded; `list`/`show` say what the model
takes in; `rm` removes the projector unless another model uses it; models.toml's `mmproj`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infer.runtime import errors
from infer.runtime.models import hub_cache as cache
from infer.runtime.models import projector, pull, resolve, selection
from infer.runtime.models.refs import HubRef, parse_ref
from infer.runtime.models.registry import load_registry
from infer.runtime.progress import NullProgress

from .conftest import run_infer
from .fake_hub import FakeHub, point_env_at, tiny_gguf
from .test_store import cache_files
from .tiny_projector import projector_bytes, write_header_projector

REPO = "me/see-GGUF"
TEXT_REPO = "me/text-GGUF"


@pytest.fixture(scope="module")
def mm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("mmproj")
    return {
        "f16": projector_bytes(tmp, seed=0),
        "q8": projector_bytes(tmp, seed=1),
        "audio": projector_bytes(tmp, vision=False, audio=True, seed=2),
    }


@pytest.fixture
def hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, infer_home: Path, mm: dict[str, bytes]
) -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_repo(
            REPO,
            {
                "see-Q4_K_M.gguf": tiny_gguf(0),
                "see-Q8_0.gguf": tiny_gguf(1),
                "mmproj-see-F16.gguf": mm["f16"],
                "mmproj-see-Q8_0.gguf": mm["q8"],
            },
        )
        h.add_repo(TEXT_REPO, {"text-Q4_K_M.gguf": tiny_gguf(2)})
        point_env_at(h, monkeypatch, tmp_path)
        yield h


def ref(text: str) -> HubRef:
    r = parse_ref(text)
    assert isinstance(r, HubRef)
    return r


# --- which projector (pure, as common/download.cpp find_best_sibling) -------------------------
def pick(names: list[str], model: str) -> str | None:
    files = [selection.RemoteFile(n, 10, "0" * 64) for n in names]
    chosen = projector.choose_projector(files, model)
    return chosen.path if chosen else None


def test_the_projector_closest_in_bits_to_the_model_is_chosen() -> None:
    names = ["mmproj-x-f32.gguf", "mmproj-x-f16.gguf", "mmproj-x-Q8_0.gguf", "x-Q8_0.gguf"]
    assert pick(names, "x-Q8_0.gguf") == "mmproj-x-Q8_0.gguf"
    assert pick(names, "x-F16.gguf") == "mmproj-x-f16.gguf"
    assert pick(names, "x-Q4_K_M.gguf") == "mmproj-x-Q8_0.gguf"  # |8-4| < |16-4|
    assert pick(names[:2], "x-Q4_K_M.gguf") == "mmproj-x-f16.gguf"
    assert pick(["mmproj.gguf"], "x-Q4_K_M.gguf") == "mmproj.gguf"  # no tag: 0 bits, still one


def test_the_projector_must_be_in_the_models_folder_or_above_and_deepest_wins() -> None:
    names = ["mmproj-F16.gguf", "q4/mmproj-F16.gguf", "other/mmproj-F16.gguf", "README.md"]
    assert pick(names, "q4/x-Q4_K_M.gguf") == "q4/mmproj-F16.gguf"
    assert pick(names, "q8/x-Q8_0.gguf") == "mmproj-F16.gguf"
    assert pick(["sub/mmproj-F16.gguf"], "x-Q4_K_M.gguf") is None  # below the model: not its
    assert pick(["x-Q8_0.gguf"], "x-Q4_K_M.gguf") is None


# --- pull, list, show, rm ---------------------------------------------------------------------
def test_pull_fetches_verifies_and_records_the_projector(
    hub: FakeHub, mm: dict[str, bytes]
) -> None:
    m = pull.pull(ref(f"{REPO}:Q8_0"))
    assert m.mmproj is not None and m.mmproj.path == "mmproj-see-Q8_0.gguf"
    assert m.mmproj.sha256 == hub.sha256(REPO, "mmproj-see-Q8_0.gguf")
    found = projector.projector_for(resolve.resolve(f"{REPO}:Q8_0").path)
    assert found is not None and found.read_bytes() == mm["q8"]
    assert projector.capabilities(found) == ["vision"]
    before = len(hub.requests)
    pull.pull(ref(f"{REPO}:Q8_0"))  # everything cached: listing only, no download
    assert hub.count("GET", "/resolve/") == 2 and len(hub.requests) == before + 1


def test_a_text_only_model_has_no_projector(hub: FakeHub) -> None:
    m = pull.pull(ref(TEXT_REPO))
    assert m.mmproj is None
    assert projector.projector_for(resolve.resolve(TEXT_REPO).path) is None


@pytest.mark.parametrize("broken", ["tamper", "ctrl-c"])
def test_a_projector_that_fails_leaves_nothing_installed(hub: FakeHub, broken: str) -> None:
    if broken == "tamper":
        hub.tamper.add("mmproj-see-Q8_0.gguf")
        with pytest.raises(errors.ChecksumError, match=r"mmproj-see-Q8_0\.gguf"):
            pull.pull(ref(REPO))
    else:

        class CtrlCOnProjector(NullProgress):
            def start(self, filename: str, total: int, done: int) -> None:
                if "mmproj" in filename:
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            pull.pull(ref(REPO), progress=CtrlCOnProjector())
    assert cache_files() == []  # the model's verified blob too: no manifest names it
    assert cache.manifests() == []


def test_a_projector_file_that_is_no_projector_is_refused(hub: FakeHub) -> None:
    hub.add_repo("me/odd-GGUF", {"odd-Q4_K_M.gguf": tiny_gguf(0), "mmproj-odd.gguf": tiny_gguf(1)})
    with pytest.raises(errors.ModelFileError, match="not a multimodal projector"):
        pull.pull(ref("me/odd-GGUF"))
    assert cache_files() == []


def test_rm_removes_the_projector_unless_another_model_uses_it(
    hub: FakeHub, mm: dict[str, bytes]
) -> None:
    # Q4_K_M and Q8_0 of one repository share the Q8_0 projector (closest to 4 bits).
    q4, q8 = pull.pull(ref(f"{REPO}:Q4_K_M")), pull.pull(ref(f"{REPO}:Q8_0"))
    assert q4.mmproj == q8.mmproj
    proj = cache.mmproj_path(q8)
    assert proj is not None
    assert cache.remove(q4) == len(tiny_gguf(0))  # the shared projector stays
    assert proj.read_bytes() == mm["q8"]
    assert cache.remove(q8) == len(tiny_gguf(1)) + len(mm["q8"])
    assert cache_files() == [] and not proj.exists()


# --- models.toml -------------------------------------------------------------------------------
def write_models_toml(home: Path, text: str) -> Path:
    path = home / "config" / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_models_toml_mmproj_names_the_projector_of_an_entry(
    hub: FakeHub, infer_home: Path, tmp_path: Path
) -> None:
    ears = write_header_projector(tmp_path / "audio-mmproj.gguf", vision=False, audio=True)
    config = write_models_toml(
        infer_home,
        f'[models.ears]\nhub = "{TEXT_REPO}"\nmmproj = "{ears}"\n'
        f'[models.rel]\nhub = "{REPO}:Q8_0"\nmmproj = "mine.gguf"\n',
    )
    spec = load_registry()["rel"]
    assert spec.mmproj == config.parent / "mine.gguf"  # relative: from the file's folder
    pull.pull(ref(TEXT_REPO))
    found = projector.projector_for(resolve.resolve("ears").path)
    assert found is not None and projector.capabilities(found) == ["audio"]


@pytest.mark.parametrize(
    ("value", "words"),
    [("1", "must be a string"), ('"notes.txt"', "projector .gguf"), ('""', "projector .gguf")],
)
def test_a_bad_mmproj_key_names_the_file_entry_and_field(
    infer_home: Path, value: str, words: str
) -> None:
    config = write_models_toml(infer_home, f'[models.x]\nhub = "a/b"\nmmproj = {value}\n')
    with pytest.raises(errors.ConfigError) as e:
        load_registry()
    assert str(e.value).startswith(f"{config}: models.x.mmproj")
    assert words in str(e.value)


# --- the CLI, as a user meets it -------------------------------------------------------------
def test_list_and_show_say_which_models_see_images(hub: FakeHub, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}

    def infer(*args: str) -> str:
        result: subprocess.CompletedProcess[bytes] = run_infer(*args, env=env)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        return result.stdout.decode()

    pulled = infer("pull", f"{REPO}:Q8_0")
    assert "+ projector mmproj-see-Q8_0.gguf" in pulled
    infer("pull", TEXT_REPO)
    rows = {line.split()[0]: line.split()[2] for line in infer("list").splitlines()[1:3]}
    assert rows == {f"{REPO}:Q8_0": "vision", f"{TEXT_REPO}:Q4_K_M": "-"}
    models = {m["name"]: m for m in json.loads(infer("list", "--json"))["models"]}
    assert models[f"{REPO}:Q8_0"]["capabilities"] == ["vision"]
    assert models[f"{REPO}:Q8_0"]["mmproj"].endswith("mmproj-see-Q8_0.gguf")
    assert models[f"{TEXT_REPO}:Q4_K_M"]["capabilities"] == []
    shown = json.loads(infer("show", f"{REPO}:Q8_0", "--json"))
    assert shown["capabilities"] == ["vision"]
    assert shown["source"]["mmproj"]["sha256"] == hub.sha256(REPO, "mmproj-see-Q8_0.gguf")
    assert "media           vision" in infer("show", f"{REPO}:Q8_0")
    assert "none (text only)" in infer("show", TEXT_REPO)


def test_infer_rm_keeps_a_projector_another_model_uses(hub: FakeHub, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}

    def infer(*args: str) -> str:
        result: subprocess.CompletedProcess[bytes] = run_infer(*args, env=env)
        assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
        return result.stdout.decode()

    infer("pull", f"{REPO}:Q4_K_M")
    infer("pull", f"{REPO}:Q8_0")  # the same projector: closest to 4 bits and to 8
    proj = hub.sha256(REPO, "mmproj-see-Q8_0.gguf")
    assert f"blobs/{proj}" in cache_files()
    infer("rm", f"{REPO}:Q4_K_M")
    assert f"blobs/{proj}" in cache_files()
    assert json.loads(infer("show", f"{REPO}:Q8_0", "--json"))["capabilities"] == ["vision"]
    infer("rm", f"{REPO}:Q8_0")
    assert cache_files() == []


def test_a_manifest_whose_projector_leaves_the_cache_is_damaged(hub: FakeHub) -> None:
    m = pull.pull(ref(f"{REPO}:Q8_0"))
    [path] = (cache.root() / "manifests").rglob("*.json")
    data = json.loads(path.read_text())
    data["mmproj"]["path"] = "../../../evil.gguf"
    path.write_text(json.dumps(data))
    good, damaged = cache.scan()
    assert good == [] and [d.name for d in damaged] == [m.name]
    assert m.mmproj is not None and m.mmproj.sha256 in damaged[0].blobs  # kept until repaired
    assert pull.pull(ref(f"{REPO}:Q8_0")).mmproj == m.mmproj  # a pull rewrites it
