"""The model store in-process: quant selection, pull into the verified cache, resolve offline,
remove. Every Hub request goes to the loopback fake hub, through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime import errors
from infer.runtime.models import hub_cache as cache
from infer.runtime.models import pull, selection
from infer.runtime.models import resolve as store
from infer.runtime.models.refs import HubRef, parse_ref
from infer.runtime.progress import NullProgress

from .fake_hub import TOKEN, FakeHub, point_env_at, split_gguf, tiny_gguf

REPO = "me/tiny-GGUF"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A fake hub with one three-quant repository, and the environment pointing at it."""
    with FakeHub() as h:
        h.add_repo(
            REPO,
            {"tiny-Q4_K_M.gguf": tiny_gguf(0), "tiny-Q8_0.gguf": tiny_gguf(1), "README.md": b"hi"},
            license="apache-2.0",
        )
        point_env_at(h, monkeypatch, tmp_path)
        yield h


def hub_ref(text: str) -> HubRef:
    ref = parse_ref(text)
    assert isinstance(ref, HubRef)
    return ref


def cache_files() -> list[str]:
    """Everything in the cache that could count as a model: manifests and blobs."""
    root = cache.root()
    return sorted(
        str(p.relative_to(root))
        for sub in ("manifests", "blobs")
        for p in (root / sub).rglob("*")
        if p.is_file()
    )


# --- quant selection (pure) ------------------------------------------------------------------
def files(*names: str) -> list[selection.RemoteFile]:
    return [selection.RemoteFile(n, 10, "0" * 64) for n in names]


def choose(names: list[str], text: str) -> selection.Choice:
    return selection.choose(files(*names), hub_ref(text))


def test_default_quant_is_q4_k_m_and_says_so() -> None:
    choice = choose(["m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf"], "o/r")
    assert choice.primary.path == "m-Q4_K_M.gguf"
    assert choice.note and "Q4_K_M" in choice.note


def test_quant_tag_is_case_insensitive_and_matches_whole_name_parts() -> None:
    names = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-IQ4_XS.gguf", "m-BF16.gguf", "m-F16.gguf"]
    assert choose(names, "o/r:q4_k_s").primary.path == "m-Q4_K_S.gguf"
    assert choose(names, "o/r:f16").primary.path == "m-F16.gguf"  # not BF16
    with pytest.raises(errors.HubFileNotFoundError) as e:
        choose(names, "o/r:Q4_K")  # a prefix of Q4_K_M is not Q4_K_M
    assert e.value.available == ["BF16", "F16", "IQ4_XS", "Q4_K_M", "Q4_K_S"]


def test_without_q4_k_m_the_only_or_first_gguf_is_chosen() -> None:
    only = choose(["README.md", "model.Q8_0.gguf"], "o/r")
    assert only.primary.path == "model.Q8_0.gguf" and "only" in (only.note or "")
    first = choose(["b-Q8_0.gguf", "a-Q6_K.gguf"], "o/r")
    assert first.primary.path == "a-Q6_K.gguf" and "Q8_0" in (first.note or "")


def test_several_matches_are_an_error_listing_the_candidates() -> None:
    with pytest.raises(errors.AmbiguousModelError) as e:
        choose(["m-Q4_K_M.gguf", "m-Q4_K_M-imat.gguf", "m-Q8_0.gguf"], "o/r:Q4_K_M")
    assert e.value.candidates == ["m-Q4_K_M-imat.gguf", "m-Q4_K_M.gguf"]
    assert "m-Q4_K_M-imat.gguf" in str(e.value) and "hf://o/r/" in str(e.value)


def test_no_gguf_at_all_is_an_error() -> None:
    with pytest.raises(errors.HubFileNotFoundError, match=r"no \.gguf files"):
        choose(["README.md", "model.safetensors"], "o/r")


def test_split_models_are_one_model_and_mmproj_is_not_a_model() -> None:
    names = [
        "Q8_0/m-Q8_0-00002-of-00002.gguf",
        "Q8_0/m-Q8_0-00001-of-00002.gguf",
        "m-Q4_K_M-00001-of-00003.gguf",  # incomplete: part 2 and 3 missing
        "mmproj-m-Q4_K_M.gguf",
    ]
    choice = choose(names, "o/r:Q8_0")
    assert [f.path for f in choice.files] == names[1::-1]
    with pytest.raises(errors.HubFileNotFoundError):
        choose(names, "o/r:Q4_K_M")
    part2 = choose(names, "hf://o/r/Q8_0/m-Q8_0-00002-of-00002.gguf")
    assert part2.primary.path == "Q8_0/m-Q8_0-00001-of-00002.gguf"  # the whole model


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("gemma-3-1b-it-bf16.gguf", "BF16"),
        ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("Qwen3-0.6B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("Q4_K_M/Qwen3-4B-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"),
        ("Qwen2-7B.gguf", None),
    ],
)
def test_quant_label(name: str, label: str | None) -> None:
    assert selection.quant_label(name) == label


# --- pull, resolve, offline ------------------------------------------------------------------
def test_pull_verifies_and_records_then_resolve_needs_no_network(hub: FakeHub) -> None:
    manifest = pull.pull(hub_ref(REPO))
    data = tiny_gguf(0)
    assert manifest.name == f"{REPO}:Q4_K_M"
    assert manifest.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.commit == hub.repos[REPO].commit and manifest.license == "apache-2.0"
    assert manifest.summary["architecture"] == "llama" and manifest.summary["parameters"] > 0
    before = len(hub.requests)
    for text in (REPO, "me/tiny-gguf:q4_k_m", f"hf://{REPO}/tiny-Q4_K_M.gguf", f"{REPO}@main"):
        resolved = store.resolve(text)
        assert resolved.path.read_bytes() == data
        assert resolved.name == f"{REPO}:Q4_K_M"
    assert len(hub.requests) == before  # not a single request


def test_pulling_again_fetches_no_file(hub: FakeHub) -> None:
    pull.pull(hub_ref(REPO))
    pull.pull(hub_ref(f"{REPO}:Q4_K_M"))
    assert hub.count("GET", "/resolve/") == 1
    assert len(cache.manifests()) == 1


def test_ensure_local_pulls_when_missing_and_not_when_cached(hub: FakeHub) -> None:
    resolved = store.ensure_local(f"{REPO}:Q8_0")
    assert resolved.path.read_bytes() == tiny_gguf(1)
    count = len(hub.requests)
    store.ensure_local(f"{REPO}:Q8_0")
    assert len(hub.requests) == count


def test_offline_with_a_cached_model_makes_zero_requests(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    pull.pull(hub_ref(REPO))
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert store.ensure_local(REPO).path.is_file()
    assert store.ensure_local(REPO, offline=True).path.is_file()
    assert hub.requests == []


def test_offline_with_a_missing_model_names_the_pull_command(hub: FakeHub) -> None:
    with pytest.raises(store.NotDownloadedError) as e:
        store.ensure_local(f"{REPO}:Q8_0", offline=True)
    assert f"infer pull {REPO}:Q8_0" in str(e.value) and "offline" in str(e.value)
    assert hub.requests == []


def test_an_alias_pulls_its_hub_reference(hub: FakeHub, infer_home: Path) -> None:
    config = infer_home / "config"
    config.mkdir(parents=True)
    (config / "models.toml").write_text(f'[models.tiny]\nhub = "{REPO}:Q8_0"\n')
    with pytest.raises(store.NotDownloadedError, match="infer pull tiny"):
        store.resolve("tiny")
    assert store.ensure_local("tiny").path.read_bytes() == tiny_gguf(1)
    hub.requests.clear()
    assert store.resolve("tiny").name == "tiny"
    assert hub.requests == []


def test_a_bundled_model_wins_without_network(hub: FakeHub, bundled_model: Path) -> None:
    hub.down = True
    assert store.ensure_local("smollm2").path == bundled_model
    assert hub.requests == []


def test_split_model_pulls_every_part_and_loads_the_first(hub: FakeHub) -> None:
    parts = split_gguf(0)
    names = [f"tiny-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    hub.add_repo("me/split-GGUF", dict(zip(names, parts, strict=True)))
    resolved = store.ensure_local("me/split-GGUF")
    assert resolved.path.name == names[0]
    assert sorted(p.name for p in resolved.path.parent.iterdir()) == names
    assert [p.read_bytes() for p in sorted(resolved.path.parent.iterdir())] == list(parts)


# --- failures leave nothing that counts as a model -----------------------------------------
def test_tampered_bytes_are_rejected_and_deleted(hub: FakeHub) -> None:
    hub.tamper.add("tiny-Q4_K_M.gguf")
    with pytest.raises(errors.ChecksumError, match="checksum mismatch"):
        pull.pull(hub_ref(REPO))
    assert cache_files() == []
    assert list((cache.root() / "tmp").iterdir()) == []
    with pytest.raises(store.NotDownloadedError):
        store.resolve(REPO)


def test_a_dropped_connection_is_resumed_with_a_range_request(hub: FakeHub) -> None:
    hub.drop_once["tiny-Q4_K_M.gguf"] = 100_000
    pull.pull(hub_ref(REPO))
    gets = [r for r in hub.requests if "/resolve/" in r.path]
    assert [r.headers.get("range") for r in gets] == [None, "bytes=100000-"]
    assert store.resolve(REPO).path.read_bytes() == tiny_gguf(0)


def test_a_connection_that_keeps_dropping_leaves_no_model_and_a_later_pull_resumes(
    hub: FakeHub,
) -> None:
    hub.drop_at["tiny-Q4_K_M.gguf"] = 200_000
    with pytest.raises(errors.NetworkError, match="work offline"):
        pull.pull(hub_ref(REPO))
    assert cache_files() == []
    [part] = (cache.root() / "tmp").iterdir()
    assert part.stat().st_size == 200_000
    hub.drop_at.clear()
    hub.requests.clear()
    pull.pull(hub_ref(REPO))
    assert [r.headers.get("range") for r in hub.requests if "/resolve/" in r.path] == [
        "bytes=200000-"
    ]
    assert store.resolve(REPO).path.read_bytes() == tiny_gguf(0)
    assert list((cache.root() / "tmp").iterdir()) == []


class _CtrlC(NullProgress):
    def advance(self, nbytes: int) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_mid_download_leaves_no_model(hub: FakeHub) -> None:
    with pytest.raises(KeyboardInterrupt):
        pull.pull(hub_ref(REPO), progress=_CtrlC())
    assert cache_files() == []
    pull.pull(hub_ref(REPO))
    assert store.resolve(REPO).path.read_bytes() == tiny_gguf(0)


def test_not_enough_disk_space_is_reported_before_downloading(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda _: _Usage(free=1_000_000))
    with pytest.raises(errors.DiskFullError, match="not enough disk space"):
        pull.pull(hub_ref(REPO))
    assert hub.count("GET", "/resolve/") == 0
    assert cache_files() == []


class _Usage:
    def __init__(self, free: int) -> None:
        self.total, self.used, self.free = free * 2, free, free


# --- Hub errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("me/missing-GGUF", errors.RepoNotFoundError, ["me/missing-GGUF", "not found", "HF_TOKEN"]),
        (f"{REPO}@v9", errors.RepoNotFoundError, ["revision 'v9'"]),
        (f"{REPO}:Q2_K", errors.HubFileNotFoundError, ["Q2_K", "available: Q4_K_M, Q8_0"]),
        (f"hf://{REPO}/nope.gguf", errors.HubFileNotFoundError, ["tiny-Q8_0.gguf"]),
    ],
)
def test_missing_repo_revision_and_file(
    hub: FakeHub, text: str, error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as e:
        pull.pull(hub_ref(text))
    for word in words:
        assert word in str(e.value)
    assert cache_files() == []


def test_a_gated_repo_asks_for_hf_token_and_works_with_it(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/gated-GGUF", {"g-Q4_K_M.gguf": tiny_gguf(2)}, gated=True)
    with pytest.raises(errors.GatedRepoError, match="HF_TOKEN"):
        pull.pull(hub_ref("org/gated-GGUF"))
    assert cache_files() == []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert pull.pull(hub_ref("org/gated-GGUF")).name == "org/gated-GGUF:Q4_K_M"


def test_network_down_says_cached_models_work_offline(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.down = True
    with pytest.raises(errors.NetworkError, match="still work offline"):
        pull.pull(hub_ref(REPO))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(errors.NetworkError, match=r"127\.0\.0\.1:9"):
        pull.pull(hub_ref(REPO))


def test_file_names_from_the_server_never_escape_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(
        "evil/repo-GGUF",
        {"../../../escape-Q4_K_M.gguf": tiny_gguf(3), "/abs-Q4_K_M.gguf": tiny_gguf(3)},
    )
    with pytest.raises(errors.HubFileNotFoundError, match=r"no \.gguf files"):
        pull.pull(hub_ref("evil/repo-GGUF"))
    assert not list(tmp_path.rglob("escape-*")) and not list(tmp_path.rglob("abs-*"))


def test_a_tampered_manifest_is_ignored(hub: FakeHub) -> None:
    manifest = pull.pull(hub_ref(REPO))
    [path] = (cache.root() / "manifests").rglob("*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    data["files"][0]["path"] = "../../../../etc/passwd"
    path.write_text(json.dumps(data))
    assert cache.manifests() == []
    with pytest.raises(store.NotDownloadedError):
        store.resolve(manifest.name)


# --- remove and garbage collection ----------------------------------------------------------
def test_rm_frees_only_blobs_no_other_model_uses(hub: FakeHub) -> None:
    hub.add_repo("other/copy-GGUF", {"copy-Q4_K_M.gguf": tiny_gguf(0)})  # the same bytes
    first = pull.pull(hub_ref(REPO))
    second = pull.pull(hub_ref("other/copy-GGUF"))
    assert hub.count("GET", "/resolve/") == 1  # the blob is shared, downloaded once
    assert cache.remove(first) == 0
    assert store.resolve("other/copy-GGUF").path.is_file()
    assert cache.remove(second) == len(tiny_gguf(0))
    assert cache_files() == []
    assert not any(p.is_file() for p in (cache.root() / "snapshots").rglob("*"))


def test_a_newer_commit_replaces_the_old_files(hub: FakeHub) -> None:
    pull.pull(hub_ref(REPO))
    hub.add_repo(REPO, {"tiny-Q4_K_M.gguf": tiny_gguf(4)})  # the repo moved on
    pull.pull(hub_ref(REPO))
    assert store.resolve(REPO).path.read_bytes() == tiny_gguf(4)
    assert [p.name for p in (cache.root() / "blobs").iterdir()] == [
        hashlib.sha256(tiny_gguf(4)).hexdigest()
    ]
