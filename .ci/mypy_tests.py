"""Type-check tests/ (or, with `-p infer`, the package itself) against infer's real types.

`mypy cli runtime _infer` checks the package's own files, but mypy cannot follow the package-dir
mapping (infer.cli is cli/, infer.runtime is runtime/, infer is _infer/): with an editable
install it finds no `infer` at all, and an installed copy has no py.typed, so every `from
infer.… import X` in tests/ would be Any and the fakes' Protocol checks (tests/fakes.py,
tests/fake_backend.py) could never fail. So this lays the mapping out as links in a temporary
folder on MYPYPATH and checks tests/ there. pyproject.toml keeps infer's own errors out of a
tests/ run (follow_imports = "silent"); `python .ci/mypy_tests.py -p infer` reports them, with
cli/'s imports of runtime/ resolved (plain `mypy cli runtime _infer` sees those as Any).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "infer"
        pkg.mkdir()
        for f in (ROOT / "_infer").glob("*.py"):
            (pkg / f.name).symlink_to(f)
        (pkg / "cli").symlink_to(ROOT / "cli")
        (pkg / "runtime").symlink_to(ROOT / "runtime")
        env = {**os.environ, "MYPYPATH": tmp}
        cache = ROOT / ".mypy_cache" / "tests"  # apart: the same files under other module names
        cmd = [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(cache),
            *(sys.argv[1:] or ["tests"]),
        ]
        return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
