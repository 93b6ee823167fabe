"""benchmarks/determinism.py's two parts that do not decode in-process: what the mode costs
in the server (benchmarks/serve.py's workload against `infer serve` with and without
--deterministic), and joining runs made part by part into one results file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import write_results


def cost(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    """What the mode costs: benchmarks/serve.py's workload (C clients, each a few streamed
    completions of distinct ~64-token prompts, `--cost-tokens` out) against `infer serve` with
    and without --deterministic, rounds interleaved; aggregate tokens/s and time to first
    token."""
    import asyncio
    import statistics

    from common import compile_infer, wait_quiet
    from serve import Server, free_port, load
    from vs_llamacpp import infer_exe

    compile_infer()
    port = free_port()
    base = [infer_exe(), "serve", str(model), "--port", str(port), "--parallel", "8",
            "--ctx-size", "1024", "--no-prompt-cache"]  # fmt: skip
    commands = {"usual": base, "deterministic": [*base, "--deterministic"]}
    tps: dict[tuple[str, int], list[float]] = {}
    ttft: dict[tuple[str, int], list[float]] = {}
    seed = 0
    for rnd in range(args.cost_rounds):
        for name in commands if rnd % 2 == 0 else reversed(commands):
            with Server(name, commands[name], port):
                for clients in args.cost_clients:
                    wait_quiet()
                    wall, flat = asyncio.run(
                        load(port, str(model), clients, 2, 48, args.cost_tokens, seed)
                    )
                    seed += 1000
                    tps.setdefault((name, clients), []).append(sum(r[1] for r in flat) / wall)
                    ttft.setdefault((name, clients), []).extend(r[0] for r in flat)
                    print(f"  cost round {rnd + 1} {name} clients={clients}: "
                          f"{tps[(name, clients)][-1]:.1f} tok/s", file=sys.stderr)  # fmt: skip
    out: dict[str, Any] = {"command": " ".join(commands["deterministic"][1:]), "clients": {}}
    for clients in args.cost_clients:
        row = {
            name: {
                "aggregate_tps": statistics.median(tps[(name, clients)]),
                "aggregate_rounds": tps[(name, clients)],
                "ttft_p50": statistics.median(ttft[(name, clients)]),
            }
            for name in commands
        }
        usual, det = row["usual"]["aggregate_tps"], row["deterministic"]["aggregate_tps"]
        row["ratio"] = det / usual if usual else None
        out["clients"][str(clients)] = row
    return out


def merge(files: list[Path], out: Path) -> None:
    """One results file from runs made part by part (`--fa on`, `--fa off`, `--no-logits`):
    their logits in order, the last cost, and each run's own record under `parts`."""
    import json

    records = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    logits = [x for r in records for x in r["results"].get("logits", [])]
    costs = [r["results"]["cost"] for r in records if r["results"].get("cost")]
    parts = [{k: r[k] for k in ("date", "commit", "settings", "smoke")} for r in records]
    results = {"logits": logits, "cost": costs[-1] if costs else None}
    write_results(out, "determinism.py", {"merged": [f.name for f in files]}, results,
                  parts=parts)  # fmt: skip
