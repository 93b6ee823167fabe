"""OpenAI's requests: a /v1/chat/completions or /v1/completions JSON body validated into a
`ParsedRequest` holding the `TextRequest` the backend runs (`parse_chat`, `parse_completion`);
the chat's messages and tools are read by openai_messages, the answers shaped by openai_answers.
Pure data: no HTTP, no starlette.

Every field the server cannot honour is refused with a 400 naming it, never silently ignored;
fields it does not know are ignored (OpenAI's clients send new ones all the time). Numbers are
checked for type and range before they reach the model side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError
from ..options import from_fields
from . import logit_bias
from . import logprobs as shapes
from .backend import TextRequest
from .lora_fields import parse_lora
from .media_parts import NO_URLS, MediaPolicy
from .openai_messages import chat_messages, chat_tools
from .request_fields import (
    MAX_PROMPTS,
    MAX_TOKENS_LIMIT,
    boolean,
    integer,
    invalid,
    is_int,
    model_name,
    stop_strings,
)

MAX_CHOICES = 128  # n; the backend refuses more than its slots first


@dataclass
class ParsedRequest:
    """A validated request: which model, what to generate, how to answer."""

    model: str
    request: TextRequest  # prompt None for completions: one per entry of `prompts`
    prompts: list[str] = field(default_factory=list)  # /v1/completions only
    token_prompts: list[list[int | str]] = field(default_factory=list)  # ... as token ids
    stream: bool = False
    include_usage: bool = False

    def text_requests(self) -> list[TextRequest]:
        """The backend requests: the chat's one, or one per completion prompt."""
        from dataclasses import replace

        if self.token_prompts:
            return [replace(self.request, prompt_tokens=p) for p in self.token_prompts]
        if not self.prompts:
            return [self.request]
        return [replace(self.request, prompt=p) for p in self.prompts]


# --- field checks ---------------------------------------------------------------------------
def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The table's options the body sets (runtime/options.py), by their OpenAI names, with the
    table's verdict on each; a 400 names the JSON field."""
    try:
        return dict(from_fields(body, "openai"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None


def _refuse_unsupported(body: dict[str, Any], completions: bool) -> None:
    """The OpenAI features this server cannot honour: a 400 naming each, unless the field holds
    its neutral value (what a client sends when it does not use the feature)."""
    for name in ("functions", "function_call", "audio", "prediction"):
        if body.get(name) not in (None, [], {}):
            hint = " (use 'tools' and 'tool_choice')" if "function" in name else ""
            raise invalid(name, f"'{name}' is not supported by this server{hint}")
    if completions:
        for name in ("tools", "tool_choice"):
            if body.get(name) not in (None, [], "none"):
                raise invalid(name, f"'{name}' is only supported by /v1/chat/completions")
    # vLLM's and llama-server's assistant prefill: the answer would go on from the last
    # assistant message; infer always starts a new turn, so asking for it is refused
    if body.get("continue_final_message") not in (None, False):
        raise invalid(
            "continue_final_message", "'continue_final_message' is not supported by this server"
        )
    if body.get("add_generation_prompt") not in (None, True):
        raise invalid(
            "add_generation_prompt",
            "'add_generation_prompt: false' is not supported by this server",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid("modalities", "only the 'text' modality is supported")
    if completions:
        if body.get("echo") not in (None, False):
            raise invalid("echo", "'echo' is not supported by this server")
        if body.get("best_of") not in (None, 1):
            raise invalid("best_of", "'best_of' other than 1 is not supported by this server")
        if body.get("suffix") not in (None, ""):
            raise invalid("suffix", "'suffix' (insertion) is not supported by this server")


def _response_format(fmt: Any) -> str:
    """`response_format` as the grammar every token must keep matching ("" for text):
    {"type": "json_object"} is llama.cpp's JSON grammar; {"type": "json_schema", "json_schema":
    {"name", "schema", "strict"}} the schema's, refused (400) where the converter could not
    enforce it. Any other shape is refused too."""
    param = "response_format"
    if fmt is None:
        return ""
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid(param, "'response_format' must be an object with a 'type'")
    kind = fmt["type"]
    if kind == "text":
        return ""
    from ..llama.grammar import constraint

    if kind == "json_object":
        schema = fmt.get("schema")  # llama.cpp's extension: json_object held to a schema
        if schema is None:
            return constraint(format="json")
        if not isinstance(schema, dict):
            raise invalid(param, "'response_format.schema' must be a JSON schema object")
        return _schema(schema, "response_format.schema", param)
    if kind != "json_schema":
        raise invalid(
            param,
            f"'response_format' type {kind!r} is not supported (text, json_object, json_schema)",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid(param, "'response_format.json_schema' must be an object")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid(param, "'response_format.json_schema.name' must be a string")
    if spec.get("strict") not in (None, True, False):
        raise invalid(param, "'response_format.json_schema.strict' must be true or false")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise invalid(param, "'response_format.json_schema.schema' must be a JSON schema object")
    return _schema(schema, "response_format.json_schema.schema", param)


def _schema(schema: dict[str, Any], name: str, param: str) -> str:
    """The grammar of a response_format's JSON schema; a 400 naming `param` if it has none."""
    from ..errors import UsageError
    from ..llama.grammar import constraint

    try:
        return constraint(json_schema=schema, names=(name, "", ""))
    except UsageError as e:
        raise invalid(param, str(e)) from None


def llama_grammar(body: dict[str, Any]) -> str:
    """llama.cpp's extensions `json_schema` (a schema held to as response_format's is) and
    `grammar` (GBNF), checked as --grammar is; "" when neither is set."""
    from ..errors import UsageError
    from ..llama.grammar import constraint

    schema, grammar = body.get("json_schema"), body.get("grammar")
    try:
        if schema is not None:
            if not isinstance(schema, dict):
                raise invalid("json_schema", "'json_schema' must be a JSON schema object")
            return constraint(json_schema=schema, names=("json_schema", "", ""))
        if grammar is not None and grammar != "":
            if not isinstance(grammar, str):
                raise invalid("grammar", "'grammar' must be a string (GBNF)")
            return constraint(grammar=grammar, names=("", "grammar", ""))
    except UsageError as e:
        raise invalid("json_schema" if schema is not None else "grammar", str(e)) from None
    return ""


def _common(body: dict[str, Any], completions: bool) -> tuple[TextRequest, bool, bool]:
    _refuse_unsupported(body, completions)
    sampling = _sampling(body)
    limit = integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    if not completions:
        newer = integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
        limit = newer if newer is not None else limit
    elif limit is None and "max_tokens" not in body:
        limit = 16  # OpenAI's default for the legacy completions endpoint
    n = integer(body, "n", 1, MAX_CHOICES)
    stream = boolean(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid("stream_options", "'stream_options' is only allowed with 'stream': true")
        if not isinstance(options, dict):
            raise invalid("stream_options", "'stream_options' must be an object")
        include_usage = boolean(options, "include_usage")
    grammar = _response_format(body.get("response_format")) or llama_grammar(body)
    if grammar:
        sampling["grammar"] = grammar
    try:
        bias = logit_bias.parse_openai(body.get("logit_bias"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None
    if bias:
        sampling["logit_bias"] = bias
    request = TextRequest(sampling=sampling, max_tokens=limit, stop=stop_strings(body), n=n or 1)
    request.logprobs = shapes.openai_requested(body, completions, invalid)
    # llama.cpp's extension: generate past end-of-generation tokens (benchmarks want exact
    # lengths); with no max_tokens it would run to the end of the context.
    request.ignore_eos = boolean(body, "ignore_eos")
    try:
        request.lora = parse_lora(body.get("lora"))  # llama-server's per-request LoRA scales
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None
    return request, stream, include_usage


# --- the two endpoints ----------------------------------------------------------------------
def parse_chat(body: Any, media: MediaPolicy = NO_URLS) -> ParsedRequest:
    """A /v1/chat/completions body → the request, or ApiError (400) naming the field. Images
    and audio in user messages become media parts (media_parts.py, under `media`'s rules)."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    messages = chat_messages(body.get("messages"), media)
    request, stream, include_usage = _common(body, completions=False)
    request.messages = messages
    chat_tools(body, request)
    return ParsedRequest(model, request, stream=stream, include_usage=include_usage)


def parse_completion(body: Any) -> ParsedRequest:
    """A /v1/completions body → the request (one prompt per entry of a list; a prompt may be
    token ids, as llama-server takes them), or ApiError."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    prompt = body.get("prompt")
    prompts: list[str] = []
    tokens: list[list[int | str]] = []
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(is_int(p) for p in prompt):
        tokens = [list(prompt)]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p and all(is_int(t) for t in p) for p in prompt)
    ):
        tokens = [list(p) for p in prompt]
    else:
        raise invalid(
            "prompt", "'prompt' must be a string, an array of strings, or token ids (arrays)"
        )
    if len(prompts) + len(tokens) > MAX_PROMPTS:
        raise invalid("prompt", f"at most {MAX_PROMPTS} prompts per request")
    request, stream, include_usage = _common(body, completions=True)
    return ParsedRequest(model, request, prompts, tokens, stream, include_usage)
