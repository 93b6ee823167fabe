"""LoRA adapters: checked in Python against the model, then loaded with
llama_adapter_lora_init and applied per context with llama_set_adapters_lora (the names of
llama-cpp-python 0.3.36: older bindings had llama_set_adapter_lora / llama_clear_adapter_lora).

llama.cpp refuses most bad adapters itself (it throws inside llama_adapter_lora_init and
returns NULL), but only after parsing the file natively, and its reasons go to the log. Here
every check it makes is made first on the bounded header reader's view of the file
(models/gguf.py), so a bad file is one line naming the file and the reason (OptionError on
`lora`: exit 2), and the native parser only ever sees a file that passed.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFileError, OptionError
from ..models.gguf import GGUFHeader, read_header
from ..params import LoraAdapter


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter loaded over a model: its file, the scale it was given, and what a saved
    prompt state applied with it depends on (`identity`, in the prompt cache's key)."""

    path: str
    scale: float
    identity: tuple[str, int, int]  # path, size, mtime_ns
    handle: Any


def _refuse(path: str, reason: str) -> OptionError:
    return OptionError("lora", f"{path}: {reason}", sep=": ")


def check_adapter(path: str, model: GGUFHeader) -> GGUFHeader:
    """The adapter's header if llama.cpp would load it over `model`, else an OptionError
    naming the file and the reason (llama-adapter.cpp's checks, in its order)."""
    try:
        header = read_header(path)
    except ModelFileError as e:
        raise _refuse(path, e.reason) from None
    meta = header.metadata
    if meta.get("general.type") != "adapter":
        got = meta.get("general.type")
        what = "a model, not an adapter" if got in (None, "model") else f"general.type {got!r}"
        raise _refuse(path, f"not a LoRA adapter ({what})")
    if header.architecture != model.architecture:
        raise _refuse(
            path, f"an adapter for {header.architecture}, not for this {model.architecture} model"
        )
    if meta.get("adapter.type") != "lora":
        raise _refuse(path, f"adapter.type is {meta.get('adapter.type')!r}, not 'lora'")
    if meta.get("adapter.alora.invocation_tokens") is not None:
        raise _refuse(path, "activated LoRA (aLoRA) adapters are not supported")
    _check_tensors(path, header, model)
    return header


def _check_tensors(path: str, adapter: GGUFHeader, model: GGUFHeader) -> None:
    base = {t.name: t.shape for t in model.tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in adapter.tensors:
        stem, dot, part = t.name.rpartition(".")
        if dot and part in ("lora_a", "lora_b"):
            if len(t.shape) != 2:
                raise _refuse(path, f"tensor '{t.name}' is not a matrix")
            pairs.setdefault(stem, {})[part] = t.shape
        elif not t.name.endswith("_norm.weight"):  # llama.cpp skips norms, refuses the rest
            raise _refuse(path, f"tensor '{t.name}' is neither lora_a nor lora_b")
    if not pairs:
        raise _refuse(path, "holds no LoRA tensors")
    for name, pair in pairs.items():
        if len(pair) != 2:
            raise _refuse(path, f"'{name}' lacks its {'lora_b' if 'lora_a' in pair else 'lora_a'}")
        target = base.get(name)
        if target is None or len(target) < 2:
            raise _refuse(path, f"'{name}' is not in the model (an adapter for another model?)")
        a, b = pair["lora_a"], pair["lora_b"]
        if name.endswith("token_embd.weight"):  # A and B swapped: llm_build_inp_embd
            fits = target[0] == b[1] and target[1] == a[1]
        else:
            fits = target[0] == a[0] and target[1] == b[1] and a[1] == b[0]
        if not fits:
            raise _refuse(
                path, f"'{name}' has the wrong shape for this model (an adapter for another model?)"
            )


def load_adapters(
    ll: Any, model_ptr: Any, header: GGUFHeader, adapters: tuple[LoraAdapter, ...]
) -> list[LoadedAdapter]:
    """Each adapter checked, then loaded over the model (freed with it: llama.cpp keeps them
    in the model). The adapters must be loaded before the model's contexts are made: a
    context sizes its compute graph for the adapters the model has."""
    loaded = []
    for adapter in adapters:
        check_adapter(adapter.path, header)
        handle = ll.llama_adapter_lora_init(model_ptr, os.fsencode(adapter.path))
        if not handle:
            raise _refuse(adapter.path, "llama.cpp could not load it (run with --verbose)")
        st = os.stat(adapter.path)
        ident = (os.path.abspath(adapter.path), st.st_size, st.st_mtime_ns)
        loaded.append(LoadedAdapter(adapter.path, adapter.scale, ident, handle))
    return loaded


class AdapterSet:
    """The adapters of one context and the scales it applies now. llama.cpp applies a
    context's adapters to every sequence of a decode, so a context decodes one set of scales
    at a time (generation/scheduler.py groups its sequences by scales)."""

    def __init__(self, ll: Any, handle: Any, adapters: list[LoadedAdapter]) -> None:
        self._ll, self._handle, self._adapters = ll, handle, adapters
        n = len(adapters)
        self._array = (ll.llama_adapter_lora_p_ctypes * n)(*(a.handle for a in adapters))
        self._scales = (ctypes.c_float * n)()
        self.scales: tuple[float, ...] = ()
        self.apply(tuple(a.scale for a in adapters))

    def apply(self, scales: tuple[float, ...]) -> None:
        if scales == self.scales or not self._adapters:
            return
        if len(scales) != len(self._adapters):
            raise ValueError(f"{len(scales)} scales for {len(self._adapters)} adapters")
        for i, scale in enumerate(scales):
            self._scales[i] = scale
        self._ll.llama_set_adapters_lora(self._handle, self._array, len(scales), self._scales)
        self.scales = scales

    def identity(self) -> list[tuple[tuple[str, int, int], float]]:
        """The adapters applied (scale not 0) and their scales: a prompt state's dependency."""
        pairs = zip(self._adapters, self.scales, strict=False)  # () before any is applied
        return [(a.identity, s) for a, s in pairs if s != 0.0]
