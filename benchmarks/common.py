"""Helpers shared by the benchmark scripts: a quiet-machine gate and interference accounting.

On a small shared machine another process's threads wreck a multi-threaded measurement: two
OpenMP processes on 2 cores spin-wait on each other and generation drops from ~125 to <1 tok/s.
So every sample waits until the machine is idle, and is taken again when other processes used
more than a sliver of the CPU while it ran (their CPU time = all busy time minus ours).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _busy_seconds() -> float:
    """CPU seconds spent busy on all CPUs since boot (Linux /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / HZ


def _own_seconds() -> float:
    """CPU seconds used by this process and its waited-for children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (ones this process started but does not
    wait for, such as servers: getrusage's children counts only waited-for ones)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass  # gone: its time no longer shows anywhere
    return total / HZ


def wait_quiet(max_busy: float = 0.10, window: float = 1.0, timeout: float = 600) -> float:
    """Wait until other processes use at most `max_busy` of the CPUs over `window` seconds;
    returns the seconds waited (gives up after `timeout` and goes on). INFER_BENCH_NO_WAIT=1
    skips the wait: a smoke run that checks a script works, whose figures mean nothing."""
    if os.environ.get("INFER_BENCH_NO_WAIT") == "1":
        return 0.0
    start = time.monotonic()
    while True:
        b0, o0 = _busy_seconds(), _own_seconds()
        time.sleep(window)
        foreign = (_busy_seconds() - b0) - (_own_seconds() - o0)
        if foreign / (window * NCPU) <= max_busy or time.monotonic() - start > timeout:
            return time.monotonic() - start


@dataclass
class Sample:
    value: Any
    interference: float  # share of the CPUs other processes used meanwhile
    retries: int


def measure(
    fn: Callable[[], Any],
    max_interference: float = 0.05,
    tries: int = 6,
    quiet: bool = True,
    max_busy: float = 0.10,
    helpers: list[int] | None = None,
) -> Sample:
    """Run `fn` on a quiet machine (others using at most `max_busy` of the CPUs); again (up to
    `tries` times) while others used more than `max_interference` of them during the run.
    `helpers`: pids whose CPU time is part of the run (servers it talks to), not interference."""
    helpers = helpers or []
    best: Sample | None = None
    if os.environ.get("INFER_BENCH_NO_WAIT") == "1":
        tries = 1
    for attempt in range(tries):
        if quiet:
            wait_quiet(max_busy)
        b0, o0, w0 = _busy_seconds(), _own_seconds() + cpu_seconds(helpers), time.monotonic()
        value = fn()
        wall = time.monotonic() - w0
        own = _own_seconds() + cpu_seconds(helpers) - o0
        foreign = max(0.0, (_busy_seconds() - b0) - own)
        share = foreign / max(wall * NCPU, 1e-9)
        if best is None or share < best.interference:
            best = Sample(value, share, attempt)
        if share <= max_interference:
            break
    assert best is not None
    return best


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return result


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.median(values):.2f} (± {spread:.2f}, n={len(values)})"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {NCPU} CPUs, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def compile_infer() -> None:
    """Write infer's bytecode, as `pip install` (non-editable) does. An editable install under
    PYTHONDONTWRITEBYTECODE=1 otherwise recompiles every module on every start (~45 ms of
    `infer run`), which no installed copy pays."""
    import compileall
    import importlib.util

    runtime = [f"infer.runtime.{p}" for p in ("models", "llama", "generation", "tools", "server")]
    for name in ("infer", "infer.cli", "infer.runtime", *runtime):
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(folder, maxlevels=0, quiet=1)


RESULTS = Path(__file__).resolve().parent / "results"


def add_json_arg(parser: argparse.ArgumentParser, name: str) -> None:
    """`--json FILE`, by default benchmarks/results/NAME.json: every script writes its figures
    there, and benchmarks/render.py renders the tables in the READMEs and docs from them."""
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / f"{name}.json",
        help=f"write the results here (default: benchmarks/results/{name}.json)",
    )


def write_results(
    path: Path, script: str, settings: dict[str, Any], results: Any, **extra: Any
) -> None:
    """One run's figures with what they were measured on (date, machine, commit, llama.cpp
    build, settings): what benchmarks/render.py renders the tables from, so that no table is
    typed by hand."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=RESULTS.parent,
        check=False,
    ).stdout.strip()
    try:
        from importlib.metadata import version

        llama = version("llama-cpp-python")
    except Exception:  # not installed: the record says so rather than failing the run
        llama = "?"
    record = {
        "script": script,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "commit": commit,
        "llama_cpp_python": llama,
        "isa_flags": os.environ.get("INFER_LLAMA_ISA", ""),
        "settings": settings,
        # INFER_BENCH_NO_WAIT: no quiet-machine gate, so the figures are a smoke test's only
        "smoke": os.environ.get("INFER_BENCH_NO_WAIT") == "1",
        **extra,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {path}", file=sys.stderr)
