"""infer's runtime: resolve models, load them through llama.cpp, generate. No Typer, no rich.

Names are imported lazily so that `import infer.runtime` stays cheap (no llama_cpp, no
huggingface_hub until a model is loaded or pulled). The layers and who may import whom:
docs/architecture.md, checked by the import-linter contracts in pyproject.toml."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "resolve": "models.resolve",
    "ensure_local": "models.resolve",
    "pull": "models.pull",
    "ResolvedModel": "models.resolve",
    "load": "api",
    "load_draft": "api",
    "generate": "api",
    "prompt_tokens": "api",
    "Message": "generation.templates",
    "SamplingParams": "params",
    "GenerateOptions": "params",
    "LoadOptions": "params",
    "Stats": "answer",
    "InferError": "errors",
    "read_header": "models.gguf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'infer.runtime' has no attribute {name!r}")
