"""Issue 10's engine boundary, checked on the source: outside runtime/llama/, no module reaches
into another object's private (`_`-prefixed) attributes, and none imports llama.cpp's bindings.
Issue 20's: outside runtime/llama/, the backend is only its Protocols (llama/interface.py): no
module names the concrete classes or imports their modules, and none feature-tests a backend
object with getattr/hasattr."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_PACKAGE = ROOT / "runtime" / "llama"
FORBIDDEN_IMPORTS = ("llama_cpp", "infer.runtime.llama.bindings")
# The classes behind llama/interface.py's Protocols (llama/model.py's load_model makes one).
CONCRETE = {"LlamaCppEngine", "LlamaModel", "LlamaContext", "LlamaSession", "Weights"}
# What the code calls a backend object (a model, a session, a context, or their holders).
BACKEND_NAMES = {"engine", "model", "session", "context", "ctx", "drafter", "draft", "target"}


def _modules() -> list[Path]:
    files = [*(ROOT / "runtime").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    return sorted(f for f in files if not f.is_relative_to(ENGINE_PACKAGE))


def _forbidden_import(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS)


def violations(rel: Path, source: str) -> list[str]:
    """file:line and what, for each private attribute access and bindings import in `source`,
    the text of the module at `rel` (relative to the repository root)."""
    tree = ast.parse(source, filename=str(rel))
    package = ["infer", *rel.parent.parts]  # runtime/x.py is infer.runtime.x
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            owner = node.value
            mine = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if private and not mine:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _forbidden_import(alias.name):
                    found.append(f"{rel}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
            if any(_forbidden_import(n) for n in names):
                found.append(f"{rel}:{node.lineno}: from {'.' * node.level}{node.module} import")
    return found


def _last_name(node: ast.expr) -> str:
    """`engine` for `engine`, `self.engine` and `served.engine`; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def concrete_uses(rel: Path, source: str) -> list[str]:
    """file:line and what, for each name of a concrete backend class (in code, an import or a
    string annotation) and each getattr/hasattr on a backend object."""
    tree = ast.parse(source, filename=str(rel))
    found = []
    for node in ast.walk(tree):
        name = ""
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        elif isinstance(node, ast.alias):
            name = node.name.rsplit(".", 1)[-1]
        if name in CONCRETE:
            found.append(f"{rel}:{getattr(node, 'lineno', '?')}: {name}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and _last_name(node.args[0]) in BACKEND_NAMES
        ):
            found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_modules_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _modules()}
    assert "runtime/generation/speculative.py" in names
    assert "runtime/api.py" in names
    assert not any(n.startswith("runtime/llama/") for n in names)


def test_no_private_engine_attributes_or_bindings_outside_llama() -> None:
    found = [
        v
        for path in _modules()
        for v in violations(path.relative_to(ROOT), path.read_text(encoding="utf-8"))
    ]
    assert not found, "outside runtime/llama/:\n" + "\n".join(found)


def test_the_check_catches_what_it_must() -> None:
    source = (
        "from ..llama.bindings import bindings\n"
        "import llama_cpp\n"
        "def f(engine, self):\n"
        "    engine._ctx; self._ok; engine.__class__; engine.tokens\n"
    )
    found = violations(Path("runtime/generation/_layers_probe.py"), source)
    lines = sorted(v.split(": ", 1)[0] for v in found)
    assert lines == [f"runtime/generation/_layers_probe.py:{n}" for n in (1, 2, 4)], found


def test_only_the_protocols_outside_llama() -> None:
    found = [
        v
        for path in _modules()
        for v in concrete_uses(path.relative_to(ROOT), path.read_text(encoding="utf-8"))
    ]
    assert not found, "outside runtime/llama/:\n" + "\n".join(found)


def test_the_protocol_check_catches_what_it_must() -> None:
    source = (
        "from ..llama.model import load_model\n"
        "from ..llama.context import LlamaContext as Ctx\n"
        "import infer.runtime.llama.session.LlamaSession\n"
        "def f(engine: 'LlamaModel', defaults, e, model: Model) -> None:\n"
        "    getattr(engine, 'load_s', 0); hasattr(self.session, 'x'); getattr(defaults, 'x')\n"
        "    isinstance(engine, llama.LlamaCppEngine); getattr(e, 'name', '')\n"
        "    model.new_session(); hasattr(x, 'y')\n"
    )
    found = concrete_uses(Path("runtime/generation/_layers_probe.py"), source)
    lines = [v.split(": ", 1)[0].rsplit(":", 1)[1] for v in found]
    assert sorted(lines) == ["2", "3", "4", "5", "5", "6"], found
