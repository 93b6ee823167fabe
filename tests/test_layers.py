"""Issue 10's engine boundary, checked on the source: outside runtime/llama/, no module reaches
into another object's private (`_`-prefixed) attributes, and none imports llama.cpp's bindings."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_PACKAGE = ROOT / "runtime" / "llama"
FORBIDDEN_IMPORTS = ("llama_cpp", "infer.runtime.llama.bindings")


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
