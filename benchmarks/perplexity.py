"""`infer perplexity` against llama.cpp's `llama-perplexity`, and what a quantization costs.

    python benchmarks/perplexity.py [--model PATH] [--threads 2] [--ctx-size 512]
                                    [--types Q8_0,Q4_K_M,Q2_K] [--json FILE] [--no-wait]

1. Cross-check: the same model, text and window size through `infer perplexity` and
   `llama-perplexity -f FILE -c 512 -t 2`; prints both values, their relative difference
   (target: within 1%) and whether infer's value rounds to the 4 decimals llama-perplexity
   prints (below those, a difference is its rounding, not a measurement).
2. Quantization cost: the model is quantized with `infer quantize` to each of --types (into a
   temporary INFER_HOME), and each result measured the same way, with the quantize time and file
   size. The bundled SmolLM2 is already Q4_1, so these are *re*quantizations
   (--allow-requantize): Q8_0 cannot recover what Q4_1 lost, lower types lose more.

The text is infer's own README and architecture notes at a fixed commit (about 18 KB of English
with some Markdown and code: ~5,400 SmolLM2 tokens, ten 512-token windows), so the figures can
be reproduced. Times are wall clock, process start to exit (model load included); "others' CPU"
is the share of the CPUs other processes used meanwhile (see common.py): perplexity values do not
depend on it, times do. `llama-perplexity` is built once (CPU, Release) next to the other
llama.cpp tools that vs_llamacpp.py builds, in ~/.cache/infer-bench.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_arg, machine, measure, run, write_results
from vs_llamacpp import build_llamacpp, bundled_model, infer_exe

HERE = Path(__file__).resolve().parent
CORPUS_COMMIT = "11926c4"  # README.md + docs/architecture.md as they were at this commit
CORPUS_FILES = ("README.md", "docs/architecture.md")
_FINAL = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")


def corpus(dest: Path) -> Path:
    """The benchmark text, from git (reproducible); the working tree's files if git fails."""
    parts = []
    for name in CORPUS_FILES:
        shown = subprocess.run(
            ["git", "-C", str(HERE.parent), "show", f"{CORPUS_COMMIT}:{name}"],
            capture_output=True, check=False,
        )  # fmt: skip
        parts.append(shown.stdout if shown.returncode == 0 else (HERE.parent / name).read_bytes())
    dest.write_bytes(b"\n".join(parts))
    return dest


def llama_perplexity_bin() -> Path:
    bin_dir = build_llamacpp()
    exe = bin_dir / "llama-perplexity"
    if not exe.exists():
        print("building llama-perplexity …", file=sys.stderr)
        run(["cmake", "--build", str(bin_dir.parent), "--target", "llama-perplexity", "-j", "2"])
    return exe


WAIT_QUIET = True  # --no-wait: measure at once (perplexity values are the same, times noisier)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """stdout + stderr of a command and its wall time (process start to exit, load included),
    on a quiet machine (see common.py)."""

    def once() -> tuple[str, float]:
        t0 = time.monotonic()
        result = run(cmd, env=env)
        return result.stdout + result.stderr, time.monotonic() - t0

    sample = measure(once, tries=2 if WAIT_QUIET else 1, quiet=WAIT_QUIET)
    out, seconds = sample.value
    return out, seconds, sample.interference


def llama_cpp_ppl(exe: Path, model: Path, text: Path, ctx: int, threads: int) -> dict:
    cmd = [str(exe), "-m", str(model), "-f", str(text), "-c", str(ctx), "-t", str(threads)]
    out, seconds, interference = timed(cmd)
    found = _FINAL.search(out)
    if not found:
        sys.exit(f"no 'Final estimate' in llama-perplexity's output:\n{out[-2000:]}")
    return {"ppl": float(found[1]), "stderr": float(found[2]), "seconds": seconds,
            "interference": interference}  # fmt: skip


def infer_ppl(model: str, text: Path, ctx: int, threads: int, env: dict[str, str]) -> dict:
    cmd = [infer_exe(), "perplexity", model, str(text), "-c", str(ctx), "-t", str(threads)]
    out, seconds, interference = timed([*cmd, "--json"], env)
    data = json.loads(out.splitlines()[0])  # stdout comes first: the JSON line
    return {"ppl": data["ppl"], "stderr": data["ppl_stderr"], "seconds": seconds,
            "tokens": data["tokens"], "chunks": data["chunks"],
            "interference": interference}  # fmt: skip


def quantize(source: str, qtype: str, threads: int, env: dict[str, str]) -> dict:
    cmd = [infer_exe(), "quantize", source, qtype, "--allow-requantize", "-t", str(threads)]
    t0 = time.monotonic()
    run(cmd, env=env)
    seconds = time.monotonic() - t0
    listing = json.loads(run([infer_exe(), "list", "--json"], env=env).stdout)
    row = next(m for m in listing["models"] if m["quantization"] == qtype)
    return {"name": row["name"], "path": row["path"], "size": row["size"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=512)
    parser.add_argument("--types", default="Q8_0,Q4_K_M,Q2_K", help="comma-separated")
    add_json_arg(parser, "perplexity")
    parser.add_argument(
        "--no-wait", action="store_true", help="do not wait for an idle machine before each run"
    )
    args = parser.parse_args()
    global WAIT_QUIET
    WAIT_QUIET = not args.no_wait
    model = (args.model or bundled_model()).resolve()
    exe = llama_perplexity_bin()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus(Path(tmp) / "corpus.txt")
        env = {"INFER_HOME": str(Path(tmp) / "home"), "HF_HUB_OFFLINE": "1"}
        source = str(model) if args.model else "smollm2"  # names its quantizations smollm2:T
        variants = [(source, source, model, None)]
        for qtype in filter(None, args.types.split(",")):
            q = quantize(source, qtype.strip(), args.threads, env)
            variants.append((q["name"], q["name"], Path(q["path"]), q))
        for label, ref, path, q in variants:
            ours = infer_ppl(ref, text, args.ctx_size, args.threads, env)
            theirs = llama_cpp_ppl(exe, path, text, args.ctx_size, args.threads)
            rows.append({"model": label, "size": path.stat().st_size, "quantize": q,
                         "infer": ours, "llama_cpp": theirs,
                         "rel_diff": abs(ours["ppl"] - theirs["ppl"]) / theirs["ppl"]})  # fmt: skip
        digest = hashlib.sha256(text.read_bytes()).hexdigest()[:12]
        meta = {"machine": machine(), "model": model.name, "ctx_size": args.ctx_size,
                "threads": args.threads, "text_bytes": text.stat().st_size,
                "text_sha256": digest}  # fmt: skip
    report(meta, rows)
    for r in rows:  # llama-perplexity prints 4 decimals: equal to those, or not
        r["same_to_4_decimals"] = all(
            round(r["infer"][k], 4) == round(r["llama_cpp"][k], 4) for k in ("ppl", "stderr")
        )
    settings = {"model": model.name, "ctx_size": args.ctx_size, "threads": args.threads,
                "types": args.types, "text_bytes": meta["text_bytes"],
                "text_sha256": meta["text_sha256"], "corpus_commit": CORPUS_COMMIT}  # fmt: skip
    write_results(args.json, "perplexity.py", settings, rows)
    if any(r["rel_diff"] > 0.01 for r in rows):
        sys.exit(1)


def report(meta: dict, rows: list[dict]) -> None:
    first = rows[0]["infer"]
    print(meta["machine"])
    print(
        f"{meta['model']}, -c {meta['ctx_size']} -t {meta['threads']}, "
        f"text {meta['text_bytes']:,} bytes (sha256 {meta['text_sha256']}…), "
        f"{first['tokens']:,} tokens, {first['chunks']} windows\n"
    )
    header = ["model", "size", "quantize", "infer PPL", "llama-perplexity PPL", "rel. diff",
              "infer s", "llama.cpp s", "others' CPU"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        q, ours, theirs = r["quantize"], r["infer"], r["llama_cpp"]
        cells = [
            r["model"],
            f"{r['size'] / 1e6:.1f} MB",
            f"{q['seconds']:.1f} s" if q else "-",
            f"{ours['ppl']:.4f} ± {ours['stderr']:.4f}",
            f"{theirs['ppl']:.4f} ± {theirs['stderr']:.4f}",
            f"{100 * r['rel_diff']:.4f}%",
            f"{ours['seconds']:.1f}",
            f"{theirs['seconds']:.1f}",
            f"{100 * max(ours['interference'], theirs['interference']):.0f}%",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
