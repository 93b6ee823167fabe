"""Options for loading a model and for sampling, validated once for every front end."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import UsageError

DEFAULT_BATCH = 512


class GrammarTrigger(NamedTuple):
    """Where a lazy grammar wakes (runtime/llama/lazy.py): at `word` anywhere in the answer, or
    (`at_start`) only at the answer's start, after whitespace. The grammar starts with `word`."""

    word: str
    at_start: bool = False


@dataclass
class SamplingParams:
    """llama.cpp's defaults; temperature 0 means greedy decoding."""

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

    def validate(self) -> SamplingParams:
        checks = [
            (self.temperature >= 0, f"--temperature must be >= 0 (got {self.temperature})"),
            (self.top_k >= 0, f"--top-k must be >= 0 (got {self.top_k})"),
            (0 <= self.top_p <= 1, f"--top-p must be between 0 and 1 (got {self.top_p})"),
            (0 <= self.min_p <= 1, f"--min-p must be between 0 and 1 (got {self.min_p})"),
            (self.repeat_penalty > 0, f"--repeat-penalty must be > 0 (got {self.repeat_penalty})"),
            (
                -2 <= self.frequency_penalty <= 2,
                f"frequency_penalty must be between -2 and 2 (got {self.frequency_penalty})",
            ),
            (
                -2 <= self.presence_penalty <= 2,
                f"presence_penalty must be between -2 and 2 (got {self.presence_penalty})",
            ),
            (self.seed is None or 0 <= self.seed < 2**32, "--seed must be in 0..4294967295"),
            (not self.grammar_triggers or bool(self.grammar), "grammar_triggers need a grammar"),
            (
                all(_is_trigger(t) for t in self.grammar_triggers),
                "grammar_triggers must be (word, at_start) pairs with a non-empty word "
                f"(got {self.grammar_triggers!r})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        return self


def _is_trigger(trigger: object) -> bool:
    return (
        isinstance(trigger, tuple)
        and len(trigger) == 2
        and isinstance(trigger[0], str)
        and trigger[0] != ""
        and isinstance(trigger[1], bool)
    )


@dataclass
class GenerateOptions:
    max_tokens: int | None = None  # None: until end-of-generation or the context is full
    stop: list[str] = field(default_factory=list)
    # Speculative decoding (runtime/generation/speculative.py) runs when
    # `generate(..., drafter=...)` gets a drafter; these tune it. Options are data: the loaded
    # draft model is an argument, never here.
    draft_max: int | None = None  # drafted tokens per step; None: the drafter's default
    draft_ngram: int | None = None  # lookup: longest n-gram matched; None: the default
    # False: verify every drafted token, even where measured costs say it slows generation down
    # (runtime/generation/draft_policy.py). For measuring acceptance, and for tests of verification.
    draft_adapt: bool = True
    # Keep generating past end-of-generation tokens, up to max_tokens (llama.cpp's ignore_eos:
    # for benchmarks that need an exact token count). The batch scheduler honours it.
    ignore_eog: bool = False

    def validate(self) -> GenerateOptions:
        if self.max_tokens is not None and self.max_tokens < 0:
            raise UsageError(f"--max-tokens must be >= 0 (got {self.max_tokens})")
        if any(s == "" for s in self.stop):
            raise UsageError("--stop must not be empty")
        if self.draft_max is not None and not 1 <= self.draft_max <= 64:
            raise UsageError(f"--draft-max must be between 1 and 64 (got {self.draft_max})")
        if self.draft_ngram is not None and not 1 <= self.draft_ngram <= 16:
            raise UsageError(f"--draft-ngram must be between 1 and 16 (got {self.draft_ngram})")
        return self


@dataclass
class LoadOptions:
    ctx_size: int | None = None  # None: the model's trained context, capped by memory
    threads: int | None = None  # None: physical cores
    gpu_layers: int | None = None  # None: all on a GPU build, 0 on CPU; -1: all
    batch_size: int = DEFAULT_BATCH
    verbose: bool = False
    # Reuse and save prompt states on disk (runtime/generation/prompt_cache.py). Off for library
    # users and measurements (`infer bench` must evaluate its prompts); `infer run` turns it on.
    prompt_cache: bool = False
    # llama.cpp RPC servers (HOST:PORT) whose devices take the offloaded layers (llama/rpc.py).
    rpc: tuple[str, ...] = ()

    def validate(self) -> LoadOptions:
        if self.ctx_size is not None and self.ctx_size < 16:
            raise UsageError(f"--ctx-size must be >= 16 (got {self.ctx_size})")
        if self.threads is not None:
            check_threads(self.threads)
        if self.gpu_layers is not None and self.gpu_layers < -1:
            raise UsageError(f"--gpu-layers must be >= -1 (got {self.gpu_layers})")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        for endpoint in self.rpc:
            split_endpoint(endpoint)
        return self


def parse_endpoints(value: str | None) -> tuple[str, ...]:
    """--rpc's value: HOST:PORT[,HOST:PORT...] (checked; duplicates dropped) as a tuple."""
    if value is None:
        return ()
    endpoints = tuple(dict.fromkeys(e.strip() for e in value.split(",") if e.strip()))
    if not endpoints:
        raise UsageError("--rpc needs HOST:PORT[,HOST:PORT...]")
    for endpoint in endpoints:
        split_endpoint(endpoint)
    return endpoints


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of an RPC server's HOST:PORT, as llama.cpp parses it (up to the first colon:
    IPv4 addresses and host names), or a UsageError."""
    host, sep, port = endpoint.partition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
        raise UsageError(f"--rpc: {endpoint!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
    return host, int(port)


THREADS_PER_CPU = 4


def max_threads() -> int:
    """The most --threads accepted. llama.cpp starts one OS thread per --threads and spins them
    at a barrier after every graph node, so threads beyond the logical CPUs only take turns
    (2048 threads: a minute for 4 tokens) and tens of thousands exhaust memory for their stacks
    (a segfault). 4x the logical CPUs still allows measuring oversubscription with `infer bench`."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def check_threads(threads: int) -> int:
    """`threads` if it is a usable --threads value, else a UsageError naming the bound."""
    bound = max_threads()
    if not 1 <= threads <= bound:
        raise UsageError(
            f"--threads must be between 1 and {bound} ({THREADS_PER_CPU} x the "
            f"{bound // THREADS_PER_CPU} logical CPUs) (got {threads})"
        )
    return threads


def physical_cores() -> int:
    """Cores this process may use, counting hyperthread siblings once (llama.cpp does the same:
    generation is memory-bound and extra SMT threads slow it down)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        allowed = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cores = {
                (block.get("physical id"), block.get("core id"))
                for block in _cpuinfo_blocks(f.read())
            }
        cores.discard((None, None))
        if cores:
            return max(1, min(allowed, len(cores)))
    except OSError:
        pass
    return max(1, allowed)


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks
