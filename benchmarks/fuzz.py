"""Fuzzing with a fixed budget: the property-based targets of tests/fuzz_targets.py (GGUF header
reader, template sandbox, JSON-schema → grammar, tool-call parsers, remote SSE reader, the
HTTP doors' body parsers) with
--examples each, and schemathesis over /openapi.json against a real `infer serve smollm2`
(loopback) with --api-examples per operation. Findings (a target's exception other than its
own typed error; a 5xx or dropped connection from the server) are listed in the JSON.

    python benchmarks/fuzz.py [--examples 5000] [--api-examples 100] [--seed 0] [--json FILE]

Writes benchmarks/results/fuzz.json (common.write_results), which benchmarks/render.py renders
into benchmarks/README.md.

tests/test_fuzz.py and tests/test_openapi.py run the same with a small budget in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import add_json_arg, write_results
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fuzz_targets as ft  # noqa: E402
from tests.test_openapi import fuzz as fuzz_api  # noqa: E402

TARGETS: dict[str, tuple[Any, Any]] = {
    "gguf_reader": (ft.gguf_bytes(), lambda raw: ft.check_gguf(raw)),
    "template_sandbox": (st.tuples(ft.templates, ft.contents), lambda a: ft.check_template(*a)),
    "schema_to_grammar": (ft.schemas, lambda s: ft.check_schema(s)),
    "tool_call_parsers": (
        st.tuples(ft.call_texts, st.sampled_from(["hermes", "llama3", "mistral", "generic"])),
        lambda a: ft.check_tool_calls(*a),
    ),
    "remote_sse_reader": (st.tuples(ft.sse_texts, st.booleans()), lambda a: ft.check_sse(*a)),
    "door_parsers": (ft.bodies, lambda b: ft.check_parsers(b)),
}


def run_target(name: str, examples: int, seed_value: int) -> dict[str, Any]:
    strategy, check = TARGETS[name]
    count = 0

    @seed(seed_value)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def target(value: Any) -> None:
        nonlocal count
        count += 1
        check(value)

    t = time.perf_counter()
    finding = None
    try:
        target()
    except Exception as e:  # hypothesis re-raises the shrunk failure
        finding = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return {
        "examples": count,
        "seconds": round(time.perf_counter() - t, 1),
        "finding": finding,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_api(examples: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The server's log goes to a file, not a pipe read at the end: a pipe's 64 KiB fill up
    # after ~500 access-log lines, and the server's next log write then blocks its event loop,
    # so every later request times out (a harness bug that once read as findings).
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryFile() as log:
        env = {**os.environ, "INFER_HOME": home, "HF_HUB_OFFLINE": "1"}
        args = ["smollm2", "--port", str(port), "--ctx-size", "512", "--parallel", "2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "infer", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        try:
            for _ in range(1200):
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            t = time.perf_counter()
            failures = fuzz_api(url, examples)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
    return {
        "examples_per_operation": examples,
        "seconds": round(time.perf_counter() - t, 1),
        "server_alive_after": alive,
        "requests_logged": sum(1 for line in lines if '" ' in line and "id=req_" in line),
        "500_logged": sum(1 for line in lines if '" 500 ' in line),
        "503_logged": sum(1 for line in lines if '" 503 ' in line),  # the queue: deliberate
        "findings": failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=5000, help="per property target")
    ap.add_argument("--api-examples", type=int, default=100, help="per API operation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=[*TARGETS, "api"], action="append")
    add_json_arg(ap, "fuzz")
    args = ap.parse_args()
    chosen = args.only or [*TARGETS, "api"]
    result: dict[str, Any] = {}
    for name in chosen:
        if name == "api":
            result["api"] = run_api(args.api_examples)
        else:
            result[name] = run_target(name, args.examples, args.seed)
        print(name, json.dumps(result[name]), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))
    budget = {"examples": args.examples, "api_examples": args.api_examples, "seed": args.seed,
                "only": args.only}  # fmt: skip
    write_results(args.json, "fuzz.py", budget, result)


if __name__ == "__main__":
    main()
