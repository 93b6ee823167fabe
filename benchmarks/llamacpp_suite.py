"""llama.cpp's own server test suite (tools/server/tests/unit) run against llama-server and
`infer serve` on the same model: per test file, the tests that pass on llama-server and how many
of those pass on infer; every other test listed with the reason it fails on infer.

    python benchmarks/llamacpp_suite.py [--python PY] [--only FILE...] [-k EXPR] [--json FILE]

Writes benchmarks/results/llamacpp_suite.json (common.write_results), which
benchmarks/render.py renders into benchmarks/README.md.

Both servers serve the bundled SmolLM2 with 4 slots of 2048 cells (llama-server `-np 4 -c 8192`,
`infer serve --parallel 4 --ctx-size 2048 --any-model-name --cors-origin '*'`: any model name
answered with the one model, and every web origin allowed, as llama-server does by default;
infer's own default CORS policy, pages on this machine only, differs on purpose, and this
compares features, not defaults), one thread each unless --threads says otherwise. infer
runs only the tests llama-server passes. `DEBUG_EXTERNAL=1 PORT=N` points the suite at a
running server (its tests then skip starting their own); tests marked slow are left out, as
llama.cpp's CI leaves them. llama.cpp's tests are run as they are, never edited: a test that
cannot apply to infer is listed with its reason (REASONS below), "unexplained" otherwise.
`--python`: an interpreter with the suite's requirements (tools/server/tests/requirements.txt:
pytest, openai, requests, wget, ...), e.g. a venv made once with
`python -m venv /tmp/llamatests-venv && /tmp/llamatests-venv/bin/pip install -r ...`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from common import add_json_arg, write_results
from compat import tests_dir
from serve import Server, free_port
from vs_llamacpp import build_llamacpp, bundled_model, infer_exe

SLOTS, CELLS = 4, 2048
DEFAULT_PYTHON = "/tmp/llamatests-venv/bin/python"

# Why a test that passes on llama-server fails on infer, by test id pattern (fnmatch on
# "file::test[param]"); the first match wins. Categories:
#   llama-server-only  llama-server's own machinery infer does not have (slots, router, web UI)
#   on-purpose         infer answers differently by design (security defaults, API fidelity)
#   other-helper       issue #23 work done on another branch (logprobs, infill, rerank, lora)
#   missing-feature    an API feature infer does not have yet
#   model-output       the same model answers differently (sampling, template, batch arithmetic)
#   infer-bug          a real bug, still open
REASONS: dict[str, tuple[str, str]] = {
    # llama-server's own machinery, not an API infer has
    "test_basic.py::test_load_split_model": ("llama-server-only", "loads a model from a URL"),
    "test_basic.py::test_no_ui": ("llama-server-only", "llama-server's web UI"),
    "test_security.py::test_access_static_assets*": ("llama-server-only", "its web UI"),
    "test_basic.py::test_server_slots": ("llama-server-only", "the /slots endpoint"),
    "test_basic.py::test_server_props": ("llama-server-only", "/props of its own flags"),
    "test_basic.py::test_server_models": ("llama-server-only", "/models lists one model"),
    "test_slot_save.py::*": ("llama-server-only", "/slots save/restore"),
    "test_router.py::*": ("llama-server-only", "the multi-model router"),
    "test_sleep.py::*": ("llama-server-only", "--sleep-idle-seconds"),
    "*::test_return_progress*": ("llama-server-only", "return_progress frames"),
    "*::test_ignore_eos_populates_logit_bias": (
        "llama-server-only",
        "ignore_eos's end-of-generation bans listed in generation_settings (infer bans them "
        "too, in the model's pool, and lists the request's own biases only)",
    ),
    "test_mcp_servers.py::*": ("llama-server-only", "MCP servers and tools"),
    "test_proxy.py::*": ("llama-server-only", "its CORS proxy for MCP"),
    "test_stream.py::*": ("llama-server-only", "resumable streams (/v1/stream)"),
    # differences on purpose
    "test_chat_completion.py::test_invalid_chat_completion_req[messages7]": (
        "on-purpose",
        "two assistant messages in a row are accepted, as OpenAI's API accepts them",
    ),
    "test_security.py::test_cors_options[web.mydomain.fr-Access-Control-Allow-Headers-*]": (
        "on-purpose",
        "the preflight allows the headers it asks for, where llama-server answers '*': browsers "
        "never let '*' cover Authorization, so a page sending an API key is refused by that",
    ),
    "*::*with_llama_telemetry": (
        "on-purpose",
        "an answer cut by max_output_tokens ends with response.incomplete, as OpenAI's API "
        "ends it; llama-server sends response.completed (the telemetry itself passes)",
    ),
    "test_compat_anthropic.py::test_anthropic_empty_messages": (
        "on-purpose",
        "messages: [] is a 400, as Anthropic's API answers it",
    ),
    "test_compat_anthropic.py::test_anthropic_vision_format_accepted": (
        "on-purpose",
        "an image for a model without vision is a 400 naming the block; llama-server: 500",
    ),
    "test_compat_anthropic.py::test_anthropic_tool_result_with_image": (
        "on-purpose",
        "an image for a model without vision is a 400 naming the block; llama-server: 500",
    ),
    # the same model, sampled: llama-server's own test depends on the draw
    "test_completion.py::test_completion_unified*": (
        "model-output",
        "the default temperature with no seed: an answer that ends before its n_predict fails "
        "the timings check (it passed in other runs)",
    ),
    "test_ctx_shift.py::test_ctx_shift_disabled_short_prompt[64-64-False]": (
        "model-output",
        "temperature 0.8 with no seed: an end of generation before 64 tokens fails it (it "
        "passed in a second run)",
    ),
    # issue #23, done on other branches
    "*::*logprobs*": ("other-helper", "logprobs (issue #23, another branch)"),
    "test_infill.py::*": ("other-helper", "/infill (issue #23, another branch)"),
    "test_rerank.py::*": ("other-helper", "rerank (issue #23, another branch)"),
    "test_lora.py::*": ("other-helper", "LoRA adapters (issue #23, another branch)"),
    "test_speculative.py::*": ("other-helper", "server drafts (issue #23, another branch)"),
}


ONLY_IDS_PLUGIN = """
import os

def pytest_collection_modifyitems(config, items):
    keep = set(open(os.environ["ONLY_IDS"], encoding="utf-8").read().split("\\n"))
    chosen = [i for i in items if i.path.name + "::" + i.name in keep]
    config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
    items[:] = chosen
"""


def reason(test_id: str) -> tuple[str, str]:
    if test_id in REASONS:  # exact ids first: their [params] are not fnmatch's classes
        return REASONS[test_id]
    for pattern, why in REASONS.items():
        if fnmatch.fnmatchcase(test_id, pattern):
            return why
    return ("unexplained", "")


def run_suite(
    python: str, port: int, tests: list[str], keyword: str | None, xml: Path
) -> dict[str, str]:
    """Each test's outcome ("passed", "failed", "error", "skipped") by id file::name[params].
    `tests`: files or test ids under unit/ (none: the whole suite)."""
    env = os.environ | {"DEBUG_EXTERNAL": "1", "PORT": str(port)}
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    cmd += [f"--junitxml={xml}", *(["-k", keyword] if keyword else [])]
    ids = [t for t in tests if "::" in t]
    if ids:  # a plugin keeps just these: pytest refuses a whole run for one id it cannot find
        (xml.parent / "only_ids.txt").write_text("\n".join(ids), encoding="utf-8")
        (xml.parent / "only_ids_plugin.py").write_text(ONLY_IDS_PLUGIN, encoding="utf-8")
        env["PYTHONPATH"] = str(xml.parent)
        env["ONLY_IDS"] = str(xml.parent / "only_ids.txt")
        cmd += ["-p", "only_ids_plugin"]
        tests = sorted({t.split("::", 1)[0] for t in ids})
    cmd += [f"unit/{t}" for t in tests] or ["unit"]
    try:
        subprocess.run(
            cmd, cwd=tests_dir(), env=env, stdout=subprocess.DEVNULL, timeout=3600, check=False
        )
    except subprocess.TimeoutExpired:
        print("the suite ran past an hour; counting what it wrote", file=sys.stderr)
    return outcomes_of(xml)


def outcomes_of(xml: Path) -> dict[str, str]:
    """The outcomes a pytest JUnit XML file records, by id file::name[params]."""
    outcomes: dict[str, str] = {}
    if not xml.exists():
        return outcomes
    for case in ET.parse(xml).iter("testcase"):
        file = case.get("classname", "").rsplit(".", 1)[-1] + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
        outcomes[f"{file}::{case.get('name')}"] = outcome
    return outcomes


def outcomes_in(path: Path) -> dict[str, dict[str, str]]:
    """The outcomes an earlier run's JSON holds (write_results' shape, or the older flat one)."""
    record = json.loads(path.read_text(encoding="utf-8"))
    return dict(record.get("results", record)["outcomes"])


def serve_llamacpp(model: Path, args: argparse.Namespace, xml: Path) -> dict[str, str]:
    binary = build_llamacpp(targets=("llama-server",)) / "llama-server"
    port = free_port()
    cmd = [str(binary), "-m", str(model), "--port", str(port), "--jinja", "--metrics"]
    cmd += ["-np", str(SLOTS), "-c", str(SLOTS * CELLS), "-t", str(args.threads)]
    with Server("llama-server", cmd, port):
        return run_suite(args.python, port, args.only, args.k, xml)


def serve_infer(args: argparse.Namespace, xml: Path, tests: list[str]) -> dict[str, str]:
    port = free_port()
    cmd = [infer_exe(), "serve", "smollm2", "--port", str(port)]
    if args.infer_src:  # another tree's infer package (e.g. main's, for the "before" count)
        os.environ["PYTHONPATH"] = str(args.infer_src)
        cmd[0:1] = [sys.executable, "-m", "infer"]
    # --any-model-name: the suite's requests name models such as "gpt-3.5-turbo", which
    # llama-server answers with the one model it serves; infer does that when asked to.
    cmd += ["--parallel", str(SLOTS), "--ctx-size", str(CELLS)]
    if not args.infer_src:  # main before issue #23 had no such flag, nor these values
        cmd += ["--any-model-name", "--cors-origin", "*"]
    cmd += ["--threads", str(args.threads), *args.infer_args]
    with Server("infer", cmd, port):
        return run_suite(args.python, port, tests, args.k, xml)


def report(llama: dict[str, str], infer: dict[str, str]) -> dict[str, object]:
    files: dict[str, dict[str, object]] = {}
    for test_id, outcome in sorted(llama.items()):
        if outcome != "passed":
            continue
        file = test_id.split("::", 1)[0]
        entry = files.setdefault(file, {"llama_server": 0, "infer": 0, "rest": []})
        entry["llama_server"] = int(str(entry["llama_server"])) + 1
        if infer.get(test_id) == "passed":
            entry["infer"] = int(str(entry["infer"])) + 1
        else:
            category, why = reason(test_id)
            if test_id not in infer:  # an interrupted run: say so, count it apart
                category, why = "not-run", "infer's run ended before this test"
            rest = entry["rest"]
            assert isinstance(rest, list)
            rest.append({"test": test_id, "infer": infer.get(test_id, "not run"),
                         "category": category, "reason": why})  # fmt: skip
    total_llama = sum(int(str(e["llama_server"])) for e in files.values())
    total_infer = sum(int(str(e["infer"])) for e in files.values())
    return {"files": files, "llama_server_passed": total_llama, "infer_passed": total_infer}


def show(summary: dict[str, object]) -> None:
    files = summary["files"]
    assert isinstance(files, dict)
    print("| test file | llama-server passes | of those, infer passes |")
    print("|---|---|---|")
    for file, entry in files.items():
        print(f"| {file} | {entry['llama_server']} | {entry['infer']} |")
    ls, inf = summary["llama_server_passed"], summary["infer_passed"]
    share = 100 * int(str(inf)) / max(1, int(str(ls)))
    print(f"| **all** | **{ls}** | **{inf}** ({share:.0f}%) |")
    print()
    rest = [item for entry in files.values() for item in entry["rest"]]
    ran = int(str(ls)) - sum(1 for item in rest if item["category"] == "not-run")
    apart = sum(1 for item in rest if item["category"] in ("llama-server-only", "other-helper"))
    print(f"of the {ran} infer ran: {inf} pass; leaving out llama-server's own machinery and")
    print(f"issue #23's other branches ({apart}): {inf} of {ran - apart}")
    print()
    by_category: dict[str, int] = {}
    for entry in files.values():
        for item in entry["rest"]:
            by_category[item["category"]] = by_category.get(item["category"], 0) + 1
            why = f": {item['reason']}" if item["reason"] else ""
            print(f"- {item['test']} ({item['infer']}) — {item['category']}{why}")
    print()
    print("failures by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(by_category.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=DEFAULT_PYTHON, help="runs the suite (see above)")
    ap.add_argument("--only", nargs="*", default=[], help="test files (test_tokenize.py ...)")
    ap.add_argument("-k", help="pytest's -k expression, to run a subset while iterating")
    add_json_arg(ap, "llamacpp_suite")
    ap.add_argument(
        "--llama-results", type=Path, help="reuse llama-server's outcomes from an earlier --json"
    )
    ap.add_argument(
        "--no-llama", action="store_true", help="run infer alone (on the whole suite or --only)"
    )
    ap.add_argument(
        "--infer-results", type=Path, help="reuse infer's outcomes from an earlier --json"
    )
    ap.add_argument(
        "--rerun",
        nargs="*",
        default=[],
        help="with --infer-results: run infer on these test files again, the others' reused",
    )
    ap.add_argument("--llama-xml", type=Path, help="reuse llama-server's JUnit XML of a run")
    ap.add_argument(
        "--infer-src", type=Path, help="a folder holding another infer package to measure"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of each server (1: steady on a shared "
        "machine, where llama.cpp's spinning threads wait out each other's time slices)",
    )
    ap.add_argument("--infer-args", nargs="*", default=[], help="more `infer serve` flags")
    args = ap.parse_args()
    model = bundled_model().resolve()
    with tempfile.TemporaryDirectory() as tmp:
        if args.no_llama:
            llama = {}
        elif args.llama_results:
            llama = outcomes_in(args.llama_results)["llama-server"]
        elif args.llama_xml:
            llama = outcomes_of(args.llama_xml)
        else:
            llama = serve_llamacpp(model, args, Path(tmp) / "llama.xml")
        if args.only:  # reused outcomes hold every file's: keep the files asked for
            llama = {t: o for t, o in llama.items() if t.split("::", 1)[0] in args.only}
        # infer runs only what llama-server passes: the rest cannot count (and the suite's
        # answers without n_predict run to the end of the context: an hour on a busy machine)
        passing = [t for t, outcome in llama.items() if outcome == "passed"]
        if args.infer_results:
            infer = outcomes_in(args.infer_results)["infer"]
            if args.rerun:  # the files a change touched, run again over the reused outcomes

                def again(test: str) -> bool:
                    return test.split("::", 1)[0] in args.rerun

                infer = {t: o for t, o in infer.items() if not again(t)}
                rerun = [t for t in passing if again(t)]
                infer |= serve_infer(args, Path(tmp) / "infer.xml", rerun) if rerun else {}
        elif args.no_llama:  # the whole suite (or --only), to be put beside llama's later
            infer = serve_infer(args, Path(tmp) / "infer.xml", args.only)
        else:
            infer = serve_infer(args, Path(tmp) / "infer.xml", passing) if passing else {}
    summary = report(llama, infer)
    show(summary)
    # where the outcomes came from: reused files, or the whole suite (or --only / -k) run now
    reused = {k: str(getattr(args, k)) for k in ("llama_results", "infer_results", "llama_xml",
                                                 "infer_src") if getattr(args, k)}  # fmt: skip
    settings = {"model": model.name, "slots": SLOTS, "cells": CELLS, "threads": args.threads,
                "only": args.only or None, "k": args.k, "no_llama": args.no_llama,
                "rerun": args.rerun or None,
                "infer_args": " ".join(args.infer_args) or None, **reused}  # fmt: skip
    outcomes = {"llama-server": llama, "infer": infer}
    write_results(args.json, "llamacpp_suite.py", settings, {**summary, "outcomes": outcomes})


if __name__ == "__main__":
    main()
