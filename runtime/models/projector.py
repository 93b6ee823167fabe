"""The projector (mmproj) stored beside a model, for `infer run --image` without --mmproj.

Placeholder on this branch: the store's half of vision (pulling a repo's projector, the
models.toml `mmproj` key) provides the real lookup; until it is merged no model has one.
"""

from __future__ import annotations

from pathlib import Path


def projector_for(model_path: Path) -> Path | None:
    """The projector GGUF that goes with the model at `model_path`; None when it has none."""
    return None
