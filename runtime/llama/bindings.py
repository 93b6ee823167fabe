"""llama-cpp-python's low-level ctypes bindings, without the rest of the package.

`import llama_cpp` runs the package's `__init__`, which also imports the high-level `Llama`
class and with it numpy, jinja2, diskcache and the chat formats: about 0.3 s of start-up that
infer never uses (it calls llama.cpp through the bindings in `llama_cpp.llama_cpp` only). So the
bindings module is imported under a stand-in parent package; the stand-in is removed again, and a
later `import llama_cpp` (a library user wanting `Llama`) runs the real `__init__`, which finds
the bindings already in `sys.modules` and reuses them: the shared library is loaded once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from .aborts import catch_aborts

_BINDINGS = "llama_cpp.llama_cpp"


def bindings() -> Any:
    """The `llama_cpp.llama_cpp` module (every llama.h function as a ctypes function)."""
    module = sys.modules.get(_BINDINGS) or _import()
    catch_aborts(module)  # a GGML_ASSERT becomes one line and exit 1, not a core dump (once)
    return module


def mtmd() -> Any:
    """The `llama_cpp.mtmd_cpp` module (libmtmd: images and audio), imported as the bindings
    are; loading it loads libmtmd.so, so only a model given a projector asks for it."""
    bindings()
    return sys.modules.get(_MTMD) or _import(_MTMD)


_MTMD = "llama_cpp.mtmd_cpp"


def _import(name: str = _BINDINGS) -> Any:
    if "llama_cpp" in sys.modules:  # the real package is already imported: nothing to save
        return importlib.import_module(name)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return importlib.import_module(name)  # an unusual install: let it fail or work
    stand_in = types.ModuleType("llama_cpp")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    sys.modules["llama_cpp"] = stand_in
    try:
        return importlib.import_module(name)
    finally:
        # Only drop the stand-in: the bindings and their helper modules stay imported.
        if sys.modules.get("llama_cpp") is stand_in:
            del sys.modules["llama_cpp"]
