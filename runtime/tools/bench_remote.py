"""`infer bench --remote`: llama-bench's figures for a model that an OpenAI-compatible server
runs (infer serve, llama-server, vLLM...), measured from here over its HTTP API.

Each repetition is one streamed completion of a synthetic prompt of about `n_prompt` tokens
with `n_gen` tokens asked for (greedy, end-of-generation ignored): time to first token (request
sent -> first text), prompt tok/s ≈ prompt tokens / TTFT (the server's queueing and the network
round trip included: that is what its users wait for), generation tok/s = decode steps after the
first token / the time from the first piece to the last. The token counts are the server's
(its usage), not assumed. One untimed warm-up comes first; it also tells how many tokens the
remote's tokenizer makes of the synthetic words, so that the timed prompts come out near
`n_prompt`. Each repetition's prompt starts differently, so no prompt cache on the server can
skip the prompt's cost.

The HTTP is runtime/remote.py's, which sits beside tools/ in the layers: the caller gives the
request as `ask(prompt, max_tokens)`, which returns that answer's stats; for example with
`Remote(url).answerer(model)` and its answers' Stats::

    def ask(prompt, max_tokens):
        answer = answerer.answer(request(prompt, max_tokens))
        for _ in answer:
            pass
        return answer.stats
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from ..answer import AnswerRequest
from ..errors import InferWarning
from ..options import Overrides
from .bench import BenchResult, Progress, Spread, check_counts

# Short, common words: one token each in most tokenizers (the warm-up measures the real ratio).
_WORD_LIST = (
    "the of and to in is was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take "
    "get place made live where after back little only round man year came show every good me "
    "give our under name very through just form great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such "
    "follow act why ask men change went light kind off need house picture try us again animal "
    "point mother world near build self earth father head stand own page should country found"
)
WORDS = tuple(_WORD_LIST.split())


class Answered(Protocol):
    """What one timed request tells (runtime/answer.py's Stats has all of it)."""

    prompt_tokens: int
    generated_tokens: int
    ttft_s: float

    @property
    def prompt_tps(self) -> float: ...

    @property
    def generate_tps(self) -> float: ...


Ask = Callable[[str, int], Answered]  # (prompt text, max tokens) -> the answer's stats


def request(prompt: str, max_tokens: int) -> AnswerRequest:
    """A measurement: `prompt` as a raw completion, greedy, exactly `max_tokens` tokens
    (`ignore_eos` is llama.cpp's extension, which infer serve and vLLM take too)."""
    return AnswerRequest(
        ({"role": "user", "content": prompt},),
        raw=True,
        overrides=Overrides(temperature=0),
        max_tokens=max_tokens,
        extra=(("ignore_eos", True),),
    )


def synthetic_prompt(n_words: int, rep: int) -> str:
    """`n_words` words, the same for the same `rep` on every run, starting with a different
    word for each of the first len(WORDS) repetitions (so no two share a cached prefix)."""
    rng = random.Random(rep)
    first = WORDS[rep % len(WORDS)]
    return " ".join([first.capitalize(), *(rng.choice(WORDS) for _ in range(n_words - 1))])


def public_url(url: str) -> str:
    """The URL without what may be secret (user:password@, the query): it is printed and
    recorded in the history."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def run_remote_bench(
    ask: Ask,
    url: str,
    model: str,
    n_prompt: int = 512,
    n_gen: int = 128,
    reps: int = 5,
    *,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure `model` on the server at `url` through `ask` (see the module's docstring).
    Figures a test was skipped for are None: -p 0 (prompt tok/s, TTFT), -n 0 or 1 (generation
    tok/s: it needs a decode step after the first token)."""
    check_counts(n_prompt, n_gen, reps)
    say = progress or (lambda _message: None)
    max_tokens = max(n_gen, 1)  # the first token is what times the prompt
    words = max(n_prompt, 1)
    say("warm-up")
    warm = ask(synthetic_prompt(words, -1), max_tokens)
    if n_prompt and warm.prompt_tokens > 0:
        words = max(1, round(n_prompt * words / warm.prompt_tokens))
    answers = []
    for rep in range(reps):
        say(f"repetition {rep + 1}/{reps}")
        answers.append(ask(synthetic_prompt(words, rep), max_tokens))
    return _result(answers, public_url(url), model, (n_prompt, n_gen, reps))


def _result(
    answers: list[Answered], url: str, model: str, counts: tuple[int, int, int]
) -> BenchResult:
    n_prompt, n_gen, reps = counts
    prompt_tokens = [a.prompt_tokens for a in answers]
    generated = [a.generated_tokens for a in answers]
    timed_prompt = n_prompt > 0
    if timed_prompt and 0 in prompt_tokens:
        warnings.warn(
            InferWarning(f"{url} sent no token usage: prompt tok/s unknown"), stacklevel=3
        )
    if n_gen and min(generated) < n_gen:
        warnings.warn(
            InferWarning(
                f"{url} generated {min(generated)} of the {n_gen} tokens asked for (does it "
                "take ignore_eos?): the figures use the real counts"
            ),
            stacklevel=3,
        )
    pp = [a.prompt_tps for a in answers]
    return BenchResult(
        model=model,
        model_path=None,
        model_size_bytes=None,
        backend=f"remote {url}",
        gpu_offload_supported=None,
        threads=None,
        gpu_layers=None,
        layers_total=None,
        ctx_size=None,
        batch_size=None,
        n_prompt=n_prompt,
        n_gen=n_gen,
        repetitions=reps,
        load_s=None,
        prompt_tokens_per_s=Spread.of(pp) if timed_prompt and 0 not in prompt_tokens else None,
        ttft_s=Spread.of([a.ttft_s for a in answers]) if timed_prompt else None,
        generate_tokens_per_s=Spread.of([a.generate_tps for a in answers]) if n_gen > 1 else None,
        remote=url,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
    )
