"""What the load probe costs `infer serve` (runtime/llama/probe.py): the seconds a first load
of a model file spends loading it in a child process first, against the load itself.

    python benchmarks/abortguard.py [--runs 5] [--model PATH]

For the bundled SmolLM2 (or --model) and a tiny generated GGUF: the probe (a child process
that loads the file mmap'd, makes a small context and decodes one token) and the server's own
load of the same file in this process (weights, the server's context, one warm-up token),
interleaved, each on a quiet machine (common.measure). The probe runs once per file identity
per server process, so this is paid at start and at a model's first on-demand load only;
nothing crosses a process boundary while decoding (benchmarks/serve.py measures throughput).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import add_json_arg, machine, measure, write_results  # noqa: E402
from vs_llamacpp import bundled_model  # noqa: E402


def probe_s(path: Path) -> float:
    from infer.runtime.llama.probe import run_probe
    from infer.runtime.params import LoadOptions

    started = time.perf_counter()
    failed = run_probe(path, LoadOptions())
    if failed is not None:
        sys.exit(f"the probe failed on {path}: {failed.reason}")
    return time.perf_counter() - started


def load_s(path: Path, ctx: int) -> float:
    """The server's load: weights, its multi-sequence context, one warm-up token."""
    from infer.runtime.api import load
    from infer.runtime.models.resolve import resolve
    from infer.runtime.params import LoadOptions

    started = time.perf_counter()
    model = load(resolve(str(path)), LoadOptions(ctx_size=ctx))
    context = model.new_context(4, ctx, min(512, ctx))
    context.add(0, [max(model.bos_id, 0)], True)
    context.decode()
    context.close()
    model.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--ctx-size", type=int, default=1024, help="per sequence, 4 sequences")
    add_json_arg(parser, "abortguard")
    args = parser.parse_args()
    from tests.tiny_gguf import write_tiny_gguf

    tiny = write_tiny_gguf(Path(tempfile.mkdtemp(prefix="abortguard-")) / "tiny.gguf")
    models = {"bundled": (args.model or bundled_model()).resolve(), "tiny": tiny}
    results: dict[str, dict[str, object]] = {}
    for name, path in models.items():
        probe_s(path), load_s(path, args.ctx_size)  # untimed: page cache, imports
        probes: list[float] = []
        loads: list[float] = []
        for _ in range(args.runs):
            probes.append(measure(lambda path=path: probe_s(path)).value)
            loads.append(measure(lambda path=path: load_s(path, args.ctx_size)).value)
        results[name] = {
            "file": path.name,
            "size_mb": round(path.stat().st_size / 1e6, 1),
            "probe_s": probes,
            "load_s": loads,
            "probe_median_s": statistics.median(probes),
            "load_median_s": statistics.median(loads),
        }
        print(
            f"{name} ({path.name}): probe {statistics.median(probes):.3f} s, "
            f"load {statistics.median(loads):.3f} s (medians of {args.runs})"
        )
    print(f"machine: {machine()}")
    write_results(args.json, "abortguard", {"runs": args.runs, "ctx_size": args.ctx_size}, results)


if __name__ == "__main__":
    main()
