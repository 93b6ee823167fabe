"""The tables benchmarks/render.py renders: one renderer per results file (or view of one),
registered by name, and a generic table for a file that has none yet.

A renderer takes the parsed JSON a script wrote (benchmarks/common.py write_results: date,
machine, commit, settings, results) and returns Markdown. Register one with
`@renderer("NAME")`, NAME the results file's stem, or `@renderer("NAME/view")` for a second
rendering of the same file (a sentence in the README, say).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]
RENDERERS: dict[str, Callable[[Record], str]] = {}


def renderer(name: str) -> Callable[[Callable[[Record], str]], Callable[[Record], str]]:
    def register(fn: Callable[[Record], str]) -> Callable[[Record], str]:
        RENDERERS[name] = fn
        return fn

    return register


# --- formatting ---------------------------------------------------------------------------
def num(x: Any, digits: int = 1) -> str:
    """A figure as the tables show it: `-` for none, thousands separated."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def spread(values: list[float], digits: int = 1) -> str:
    """Median (± standard deviation, n) of the samples."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{num(statistics.median(values), digits)} (± {num(sd, digits)}, n={len(values)})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def measured(record: Record, what: str = "") -> str:
    """The line above a table: when, on what, at which commit, with which settings."""
    date = str(record.get("date", "?")).replace("T", " ").replace("Z", " UTC")
    bits = [f"Measured {date}", record.get("machine", "machine not recorded")]
    if record.get("commit"):
        bits.append(f"commit {record['commit']}")
    line = ", ".join(bits)
    settings = record.get("settings") or {}
    if settings:
        shown = "; ".join(f"{k} {_setting(v)}" for k, v in settings.items())
        line += f" ({shown})"
    script = record.get("script", "")
    if script:
        line += f" — `benchmarks/{script}`"
    line += f". {what}" if what else "."
    if record.get("smoke"):
        line = SMOKE.format(script=script or "its script") + "\n\n" + line
    return line


SMOKE = (
    "**A smoke run** (short settings, no quiet-machine gate, `INFER_BENCH_NO_WAIT=1`): it shows "
    "the table's shape; its figures mean nothing until `python benchmarks/{script}` is run on a "
    "quiet machine."
)


def _setting(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


# --- the generic table: any results file --------------------------------------------------
def _scalars(value: Any, prefix: str = "") -> dict[str, Any]:
    """The scalar leaves of a JSON value, their paths joined by dots (lists left out)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_scalars(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (str, int, float, bool)) or value is None:
        return {prefix: value}
    return {}


def generic(record: Record) -> str:
    """Rows = the results' keys, columns = their scalar fields (a flat file: one row each)."""
    results = record.get("results", {})
    rows: list[list[str]] = []
    if isinstance(results, dict) and results and all(isinstance(v, dict) for v in results.values()):
        fields: list[str] = []
        flat = {k: _scalars(v) for k, v in results.items()}
        for leaves in flat.values():
            fields += [f for f in leaves if f not in fields]
        rows = [[str(k), *(num(leaves.get(f), 3) for f in fields)] for k, leaves in flat.items()]
        body = table(["", *fields], rows)
    else:
        leaves = _scalars(results)
        body = table(["result", "value"], [[k, num(v, 3)] for k, v in leaves.items()])
    return measured(record) + "\n\n" + body


def ratio(a: float | None, b: float | None, digits: int = 3) -> str:
    return "-" if not a or not b else f"{a / b:.{digits}f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- one renderer per script ---------------------------------------------------------------
VS_LABELS = {
    "generation": "generation (tg{gen}) tok/s",
    "prompt": "prompt (pp{prompt}) tok/s",
    "first_token": "start → first token, s",
}


@renderer("vs_llamacpp")
def vs_llamacpp(r: Record) -> str:
    s = r.get("settings", {})
    rows = []
    for key, label in VS_LABELS.items():
        m = r["results"].get(key)
        if not m:
            continue
        digits = 3 if key == "first_token" else 1
        verdict = "met" if m.get("passed") else "**missed**"
        rows.append(
            [
                label.format(**s),
                spread(m["infer"], digits),
                spread(m["llama.cpp"], digits),
                f"{m['ratio_of_medians']:.3f}",
                f"{m['target']} {verdict}",
                f"{m['ratio_of_bests']:.3f}",
            ]
        )
    header = ["metric", "infer", "llama.cpp", "ratio of medians", "target", "ratio of bests"]
    return measured(r) + "\n\n" + table(header, rows)


@renderer("vs_llamacpp/line")
def vs_llamacpp_line(r: Record) -> str:
    res = r["results"]
    date = str(r.get("date", "?"))[:10]
    gen, first = res["generation"], res["first_token"]
    return (
        f"Latest run ({date}, {r.get('machine', '?').split(',')[0]}, "
        f"{r['settings'].get('threads', '?')} threads): generation "
        f"**{gen['ratio_of_medians']:.2f}×** llama-bench's rate, prompt "
        f"**{res['prompt']['ratio_of_medians']:.2f}×**, start to first token "
        f"**{first['ratio_of_medians']:.2f}×** llama-completion's time "
        f"(`benchmarks/vs_llamacpp.py`)."
    )


@renderer("doors")
def doors(r: Record) -> str:
    base = r["results"].get("openai_chat", {}).get("median_tps")
    rows = [
        [
            f"`{door}`",
            spread([x["tps"] for x in d["samples"]]),
            str(d["samples"][0]["tokens"]) if d["samples"] else "-",
            ratio(d["median_tps"], base),
        ]
        for door, d in r["results"].items()
    ]
    header = ["door", "tok/s", "tokens", f"ratio to the chat door (target {r.get('target', '')})"]
    return measured(r) + "\n\n" + table(header, rows)


@renderer("compat")
def compat(r: Record) -> str:
    res = r["results"]
    suites = sorted({s for side in res.values() for s in side})
    rows = []
    for suite in suites:
        row = [f"`{suite}`"]
        for side in ("infer", "llama-server"):
            c = res.get(side, {}).get(suite, {})
            row.append(f"{c.get('passed', 0)} / {c.get('failed', 0)} / {c.get('error', 0)}")
        rows.append(row)
    header = [
        "suite",
        "infer serve passed / failed / errors",
        "llama-server passed / failed / errors",
    ]
    return measured(r) + "\n\n" + table(header, rows)


@renderer("serve")
def serve(r: Record) -> str:
    rows = []
    for clients, sides in r["results"].items():
        i, s = sides["infer"], sides["llama-server"]

        def tail(x: dict[str, Any]) -> str:
            if x.get("ttft_p95") is not None:
                return f"{x['ttft_p95']:.3f} (p95, n={x['ttft_n']})"
            return f"{x['ttft_max']:.3f} (max, n={x['ttft_n']})"

        rows.append(
            [
                str(clients),
                num(i["aggregate_tps"]),
                num(s["aggregate_tps"]),
                ratio(i["aggregate_tps"], s["aggregate_tps"]),
                f"{i['ttft_p50']:.3f} / {s['ttft_p50']:.3f}",
                f"{tail(i)} / {tail(s)}",
            ]
        )
    header = [
        "clients",
        "infer tok/s",
        "llama-server tok/s",
        "ratio",
        "TTFT median infer / llama-server, s",
        "TTFT tail infer / llama-server, s",
    ]
    note = (
        f"Aggregates: median of the rounds. TTFT over every request of every round: the 95th "
        f"percentile where there were at least {r.get('min_p95', 20)}, else the maximum."
    )
    return measured(r) + "\n\n" + table(header, rows) + "\n\n" + note


@renderer("concurrency")
def concurrency(r: Record) -> str:
    rows = []
    for tool, by_n in r["results"].items():
        for n, x in by_n.items():
            tokens = "/".join(f"{t:.0f}" for t in x["tokens_per_process"])
            rows.append(
                [
                    tool,
                    n,
                    num(x["aggregate_tps"]),
                    f"{x['vs_alone']:.2f}",
                    f"{num(x['per_process_min'])}–{num(x['per_process_max'])}",
                    tokens,
                ]
            )
    header = ["tool", "N", "aggregate tok/s", "vs N=1", "per-process tok/s (min–max)",
              "tokens per process (each round)"]  # fmt: skip
    return measured(r) + "\n\n" + table(header, rows)


@renderer("embed")
def embed(r: Record) -> str:
    rows = []
    for tool, x in r["results"].items():
        if "seconds" in x:
            took = spread(x["seconds"], 2)
        else:
            took = spread(x["seconds_per_line"], 3) + " per line"
        rows.append([tool, took, num(x["lines_per_s"]), f"{x['vs_llama_embedding']:.3f}"])
    header = ["tool", "seconds (process start to exit)", "lines/s", "vs llama-embedding"]
    return measured(r) + "\n\n" + table(header, rows)


@renderer("grammar")
def grammar(r: Record) -> str:
    rows = []
    for side, x in r["results"].items():
        vs = "" if side == "infer" else f"{x['infer_ratio']:.3f}"
        rows.append([side, spread(x["tps"]), str(x["steps"]), vs])
    header = ["side", "tok/s (steps / (eval + sampling time))", "decode steps", "infer / it"]
    same = r.get("same_answer")
    verdict = (
        "infer's answer equals llama-completion's with the same grammar in every round."
        if same
        else "**infer's answer differed from llama-completion's with the same grammar**: the "
        "rates compare different work."
    )
    return measured(r) + "\n\n" + table(header, rows) + "\n\n" + verdict


@renderer("rpc")
def rpc(r: Record) -> str:
    speed, traffic = r["results"]["speed"], r["results"]["traffic"]
    local = speed.get("local", [])
    rows = []
    for name, runs in speed.items():

        def m(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
            return median([s[key] for s in runs])

        vs_local = (
            median([s["tg"] / b["tg"] for s, b in zip(runs, local, strict=False)])
            if local
            else None
        )
        rows.append(
            [
                name,
                num(m("pp")),
                num(m("tg")),
                num(m("ttft_ms"), 0),
                num(m("load_s"), 2),
                num(m("llama_pp")),
                num(m("llama_tg")),
                num(median([s["pp"] / s["llama_pp"] for s in runs]), 3),
                num(median([s["tg"] / s["llama_tg"] for s in runs]), 3),
                f"{vs_local:.2f}×" if vs_local else "-",
            ]
        )
    header = ["variant", "infer pp tok/s", "infer tg tok/s", "first token ms", "load s",
              "llama-bench pp", "llama-bench tg", "infer / llama-bench pp",
              "infer / llama-bench tg", "tg vs local"]  # fmt: skip
    bytes_rows = [
        [name, num(round(t["per_generated_token"])), num(round(t["per_prompt_token"])),
         f"{t['load'] / 1e6:,.1f} MB"]
        for name, t in traffic.items()
    ]  # fmt: skip
    bytes_header = ["variant", "bytes per generated token", "bytes per prompt token",
                    "load (no token traffic)"]  # fmt: skip
    return measured(r) + "\n\n" + table(header, rows) + "\n\n" + table(bytes_header, bytes_rows)


@renderer("perplexity")
def perplexity(r: Record) -> str:
    rows = []
    for x in r["results"]:
        q, ours, theirs = x["quantize"], x["infer"], x["llama_cpp"]
        rows.append(
            [
                x["model"],
                f"{x['size'] / 1e6:.1f} MB",
                f"{q['seconds']:.1f} s" if q else "-",
                f"{ours['ppl']:.4f} ± {ours['stderr']:.4f}",
                f"{theirs['ppl']:.4f} ± {theirs['stderr']:.4f}",
                "yes" if x.get("same_to_4_decimals") else "**no**",
            ]
        )
    header = ["model", "size", "quantize", "infer PPL", "llama-perplexity PPL",
              "equal to the 4 decimals llama-perplexity prints"]  # fmt: skip
    return measured(r) + "\n\n" + table(header, rows)


@renderer("startup")
def startup(r: Record) -> str:
    rows = [
        [f"`{name}`", spread(x["first_byte_ms"]), spread(x["exit_ms"])]
        for name, x in r["results"].items()
    ]
    return measured(r) + "\n\n" + table(["command", "first byte on stdout, ms", "exit, ms"], rows)


@renderer("prompt_cache")
def prompt_cache(r: Record) -> str:
    data = r["results"]
    rows = []
    for side in ("uncached", "cold", "warm"):
        runs = data.get(side, [])
        rows.append(
            [
                side,
                spread([x["ttft_s"] * 1000 for x in runs], 0),
                num(median([x["prompt_tokens"] for x in runs]), 0),
                num(median([x["prompt_eval_tokens"] for x in runs]), 0),
                spread([x["wall_s"] for x in runs], 2),
            ]
        )
    header = ["run", "TTFT ms", "prompt tokens", "evaluated", "process wall s"]
    warm = median([x["ttft_s"] for x in data.get("warm", [])])
    uncached = median([x["ttft_s"] for x in data.get("uncached", [])])
    line = (
        f"Warm / uncached TTFT: **{ratio(warm, uncached)}** (target ≤ {r.get('target', 0.25)}); "
        f"the document's cache entry: {r.get('entry_bytes', 0) / 1e6:.1f} MB."
    )
    return measured(r) + "\n\n" + table(header, rows) + "\n\n" + line


@renderer("speculative")
def speculative(r: Record) -> str:
    rows = []
    for x in r["results"]["runs"]:
        same = (
            "yes" if x["identical_output"] else f"no (from character {min(x['divergence_chars'])})"
        )
        rows.append(
            [
                x["variant"] + (" `--draft-always`" if x["always"] else ""),
                str(x["draft_max"] or "default"),
                str(x["generated_tokens"]),
                num(median(x["plain_tps"])),
                num(median(x["lookup_tps"])),
                f"**{x['speedup_median']:.2f}×** ({', '.join(f'{v:.2f}' for v in x['speedup'])})",
                f"{x['acceptance']:.0%} ({x['accepted']}/{x['drafted']})",
                same,
            ]
        )
    header = ["variant", "--draft-max", "answer tokens", "plain tok/s", "lookup tok/s",
              "speedup (per round)", "drafts accepted", "same text as plain"]  # fmt: skip
    out = measured(r) + "\n\n" + table(header, rows)
    curves = r["results"].get("batch_ms") or {}
    for after, curve in curves.items():
        sizes = list(curve)
        out += f"\n\nA verify batch of m tokens after {after} tokens of context:\n\n"
        out += table(
            ["m tokens", *sizes],
            [
                ["ms", *(f"{curve[m]:.2f}" for m in sizes)],
                ["ms per token", *(f"{curve[m] / int(m):.2f}" for m in sizes)],
            ],
        )
    return out


@renderer("batched")
def batched(r: Record) -> str:
    rows = []
    for b, x in r["results"].items():
        rows.append(
            [
                b,
                spread(x["llama"]),
                spread(x["infer"]),
                ratio(median(x["infer"]), median(x["llama"])),
                spread(x["total"]),
                spread(x["sequential"]),
                ratio(median(x["total"]), median(x["sequential"]), 2) + "×",
            ]
        )
    header = ["B", "llama-batched-bench S_TG", "infer --batch generation",
              f"ratio (target {r.get('target', '')})", "infer --batch, prompts included",
              "one at a time", "speedup"]  # fmt: skip
    return measured(r) + "\n\n" + table(header, rows)


@renderer("remote")
def remote(r: Record) -> str:
    samples = r["results"]
    local = samples.get("local", [])
    rows = []
    for name, runs in samples.items():
        pairs = list(zip(runs, local, strict=False))
        added = median([(s["ttft_s"] - b["ttft_s"]) * 1000 for s, b in pairs])
        times = median([s["generate_tokens_per_s"] / b["generate_tokens_per_s"] for s, b in pairs])
        rows.append(
            [
                "local `infer run`" if name == "local" else f"`--remote` {name}",
                num(median([s["ttft_s"] * 1000 for s in runs]), 0),
                "" if name == "local" else f"{added:+.0f} ms",
                num(median([s["generate_tokens_per_s"] for s in runs])),
                f"{times:.2f}×" if times else "-",
            ]
        )
    header = ["variant", "first token, ms", "vs local", "generation tok/s", "× local"]
    return measured(r) + "\n\n" + table(header, rows)


@renderer("scheduler_overhead")
def scheduler_overhead(r: Record) -> str:
    rows = [
        [
            n,
            num(x["tps"]),
            num(x["decode_ms_per_step"], 2),
            num(x["python_us_per_token"]),
            f"{x['python_share']:.1%}",
        ]
        for n, x in r["results"].items()
    ]
    header = ["sequences", "tok/s", "decode ms/step", "Python µs/token", "Python share"]
    return measured(r) + "\n\n" + table(header, rows)
