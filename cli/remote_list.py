"""`infer list --remote URL`, and the client every `--remote` command opens (kept apart from
cli/remote.py, which reaches the batch code, so that `infer list` imports no more than this)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import UsageError

from . import output
from .inputs import read_file

if TYPE_CHECKING:
    from infer.runtime.remote import Remote


def connect(url: str, args: dict[str, Any]) -> Remote:
    """The client of `url`, with the key of --api-key-file or --api-key and --timeout."""
    from infer.runtime.remote import Remote

    key = args.get("api_key")
    if args.get("api_key_file"):
        key = read_file(args["api_key_file"]).strip()
        if not key:
            raise UsageError(f"--api-key-file {args['api_key_file']}: the file is empty")
    timeout = args.get("timeout")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds (got {timeout:g})")
    return Remote(url, api_key=key or None, timeout=timeout)


def list_remote(url: str, *, json_out: bool, api_key: str | None, api_key_file: str | None,
                timeout: float | None) -> None:  # fmt: skip
    """The remote's /v1/models: a table of ids and owners, or its entries as JSON."""
    args = {"api_key": api_key, "api_key_file": api_key_file, "timeout": timeout}
    with connect(url, args) as remote:
        models = remote.models()
    if json_out:
        output.write_answer(json.dumps({"remote": url, "models": models}, indent=2) + "\n")
        return
    rows = [[m["id"], str(m.get("owned_by") or "-")] for m in models]
    if rows:
        output.write_answer(output.table(["NAME", "OWNED BY"], rows))
    output.write_answer(f"{len(rows)} model{'s' if len(rows) != 1 else ''} on {url}\n")
