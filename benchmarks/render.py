"""Render the benchmark tables in the READMEs and docs from benchmarks/results/*.json.

    python benchmarks/render.py            # rewrite every table between markers, in place
    python benchmarks/render.py --check    # exit 1, with a diff, where a table differs

A table lives between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in README.md, docs/*.md
or benchmarks/README.md. NAME is a results file's name (results/NAME.json, written by the
script of that name), optionally with a view after a slash (`vs_llamacpp/line`: one sentence
for the README). What goes between the markers is this script's output only: the figures come
from the file the script wrote, never from a hand. A NAME with no renderer of its own gets a
generic table of the file's scalar results, so a new script's JSON renders before anyone
writes one; a file that does not exist yet renders as the command that makes it.

To add a table: write `@renderer("NAME")` (or `"NAME/view"`) on a function from the parsed
JSON to Markdown, put the markers where it belongs, and run this script.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

import bench_lines  # noqa: F401  (its renderers register themselves)
import bench_tables_added  # noqa: F401  (likewise)
import bench_tables_determinism  # noqa: F401  (likewise)
from bench_tables import RENDERERS, generic  # beside this script, as common.py is to the others

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCUMENTS = ["README.md", "benchmarks/README.md", "docs/*.md"]
MARKER = re.compile(
    r"(?P<open><!-- table:(?P<name>[\w.-]+(?:/[\w.-]+)?) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- /table:(?P=name) -->)",
    re.S,
)


# --- rendering the documents ---------------------------------------------------------------
def render_block(name: str, results: Path) -> str:
    file = results / f"{name.split('/')[0]}.json"
    if not file.exists():
        script = name.split("/")[0]
        return f"*No results yet: `python benchmarks/{script}.py` writes `{file.name}`.*\n"
    fn = RENDERERS.get(name, generic)  # a new script's file renders before it has its own
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        return fn(record).rstrip("\n") + "\n"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        # an older shape of the file, or a renderer out of step with its script
        raise Unrenderable(f"{file.name} ({name}): {type(e).__name__}: {e}") from e


class Unrenderable(Exception):
    pass


def render_text(text: str, results: Path) -> str:
    def sub(m: re.Match[str]) -> str:
        return m["open"] + render_block(m["name"], results) + m["close"]

    return MARKER.sub(sub, text)


def documents(root: Path) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 on a difference")
    ap.add_argument("--root", type=Path, default=ROOT, help="the tree holding the documents")
    ap.add_argument("--results", type=Path, help="default: ROOT/benchmarks/results")
    args = ap.parse_args(argv)
    results = args.results or args.root / "benchmarks" / "results"
    stale, used = [], set()
    for doc in documents(args.root):
        text = doc.read_text(encoding="utf-8")
        used |= {m["name"].split("/")[0] for m in MARKER.finditer(text)}
        try:
            new = render_text(text, results)
        except Unrenderable as e:
            print(f"render.py: cannot render {e}; re-run its script", file=sys.stderr)
            return 1
        if new == text:
            continue
        stale.append(doc)
        if args.check:
            rel = str(doc.relative_to(args.root))
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), new.splitlines(True), rel, rel)
            )
        else:
            doc.write_text(new, encoding="utf-8")
            print(f"rendered {doc.relative_to(args.root)}", file=sys.stderr)
    unshown = sorted(p.stem for p in results.glob("*.json") if p.stem not in used)
    if unshown:  # a new script's file: fine, but say where a table could go
        print(f"note: no table shows results/{', '.join(unshown)}.json yet", file=sys.stderr)
    if args.check and stale:
        names = ", ".join(str(d.relative_to(args.root)) for d in stale)
        print(f"tables differ from benchmarks/results in {names}: run python "
              "benchmarks/render.py", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
