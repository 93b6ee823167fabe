"""What every door shares in reading a JSON body: `ApiError`, the refusal each door answers
with (`body()` is OpenAI's shape; the other doors reshape it), `invalid`, its 400 naming the
field, and the checks of the fields several doors read alike (a model's name, stop strings,
true/false, bounded integers) with their limits. Pure data: no HTTP, no starlette."""

from __future__ import annotations

from typing import Any

# more than any context infer loads; a larger value is a typo or an attack
MAX_TOKENS_LIMIT = 1 << 20
MAX_STOP = 16  # OpenAI allows 4
MAX_STOP_CHARS = 1024
MAX_PROMPTS = 64  # /v1/completions with a list of prompts
MAX_MODEL_CHARS = 512


class ApiError(Exception):
    """An answer in OpenAI's error shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str, code: str | None = None) -> ApiError:
    """A 400 that names the field (`param`) the client must fix."""
    return ApiError(400, message, param=param, code=code)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    """An integer field from `low` to `high` (absent or null: None), else a 400 naming it."""
    value = body.get(name)
    if value is None:
        return None
    if not is_int(value):
        raise invalid(name, f"'{name}' must be an integer (got {kind_of(value)})")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be between {low} and {high} (got {value})")
    return int(value)


def boolean(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """A true/false field (absent or null: `default`), else a 400 naming it."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"'{name}' must be true or false (got {kind_of(value)})")
    return value


def kind_of(value: Any) -> str:
    """A JSON value's kind in words, for 400s ("an array", "null")."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def model_name(
    body: dict[str, Any], invalid_name: str = "'model' is not a valid model name"
) -> str:
    """The model a body names; "" when it names none (absent, null or ""), which the backend
    answers with the first model named at start, as llama-server and vLLM do."""
    model = body.get("model")
    if model is None or model == "":
        return ""
    if not isinstance(model, str) or not model.strip():
        raise invalid("model", f"'model' must be a model's name (got {kind_of(model)})")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise invalid("model", invalid_name)
    return model


def stop_strings(body: dict[str, Any], *, drop_empty: bool = False) -> list[str]:
    """`stop`: a string or an array of at most MAX_STOP, each 1 to MAX_STOP_CHARS characters;
    `drop_empty`: "" is left out instead (llama-server's doors drop it)."""
    stop = body.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("stop", "'stop' must be a string or an array of strings")
    if drop_empty:
        items = [s for s in items if s]
    if len(items) > MAX_STOP:
        raise invalid("stop", f"'stop' may hold at most {MAX_STOP} strings (got {len(items)})")
    for s in items:
        if not s or len(s) > MAX_STOP_CHARS:
            raise invalid("stop", f"each 'stop' string must be 1 to {MAX_STOP_CHARS} characters")
    return list(items)
