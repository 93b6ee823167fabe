"""Where infer keeps its files. Read from the environment on every call, never frozen at import,
so tests (and users) can relocate everything with one variable: INFER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

APP = "infer"


def _home() -> Path | None:
    home = os.environ.get("INFER_HOME")
    return Path(home).expanduser() if home else None


def config_dir() -> Path:
    """User configuration (models.toml)."""
    home = _home()
    if home:
        return home / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """Downloaded models and prompt caches."""
    home = _home()
    if home:
        return home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def state_dir() -> Path:
    """REPL history, saved chats, benchmark history."""
    home = _home()
    if home:
        return home / "state"
    import platformdirs

    return Path(platformdirs.user_state_dir(APP, appauthor=False))


def user_models_file() -> Path:
    return config_dir() / "models.toml"
