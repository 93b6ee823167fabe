"""Start-up wall times of the installed `infer` command.

    python benchmarks/startup.py [--runs 10] [--model PATH]

Measures, interleaved and each on an idle machine (see common.py):
- `infer --help` (target: <= 150 ms);
- `infer run MODEL PROMPT -n 1`: process start to the first byte of the answer, and to exit;
- `python -c print()`, the floor any Python command pays.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_arg, compile_infer, machine, measure, summary, write_results
from vs_llamacpp import PROMPT, bundled_model, infer_exe


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to exit)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    first_s = time.perf_counter() - start
    proc.stdout.read()
    code = proc.wait()
    if code != 0 or not first:
        sys.exit(f"failed ({code}): {' '.join(cmd)}")
    return first_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--threads", type=int, help="passed to infer run -t")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not write infer's bytecode first"
    )
    add_json_arg(parser, "startup")
    args = parser.parse_args()
    if not args.no_compile:
        compile_infer()
    model = str((args.model or bundled_model()).resolve())
    home = tempfile.mkdtemp(prefix="infer-startup-home-")
    env = {**os.environ, "INFER_HOME": home}
    run_cmd = [infer_exe(), "run", model, PROMPT, "-n", "1"]
    if args.threads:
        run_cmd += ["-t", str(args.threads)]
    commands = {
        "python -c print()": [sys.executable, "-c", "print()"],
        "infer --help": [infer_exe(), "--help"],
        "infer run -n 1": run_cmd,
    }
    for cmd in commands.values():  # untimed: page cache
        timed(cmd, env)
    first: dict[str, list[float]] = {name: [] for name in commands}
    total: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            sample = measure(lambda cmd=cmd: timed(cmd, env), quiet=not args.no_wait)
            first[name].append(sample.value[0] * 1000)
            total[name].append(sample.value[1] * 1000)
    shutil.rmtree(home, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {args.runs} interleaved runs, ms")
    print()
    print("| command | first byte on stdout, ms | exit, ms |")
    print("|---|---|---|")
    for name in commands:
        print(f"| `{name}` | {summary(first[name])} | {summary(total[name])} |")
    results = {name: {"first_byte_ms": first[name], "exit_ms": total[name]} for name in commands}
    settings = {"model": Path(model).name, "runs": args.runs, "threads": args.threads,
                "bytecode": not args.no_compile}  # fmt: skip
    write_results(args.json, "startup.py", settings, results)


if __name__ == "__main__":
    main()
