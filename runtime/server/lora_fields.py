"""The `lora` field of a request, as llama-server takes it: `[{"id": 0, "scale": 0.5}, ...]`,
for the OpenAI doors and `POST /lora-adapters` (lora_routes.py). Plain data in, OptionError
naming the entry's field out: each door words it in its own error shape."""

from __future__ import annotations

from typing import Any

from ..errors import OptionError
from ..params import check_lora_scale

MAX_ADAPTERS = 64  # entries in one list: more than any server loads


def parse_lora(value: Any, field: str = "lora") -> dict[int, float] | None:
    """A `lora` field ([{id, scale}, ...]) as {id: scale}; None when absent or empty (the
    server's scales apply). OptionError naming the entry's field otherwise."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise OptionError(field, "must be an array of {id, scale}")
    if len(value) > MAX_ADAPTERS:
        raise OptionError(field, f"at most {MAX_ADAPTERS} entries")
    scales: dict[int, float] = {}
    for i, entry in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise OptionError(where, "must be an object {id, scale}")
        unknown = set(entry) - {"id", "scale"}
        if unknown:
            raise OptionError(where, f"has an unknown field '{sorted(unknown)[0]}'")
        ident = entry.get("id")
        if not isinstance(ident, int) or isinstance(ident, bool) or ident < 0:
            raise OptionError(
                f"{where}.id", f"must be an adapter's id, an integer >= 0 (got {ident!r})"
            )
        try:
            scales[ident] = check_lora_scale(entry.get("scale", 0.0))
        except OptionError as e:
            raise OptionError(f"{where}.scale", e.problem.removeprefix("scale ")) from None
    return scales
