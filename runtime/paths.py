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
