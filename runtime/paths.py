"""Where infer keeps its files. Read from the environment on every call, never frozen at import,
so tests (and users) can relocate everything with one variable: INFER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

APP = "infer"


def _dir(kind: str) -> Path:
    """$INFER_HOME/<kind> when set, else the platform's user_<kind>_dir (platformdirs)."""
    home = os.environ.get("INFER_HOME")
    if home:
        return Path(home).expanduser() / kind
    import platformdirs

    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP, appauthor=False))


def config_dir() -> Path:
    """User configuration (models.toml)."""
    return _dir("config")


def cache_dir() -> Path:
    """Downloaded models and prompt caches."""
    return _dir("cache")


def state_dir() -> Path:
    """REPL history, saved chats, benchmark history."""
    return _dir("state")


def user_models_file() -> Path:
    return config_dir() / "models.toml"


def runtime_dir() -> Path:
    """Per-user files of running processes (the decoding registry of runtime/llama/core_share.py).
    Not under INFER_HOME: the cores it shares belong to the machine, whatever a process's home.
    $INFER_RUNTIME_DIR, else $XDG_RUNTIME_DIR/infer, else infer-UID in the temporary directory
    (platformdirs' own fallback warns on stderr; the caller checks who owns the folder)."""
    override = os.environ.get("INFER_RUNTIME_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / APP
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"{APP}-{uid}"
