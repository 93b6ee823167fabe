"""`infer pull / list / show / rm` and `infer run` of a Hub model, end to end: the installed
console script in a subprocess, the real huggingface_hub client, the loopback fake hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime.models.gguf import read_header

from .conftest import INFER, run_infer
from .fake_hub import FakeHub, split_gguf, tiny_gguf

REPO = "me/tiny-GGUF"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_repo(
            REPO,
            {"tiny-Q4_K_M.gguf": tiny_gguf(0), "tiny-Q8_0.gguf": tiny_gguf(1)},
            license="apache-2.0",
        )
        yield h


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """Online, against the fake hub; huggingface_hub's own files (token, telemetry) in tmp."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": "",
    }


def infer(env: dict[str, str], *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return run_infer(*args, env=env, **kw)  # type: ignore[arg-type]


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err and "\x1b[" not in err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("infer: error: "), err
    for word in words:
        assert word in lines[-1], err
    return lines[-1]


def listing(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(ok(infer(env, "list", "--json")))


# --- pull ------------------------------------------------------------------------------------
def test_pull_chooses_q4_k_m_and_says_so(env: dict[str, str]) -> None:
    result = infer(env, "pull", REPO)
    assert ok(result) == f"pulled {REPO}:Q4_K_M (tiny-Q4_K_M.gguf, 470.0 kB, sha256 verified)\n"
    err = result.stderr.decode()
    assert "no quant tag given: using Q4_K_M" in err
    assert "downloading tiny-Q4_K_M.gguf" in err and "\x1b[" not in err  # plain lines, no TTY


def test_pull_with_a_lower_case_tag_and_an_exact_file(env: dict[str, str]) -> None:
    assert f"pulled {REPO}:Q8_0" in ok(infer(env, "pull", "me/tiny-gguf:q8_0"))
    ok(infer(env, "pull", f"hf://{REPO}/tiny-Q4_K_M.gguf"))
    names = [m["name"] for m in listing(env)["models"]]
    assert sorted(names) == [f"{REPO}:Q4_K_M", f"{REPO}:Q8_0"]


def test_ambiguous_tag_lists_the_candidates(hub: FakeHub, env: dict[str, str]) -> None:
    hub.add_repo("me/two-GGUF", {"a-Q8_0.gguf": tiny_gguf(0), "b-Q8_0.gguf": tiny_gguf(1)})
    one_line_error(infer(env, "pull", "me/two-GGUF:Q8_0"), "a-Q8_0.gguf", "b-Q8_0.gguf")


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("me/missing-GGUF", ["'me/missing-GGUF' not found", "HF_TOKEN"]),
        (f"{REPO}:Q5_K_M", ["'Q5_K_M'", "available: Q4_K_M, Q8_0"]),
        (f"hf://{REPO}/other.gguf", ["other.gguf", "tiny-Q4_K_M.gguf, tiny-Q8_0.gguf"]),
        ("org/gated-GGUF", ["gated", "HF_TOKEN"]),
    ],
)
def test_hub_errors_are_one_line(
    hub: FakeHub, env: dict[str, str], ref: str, words: list[str]
) -> None:
    hub.add_repo("org/gated-GGUF", {"g-Q4_K_M.gguf": tiny_gguf(2)}, gated=True)
    one_line_error(infer(env, "pull", ref), *words)
    assert listing(env)["models"] == []


def test_network_down_says_cached_models_work_offline(env: dict[str, str]) -> None:
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    one_line_error(infer(env, "pull", REPO), "cannot reach the Hub", "work offline")


def test_tampered_bytes_are_rejected(hub: FakeHub, env: dict[str, str]) -> None:
    hub.tamper.add("tiny-Q4_K_M.gguf")
    one_line_error(infer(env, "pull", REPO), "checksum mismatch", "tiny-Q4_K_M.gguf", "deleted")
    assert listing(env)["models"] == [] and listing(env)["total_bytes"] == 0


def test_a_dropped_connection_leaves_no_model_and_pulling_again_works(
    hub: FakeHub, env: dict[str, str]
) -> None:
    hub.drop_at["tiny-Q4_K_M.gguf"] = 300_000
    one_line_error(infer(env, "pull", REPO), "cannot reach the Hub")
    assert listing(env)["models"] == []
    one_line_error(infer({**env, "HF_HUB_OFFLINE": "1"}, "run", REPO, "hi"), "infer pull")
    hub.drop_at.clear()
    ok(infer(env, "pull", REPO))
    assert [m["name"] for m in listing(env)["models"]] == [f"{REPO}:Q4_K_M"]


def test_path_traversal_references_are_rejected(hub: FakeHub, env: dict[str, str]) -> None:
    for ref in ("hf://me/tiny-GGUF/../../x.gguf", "me/..:Q4_K_M", "me/tiny-GGUF@../../x"):
        one_line_error(infer(env, "pull", ref), "invalid")
    assert hub.requests == []


def test_two_concurrent_pulls_end_with_one_good_copy(hub: FakeHub, env: dict[str, str]) -> None:
    big = tiny_gguf(0) + bytes(4 << 20)  # a valid header, then padding, so the pulls overlap
    hub.add_repo("me/big-GGUF", {"big-Q4_K_M.gguf": big})
    hub.throttle = 0.25  # about 1.3 s per transfer: far longer than the two start-ups differ
    assert INFER
    procs = [
        subprocess.Popen(
            [INFER, "pull", "me/big-GGUF"], env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]  # fmt: skip
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        errs.append(err.decode())
    assert sum("waiting for another infer pull" in e for e in errs) == 1, errs
    assert hub.count("GET", "/resolve/") == 1  # the second one waited, then found the file
    [model] = listing(env)["models"]
    assert model["size"] == len(big) and listing(env)["total_bytes"] == len(big)


# --- run, offline ----------------------------------------------------------------------------
def test_run_pulls_then_runs(hub: FakeHub, env: dict[str, str]) -> None:
    result = infer(env, "run", f"{REPO}:Q8_0", "hi", "-n", "4", "--temperature", "0")
    ok(result)
    assert "downloading tiny-Q8_0.gguf" in result.stderr.decode()
    assert hub.count("GET", "/resolve/") == 1


def test_run_of_a_split_model(hub: FakeHub, env: dict[str, str], tiny_model: Path) -> None:
    names = [f"Q4_K_M/tiny-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    hub.add_repo("me/split-GGUF", dict(zip(names, split_gguf(0), strict=True)))
    ok(infer(env, "run", "me/split-GGUF", "hi", "-n", "4", "--temperature", "0"))
    assert hub.count("GET", "/resolve/") == 3
    shown = json.loads(ok(infer(env, "show", "me/split-GGUF", "--json")))
    assert [f["path"] for f in shown["source"]["files"]] == names
    assert shown["parameters"] == read_header(tiny_model).parameter_count  # all parts counted


def test_offline_run_and_show_of_a_cached_model_make_no_request(
    hub: FakeHub, env: dict[str, str]
) -> None:
    ok(infer(env, "pull", REPO))
    hub.requests.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    ok(infer(offline, "run", REPO, "hi", "-n", "4"))
    ok(infer(env, "run", REPO, "hi", "-n", "4"))  # online too: a cached model needs no request
    ok(infer(env, "show", REPO))
    ok(infer(env, "list"))
    assert hub.requests == []


def test_offline_with_a_missing_model_names_the_pull_command(
    hub: FakeHub, env: dict[str, str]
) -> None:
    result = infer({**env, "HF_HUB_OFFLINE": "1"}, "run", f"{REPO}:Q8_0", "hi")
    one_line_error(result, "offline", f"infer pull {REPO}:Q8_0")
    one_line_error(infer(env, "show", f"{REPO}:Q8_0"), f"infer pull {REPO}:Q8_0")
    # --offline works the same with the Hub reachable and HF_HUB_OFFLINE unset.
    flagged = infer(env, "run", f"{REPO}:Q8_0", "hi", "--offline")
    one_line_error(flagged, "offline", f"infer pull {REPO}:Q8_0")
    assert hub.requests == []


# --- list, show, rm --------------------------------------------------------------------------
def test_list_text_and_json(hub: FakeHub, env: dict[str, str], infer_home: Path) -> None:
    (infer_home / "config").mkdir(parents=True)
    (infer_home / "config" / "models.toml").write_text(f'[models.tiny]\nhub = "{REPO}:Q8_0"\n')
    empty = ok(infer(env, "list"))
    assert empty.startswith("0 models, 0 B in ")
    ok(infer(env, "pull", "tiny"))
    ok(infer(env, "pull", REPO))
    lines = ok(infer(env, "list")).splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "MEDIA", "SIZE", "MODIFIED", "ALIASES"]
    assert lines[1].split() == [f"{REPO}:Q4_K_M", "F32", "-", "470.0", "kB", "just", "now"]
    assert lines[2].split() == [f"{REPO}:Q8_0", "F32", "-", "470.0", "kB", "just", "now", "tiny"]
    assert lines[3].startswith("2 models, 940.0 kB in ")
    data = listing(env)
    assert set(data) == {"models", "total_bytes", "partial_bytes", "cache_dir"}
    model = data["models"][1]
    assert set(model) == {
        "name", "repo", "revision", "commit", "quantization", "size", "modified", "path",
        "aliases", "complete", "files", "mmproj", "capabilities",
    }  # fmt: skip
    assert model["aliases"] == ["tiny"] and model["commit"] == hub.repos[REPO].commit
    assert model["files"][0]["sha256"] == hub.sha256(REPO, "tiny-Q8_0.gguf")
    aliases = json.loads(ok(infer(env, "list", "--aliases", "--json")))["aliases"]
    assert {"name": "tiny", "status": "cached"}.items() <= aliases[-1].items()


def test_show_text_json_and_template(hub: FakeHub, env: dict[str, str]) -> None:
    ok(infer(env, "pull", REPO))
    text = ok(infer(env, "show", REPO))
    for line in ("architecture    llama", "layers          2", "embedding size  64",
                 "chat template   yes", "license         apache-2.0", f"source          hf://{REPO}",
                 f"sha256          {hub.sha256(REPO, 'tiny-Q4_K_M.gguf')}"):  # fmt: skip
        assert line in text, text
    info = json.loads(ok(infer(env, "show", REPO, "--json")))
    assert {k: info[k] for k in ("architecture", "context_length", "layers", "embedding_size")} == {
        "architecture": "llama", "context_length": 256, "layers": 2, "embedding_size": 64,
    }  # fmt: skip
    assert info["source"]["commit"] == hub.repos[REPO].commit
    template = ok(infer(env, "show", REPO, "--template"))
    assert template.startswith("{% for m in messages %}")


def test_show_of_a_local_file(tiny_model: Path, env: dict[str, str]) -> None:
    info = json.loads(ok(infer(env, "show", str(tiny_model), "--json")))
    assert info["source"] == {"type": "file", "path": str(tiny_model.resolve())}


def test_rm_reports_bytes_freed_and_keeps_shared_files(hub: FakeHub, env: dict[str, str]) -> None:
    hub.add_repo("other/copy-GGUF", {"copy-Q4_K_M.gguf": tiny_gguf(0)})
    ok(infer(env, "pull", REPO))
    ok(infer(env, "pull", "other/copy-GGUF"))
    ok(infer(env, "pull", f"{REPO}:Q8_0"))
    assert ok(infer(env, "rm", REPO)) == f"removed {REPO}:Q4_K_M (0 B freed)\n"
    out = ok(infer(env, "rm", "other/copy-GGUF", f"{REPO}:q8_0"))
    assert out.splitlines() == [
        "removed other/copy-GGUF:Q4_K_M (470.0 kB freed)",
        "removed me/tiny-GGUF:Q8_0 (470.0 kB freed)",
    ]
    assert listing(env)["models"] == [] and listing(env)["total_bytes"] == 0
    one_line_error(infer(env, "rm", REPO), "not in the cache")


def test_list_does_not_import_the_hub_client_or_llama_cpp(env: dict[str, str]) -> None:
    code = (
        "import sys\nfrom infer.cli.app import main\n"
        "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY:' + ','.join(m for m in ('llama_cpp', 'huggingface_hub', 'numpy')"
        " if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=30, env={**os.environ, **env}
    )
    assert result.stdout.decode().splitlines()[-1] == "HEAVY:", result.stderr
