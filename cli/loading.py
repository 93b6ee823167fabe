"""Loading a model for the commands that answer with it (run, chat, `run --batch`): the
command-line flags merged with the model's defaults into the runtime's options, and the load
itself, with a spinner on a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infer.runtime.errors import ModelNotFoundError, UnknownDraftError

from . import output
from .models import resolve_or_pull

if TYPE_CHECKING:
    from infer.runtime.llama.interface import Model, Session
    from infer.runtime.models.registry import ModelDefaults
    from infer.runtime.models.resolve import ResolvedModel
    from infer.runtime.options import Overrides
    from infer.runtime.params import GenerateOptions, LoadOptions, SamplingParams


def sampling_params(
    defaults: ModelDefaults,
    overrides: Overrides | None = None,
    *,
    grammar: str = "",
    **flags: float | None,
) -> SamplingParams:
    """The flags given (`overrides`) over the model's models.toml defaults over infer's, checked
    against the table. `grammar` is constraint()'s text (checked already). The sampling flags
    may also come one by one as keywords (temperature=..., None = not given)."""
    from infer.runtime.options import Overrides, sampling
    from infer.runtime.params import SamplingParams

    given = (overrides or Overrides()).over(Overrides.of(flags))
    return sampling(given, defaults.sampling, base=SamplingParams(grammar=grammar))


def constraint(json_schema: str | None, grammar: str | None, fmt: str | None) -> str:
    """--json-schema, --grammar or --format as GBNF text, checked before any model loads
    (each takes @FILE for a file's contents); "" for none."""
    from infer.runtime.llama.grammar import constraint as make

    return make(
        json_schema=_text_or_file(json_schema, "--json-schema"),
        grammar=_text_or_file(grammar, "--grammar"),
        format=fmt,
    )


def _text_or_file(value: str | None, flag: str) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    import os

    from infer.runtime.errors import UsageError
    from infer.runtime.llama.grammar import MAX_GRAMMAR_BYTES

    path = value[1:]
    try:
        if os.path.getsize(path) > MAX_GRAMMAR_BYTES:
            raise UsageError(f"{flag}: {path} is larger than {MAX_GRAMMAR_BYTES >> 20} MB")
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {path} is not UTF-8 text") from None


def generate_options(
    *,
    max_tokens: int | None,
    stop: list[str] | None,
    draft_max: int | None,
    draft_ngram: int | None,
    draft_always: bool,
) -> GenerateOptions:
    from infer.runtime import GenerateOptions

    return GenerateOptions(
        max_tokens=max_tokens,
        stop=list(stop or []),
        draft_max=draft_max,
        draft_ngram=draft_ngram,
        draft_adapt=not draft_always,
    ).validate()


def load_options(
    defaults: ModelDefaults,
    *,
    ctx_size: int | None,
    threads: int | None,
    gpu_layers: int | None,
    verbose: bool,
    no_prompt_cache: bool,
    rpc: str | None = None,
    lora: list[str] | tuple[str, ...] | None = None,
    deterministic: bool = False,
) -> LoadOptions:
    from infer.runtime import LoadOptions
    from infer.runtime.params import parse_endpoints, parse_lora

    return LoadOptions(
        ctx_size=defaults.context(ctx_size),
        threads=threads,
        gpu_layers=gpu_layers,
        verbose=verbose,
        prompt_cache=not no_prompt_cache,
        rpc=parse_endpoints(rpc),
        lora=parse_lora(lora) or defaults.lora,  # --lora replaces the models.toml list
        deterministic=deterministic,
    ).validate()


def load_model(resolved: ResolvedModel, options: LoadOptions, *, quiet: bool) -> Model:
    from infer.runtime import load

    with output.status("Loading model…", quiet=quiet):
        return load(resolved, options)


def load_session(resolved: ResolvedModel, options: LoadOptions, *, quiet: bool) -> Session:
    """The model and one session over it (run, chat): a chat's turns share its KV cache."""
    from infer.runtime import load

    with output.status("Loading model…", quiet=quiet):
        model = load(resolved, options)
        try:
            return model.new_session()
        except BaseException:
            model.close()
            raise


def load_drafter(
    draft: str | None, engine: Session, options: LoadOptions, *, offline: bool, quiet: bool
) -> str | Session | None:
    """--draft: None without one, "lookup" as is, anything else a model reference resolved like
    MODEL and loaded with the same settings and context size (its vocabulary is checked against
    the model's)."""
    from dataclasses import replace

    from infer.runtime.api import load_draft
    from infer.runtime.generation.speculative import LOOKUP

    if not draft:
        return None
    if draft == LOOKUP:
        return draft
    try:
        resolved = resolve_or_pull(draft, offline=offline)
    except ModelNotFoundError as e:
        import difflib

        close = difflib.get_close_matches(draft.lower(), [LOOKUP], n=1, cutoff=0.6) + e.close
        raise UnknownDraftError(e.name, e.known, close) from None
    # The model's LoRA adapters are the model's: the draft model runs as it is.
    draft_options = replace(options, ctx_size=engine.n_ctx, prompt_cache=False, lora=())
    with output.status("Loading draft model…", quiet=quiet):
        return load_draft(resolved, engine, draft_options)
