"""`infer list --remote URL`, and the client every `--remote` command opens (kept apart from
cli/remote.py, which reaches the batch code, so that `infer list` imports no more than this)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infer.runtime.errors import UsageError

from . import output
from .inputs import read_file

if TYPE_CHECKING:
    from infer.runtime.remote import Remote


@dataclass(frozen=True)
class RemoteFlags:
    """--remote, --api-key, --api-key-file and --timeout as given (flag or environment)."""

    url: str | None = None
    api_key: str | None = None
    api_key_file: str | None = None
    timeout: float | None = None

    def any(self) -> bool:
        return bool(self.url or self.api_key or self.api_key_file) or self.timeout is not None


def connect(url: str, flags: RemoteFlags) -> Remote:
    """The client of `url`, with the key of --api-key-file or --api-key and --timeout."""
    from infer.runtime.remote import Remote

    key = flags.api_key
    if flags.api_key_file:
        key = read_file(flags.api_key_file).strip()
        if not key:
            raise UsageError(f"--api-key-file {flags.api_key_file}: the file is empty")
    timeout = flags.timeout
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds (got {timeout:g})")
    return Remote(url, api_key=key or None, timeout=timeout)


def list_remote(
    url: str,
    *,
    json_out: bool,
    api_key: str | None,
    api_key_file: str | None,
    timeout: float | None,
) -> None:
    """The remote's /v1/models: a table of ids and owners, or its entries as JSON."""
    with connect(url, RemoteFlags(url, api_key, api_key_file, timeout)) as remote:
        models = remote.models()
    if json_out:
        output.write_answer(json.dumps({"remote": url, "models": models}, indent=2) + "\n")
        return
    rows = [[m["id"], str(m.get("owned_by") or "-")] for m in models]
    if rows:
        output.write_answer(output.table(["NAME", "OWNED BY"], rows))
    output.write_answer(f"{len(rows)} model{'s' if len(rows) != 1 else ''} on {url}\n")
