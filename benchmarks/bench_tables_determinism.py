"""The tables of benchmarks/determinism.py: where a temperature-0 answer's difference under load
comes from (logits compared bit for bit), what `--deterministic` changes through the scheduler,
and what it costs in the server. Registered like bench_tables.py's renderers."""

from __future__ import annotations

import re
from typing import Any

from bench_tables import Record, measured, num, ratio, renderer, table


def _diff(x: dict[str, Any]) -> str:
    if not x["rows_differing"]:
        return "0 (identical)"
    return f"{x['max_abs_diff']:.2g}"


def _rows(x: dict[str, Any]) -> str:
    return f"{x['rows_differing']}/{x['rows']}"


def _flips(x: dict[str, Any]) -> str:
    flips = f"{x['argmax_changed']}/{x['rows']}"
    return f"**{flips}**" if x["argmax_changed"] else flips


@renderer("determinism")
def determinism(r: Record) -> str:
    res = r["results"]
    parts = [measured(r)]
    runs = [x for x in res.get("logits", []) if "ways" in x and "prompts" in x]
    for model in dict.fromkeys(x["model"] for x in runs):
        mine = [x for x in runs if x["model"] == model]
        by_fa = {x.get("kernels", "FA on" if x["flash_attn"] else "FA off"): x for x in mine}
        first = mine[0]
        names = list(dict.fromkeys(w["name"] for x in mine for w in x["ways"]))
        whats = {w["name"]: w["what"] for x in mine for w in x["ways"]}
        header = ["way", "what"]
        for fa in by_fa:
            header += [f"{fa}: rows differing", "max abs Δlogit", "argmax changed"]
        rows = []
        for name in names:
            row = [name, whats[name]]
            for x in by_fa.values():
                w = next((w for w in x["ways"] if w["name"] == name), None)
                row += [_rows(w), _diff(w), _flips(w)] if w else ["-", "-", "-"]
            rows.append(row)
        lengths = first["prompt_tokens"]
        parts.append(
            f"**{model}**, {first['prompts']} prompts of {min(lengths)}–{max(lengths)} tokens, "
            f"{first['rows_per_prompt']} rows each (after the prompt and after each of the "
            f"reference's greedy tokens), {first['threads']} threads; a way with no figure "
            "was not part of that run:"
        )
        parts.append(table(header, rows))
        for x in res.get("logits", []):
            if x["model"] == model and "prompts" not in x and x.get("ways"):
                t = [[w["name"], w["what"], _rows(w), _diff(w), _flips(w)] for w in x["ways"]]
                parts.append("Thread counts (each against its own reference at the default count):")
                parts.append(table(["way", "what", "rows differing", "max abs Δ", "argmax"], t))
    sched = [y for x in res.get("logits", []) for y in x.get("scheduler", [])]
    if sched:
        rows = [
            [y["model"], y["name"], f"{y['rows_differing']}/{y['rows']}", _diff(y),
             f"{y['texts_changed']}/{y['prompts']}"]
            for y in sched
        ]  # fmt: skip
        parts.append(
            "Through the scheduler (`infer serve`'s and `--batch`'s): each prompt answered "
            "alone, then again after three other prompts joined (greedy, log-probabilities on):"
        )
        header = ["model", "mode", "tokens whose logprob differs", "max abs Δ", "texts differ"]
        parts.append(table(header, rows))
    cost = res.get("cost")
    if cost:
        rows = []
        for clients, row in cost["clients"].items():
            u, d = row["usual"], row["deterministic"]
            rows.append([clients, num(u["aggregate_tps"]), num(d["aggregate_tps"]),
                         ratio(d["aggregate_tps"], u["aggregate_tps"]),
                         num(u["ttft_p50"], 3), num(d["ttft_p50"], 3)])  # fmt: skip
        # the model's file name, not where it was; no port (each run takes a free one)
        command = re.sub(r"--port \d+ ", "", re.sub(r"\S+/(\S+\.gguf)", r"\1", cost["command"]))
        parts.append(f"What the mode costs (`infer {command}` against the same without "
                     "`--deterministic`; benchmarks/serve.py's workload):")  # fmt: skip
        header = ["clients", "usual tok/s", "deterministic tok/s", "ratio", "TTFT p50 s (usual)",
                  "TTFT p50 s (deterministic)"]  # fmt: skip
        parts.append(table(header, rows))
    return "\n\n".join(parts) + "\n"
