"""The generation options, declared once: every front door derives its fields from this table.

A command-line flag, a models.toml default, a batch file's field, an HTTP body's field, Ollama's
`options`, the remote client's request and chat's `/set` all name an option here and get the same
verdict on the same value (`check`). Values are layered with one type and one merge:
`Overrides` (every field unset) over the model's defaults (also `Overrides`) over infer's own
defaults (`SamplingParams`), so no front end keeps its own "which fields were given" set.

`SamplingParams` lives here, beside the table it is checked against (params.py re-exports it):
params.py imports this module, so the table cannot import params.py.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, overload

from .errors import OptionError

INT32_MAX = 2**31 - 1


class GrammarTrigger(NamedTuple):
    """Where a lazy grammar wakes (runtime/llama/lazy.py): at `word` anywhere in the answer, or
    (`at_start`) only at the answer's start, after whitespace. The grammar starts with `word`."""

    word: str
    at_start: bool = False


@dataclass
class SamplingParams:
    """What a generation samples with: llama.cpp's defaults, which the table (below) states;
    temperature 0 means greedy decoding."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    # OpenAI's penalties, which llama.cpp's penalties sampler applies over the last
    # repeat_last_n tokens: minus frequency x count, minus presence once seen; 0 = off.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None  # None: a fresh random seed per run
    # Constrained decoding: GBNF text (root rule `root`) that every sampled token must keep
    # matching, run by llama.cpp's grammar sampler first in the chain; "" = unconstrained.
    # Checked before a model loads (runtime/llama/grammar.py makes it from --grammar,
    # --json-schema or --format json).
    grammar: str = ""
    # Triggers make the grammar lazy (llama.cpp's lazy grammar): every token is allowed until
    # the answer writes one of them, and the grammar holds from that trigger on. How
    # tool_choice "auto" keeps a call's arguments valid and a plain answer free. () = the
    # grammar holds from the first token.
    grammar_triggers: tuple[GrammarTrigger, ...] = ()
    # Added to a token's logit before any other sampler, as llama.cpp's logit-bias sampler does
    # (first in its chain): (token id, bias) pairs, -inf = the token is never sampled. Token
    # ids are checked against the vocabulary where a model is at hand (the server's pool; the
    # sampler chain refuses any that slipped through, never handing llama.cpp an id past the
    # vocabulary). () = none.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def validate(self) -> SamplingParams:
        """These parameters if every option is in its range (the table's `check`) and the
        grammar triggers are usable, else an OptionError naming the first bad one."""
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value is not None or option.default is not None:  # seed: None is random
                check(option.name, value)
        if self.grammar_triggers and not self.grammar:
            raise OptionError("grammar_triggers", "need a grammar")
        if not all(_is_trigger(t) for t in self.grammar_triggers):
            raise OptionError(
                "grammar_triggers",
                "must be (word, at_start) pairs with a non-empty word "
                f"(got {self.grammar_triggers!r})",
            )
        bad = next((pair for pair in self.logit_bias if not _is_bias(pair)), None)
        if bad is not None:
            raise OptionError(
                "logit_bias",
                f"must be (token id, bias) pairs: an id >= 0 and a finite bias or -inf "
                f"(got {bad!r})",
            )
        return self


def _is_bias(pair: object) -> bool:
    if not (isinstance(pair, tuple) and len(pair) == 2):
        return False
    token, bias = pair
    return (
        isinstance(token, int)
        and not isinstance(token, bool)
        and token >= 0
        and isinstance(bias, (int, float))
        and not isinstance(bias, bool)
        and (math.isfinite(bias) or bias == -math.inf)
    )


def _is_trigger(trigger: object) -> bool:
    return (
        isinstance(trigger, tuple)
        and len(trigger) == 2
        and isinstance(trigger[0], str)
        and trigger[0] != ""
        and isinstance(trigger[1], bool)
    )


@dataclass(frozen=True)
class Option:
    """One option: its name in infer (the SamplingParams field), its type, default and range,
    a line of help, and the names the protocols give it (None where a protocol has none)."""

    name: str
    kind: type  # int or float; an int is accepted where a float is asked
    default: float | int | None
    low: float
    high: float
    help: str
    low_open: bool = False  # the range excludes `low` (repeat_penalty > 0)
    flag: str | None = None  # the command-line flag; None: not a flag
    openai: str | None = None  # OpenAI's body field
    ollama: str | None = None  # a key of Ollama's `options`
    llama_cpp: str | None = None  # llama-server's /completion field
    per_model: bool = True  # may be a models.toml default

    def interval(self) -> str:
        """The range in interval notation, as docs/options.md states it: [0, 100], (0, 100]."""
        return f"{'(' if self.low_open else '['}{_g(self.low)}, {_g(self.high)}]"

    def out_of_range(self, number: float) -> str:
        """Why `number` is refused, stating the bounds; only the low one where the top is just
        the integer's limit (INT32_MAX) and the number is below."""
        low = f"> {_g(self.low)}" if self.low_open else f">= {_g(self.low)}"
        if self.high == INT32_MAX:
            return f"must be {low}" if number < self.high else f"must be at most {self.high}"
        if self.low_open:
            return f"must be {low} and <= {_g(self.high)}"
        return f"must be between {_g(self.low)} and {_g(self.high)}"


def _g(number: float) -> str:
    """A number as people write it, the same whichever front door it came through (500, not
    500.0 from a flag; 4294967295, not 4.29497e+09)."""
    if isinstance(number, int):
        return str(number)
    return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)


_DEFAULTS = SamplingParams()
OPTIONS: tuple[Option, ...] = (
    Option(
        "temperature",
        float,
        _DEFAULTS.temperature,
        0,
        100,
        "Sampling temperature; 0 = greedy.",
        flag="--temperature",
        openai="temperature",
        ollama="temperature",
        llama_cpp="temperature",
    ),
    Option(
        "top_k",
        int,
        _DEFAULTS.top_k,
        0,
        INT32_MAX,
        "Top-k sampling; 0 = off.",
        flag="--top-k",
        openai="top_k",
        ollama="top_k",
        llama_cpp="top_k",
    ),
    Option(
        "top_p",
        float,
        _DEFAULTS.top_p,
        0,
        1,
        "Nucleus sampling; 1 = off.",
        flag="--top-p",
        openai="top_p",
        ollama="top_p",
        llama_cpp="top_p",
    ),
    Option(
        "min_p",
        float,
        _DEFAULTS.min_p,
        0,
        1,
        "Min-p sampling; 0 = off.",
        flag="--min-p",
        openai="min_p",
        ollama="min_p",
        llama_cpp="min_p",
    ),
    Option(
        "repeat_penalty",
        float,
        _DEFAULTS.repeat_penalty,
        0,
        100,
        "Penalty for repeating tokens; 1 = off.",
        low_open=True,
        flag="--repeat-penalty",
        openai="repeat_penalty",
        ollama="repeat_penalty",
        llama_cpp="repeat_penalty",
    ),
    Option(
        "repeat_last_n",
        int,
        _DEFAULTS.repeat_last_n,
        -1,
        INT32_MAX,
        "Tokens the penalties look back over; 0 = off, -1 = the whole context.",
        flag="--repeat-last-n",
        openai="repeat_last_n",
        ollama="repeat_last_n",
        llama_cpp="repeat_last_n",
    ),
    Option(
        "frequency_penalty",
        float,
        _DEFAULTS.frequency_penalty,
        -2,
        2,
        "Minus this times a token's count so far; 0 = off.",
        flag="--frequency-penalty",
        openai="frequency_penalty",
        ollama="frequency_penalty",
        llama_cpp="frequency_penalty",
    ),
    Option(
        "presence_penalty",
        float,
        _DEFAULTS.presence_penalty,
        -2,
        2,
        "Minus this once a token has appeared; 0 = off.",
        flag="--presence-penalty",
        openai="presence_penalty",
        ollama="presence_penalty",
        llama_cpp="presence_penalty",
    ),
    Option(
        "seed",
        int,
        None,
        0,
        2**32 - 1,
        "Random seed (default: random).",
        flag="--seed",
        openai="seed",
        ollama="seed",
        llama_cpp="seed",
        per_model=False,
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def check(name: str, value: Any) -> float | int:
    """`value` for option `name` if its type and range are right (an int for an int option, a
    float for a float one), else an OptionError naming the option: each front door words it
    with its own name for the field (a flag, a JSON field, a line's key)."""
    option = BY_NAME[name]
    number = _number(option, value)
    too_low = number <= option.low if option.low_open else number < option.low
    if too_low or number > option.high:
        raise OptionError(name, f"{option.out_of_range(number)} (got {_g(value)})")
    return number


def _number(option: Option, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(option.name, f"must be {_kind(option)} (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(option.name, f"must be a finite number (got {value!r})")
    if option.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise OptionError(option.name, f"must be an integer (got {value!r})")
            return int(value)
        return value
    # An integer past a float's range (JSON and TOML allow it) is out of any range here.
    return float(value) if abs(value) < 1e300 else (math.inf if value > 0 else -math.inf)


def _kind(option: Option) -> str:
    return "an integer" if option.kind is int else "a number"


@dataclass(frozen=True)
class Overrides:
    """Option values a layer sets (a request, a flag, a models.toml entry); None = not set."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None

    @classmethod
    def of(cls, values: dict[str, Any]) -> Overrides:
        """Checked overrides from option names to values (None values are unset)."""
        checked = {k: check(k, v) for k, v in values.items() if v is not None}
        return cls(**checked)  # type: ignore[arg-type]

    def given(self) -> dict[str, Any]:
        """The options this layer sets, by name."""
        return {o.name: getattr(self, o.name) for o in OPTIONS if getattr(self, o.name) is not None}

    @overload
    def over(self, base: Overrides) -> Overrides: ...
    @overload
    def over(self, base: SamplingParams) -> SamplingParams: ...
    def over(self, base: Overrides | SamplingParams) -> Overrides | SamplingParams:
        """These values in place of `base`'s: an Overrides over an Overrides is an Overrides,
        over SamplingParams (infer's defaults) the SamplingParams to sample with."""
        return replace(base, **self.given())


def sampling(*layers: Overrides, base: SamplingParams | None = None) -> SamplingParams:
    """The sampling parameters of `layers`, the first winning (e.g. request, model defaults),
    over `base` (infer's defaults when None)."""
    params = base or SamplingParams()
    for layer in reversed(layers):
        params = layer.over(params)
    return params.validate()


def from_fields(
    fields: Mapping[str, Any], protocol: str, only: Collection[str] | None = None
) -> dict[str, float | int]:
    """The table's options that a request's `fields` set, each found under its name in
    `protocol` ("openai", "ollama" or "llama_cpp"; `only`: just these of those names) and given
    check's verdict, by infer's names. Every API door reads its sampling fields here; an
    OptionError names the field as the protocol spells it."""
    given: dict[str, float | int] = {}
    for option in OPTIONS:
        field = getattr(option, protocol)
        if field is None or (only is not None and field not in only):
            continue
        if fields.get(field) is None:
            continue
        try:
            given[option.name] = check(option.name, fields[field])
        except OptionError as e:
            raise OptionError(field, e.problem) from None
    return given
