"""The docs' sentences rendered from the same results files as the tables (bench_tables.py):
a figure quoted in README.md or docs/ (`<!-- table:NAME/line -->`) comes from the run the
benchmark table shows, never from a hand."""

from __future__ import annotations

from bench_tables import Record, median, num, ratio, renderer, table


# --- sentences for the docs: the same files, a line each ----------------------------------
def when(r: Record) -> str:
    """`benchmarks/X.py`, DATE, CPU: where a figure in the docs comes from."""
    cpu = str(r.get("machine", "?")).split(",")
    where = ", ".join(x.strip() for x in cpu[:2])
    smoke = "; **a smoke run: these figures mean nothing yet**" if r.get("smoke") else ""
    return f"`benchmarks/{r.get('script', '?')}`, {str(r.get('date', '?'))[:10]}, {where}{smoke}"


@renderer("prompt_cache/line")
def prompt_cache_line(r: Record) -> str:
    data = r["results"]
    warm = median([x["ttft_s"] for x in data["warm"]]) or 0.0
    uncached = median([x["ttft_s"] for x in data["uncached"]]) or 0.0
    tokens = median([x["prompt_tokens"] for x in data["uncached"]]) or 0
    evaluated = median([x["prompt_eval_tokens"] for x in data["warm"]]) or 0
    return (
        f"Measured ({when(r)}; a {tokens:,.0f}-token document piped in with a new question each "
        f"run): time to first token **{uncached:.2f} s without the cache, {warm:.2f} s with it "
        f"({ratio(warm, uncached, 3)}×)**: only {evaluated:.0f} tokens are evaluated. Details in "
        f"`benchmarks/README.md`."
    )


@renderer("speculative/line")
def speculative_line(r: Record) -> str:
    parts = []
    for x in r["results"]["runs"]:
        mode = "`--draft-always`" if x["always"] else "adaptive"
        task = "one paragraph" if x["variant"].startswith("paragraph") else "the whole story"
        parts.append(
            f"{task}, {mode}: **{x['speedup_median']:.2f}×** ({x['acceptance']:.0%} of "
            f"verified drafts accepted, {x['generated_tokens']}-token answer)"
        )
    return (
        f"Measured ({when(r)}; `--draft lookup` against plain decoding, greedy, on the typo "
        f"task): " + "; ".join(parts) + ". Details in `benchmarks/README.md`."
    )


@renderer("batched/line")
def batched_line(r: Record) -> str:
    parts, speedups = [], []
    for b, x in r["results"].items():
        parts.append(f"B={b} {ratio(median(x['infer']), median(x['llama']), 2)}×")
        speedups.append(f"B={b} {ratio(median(x['total']), median(x['sequential']), 2)}×")
    return (
        f"Measured ({when(r)}): generation speed against llama.cpp's `llama-batched-bench` at "
        f"the same number of parallel sequences: {', '.join(parts)}; against the same prompts "
        f"one at a time, prompts included: {', '.join(speedups)}."
    )


@renderer("concurrency/line")
def concurrency_line(r: Record) -> str:
    parts = []
    for tool, by_n in r["results"].items():
        shown = ", ".join(f"N={n} {x['vs_alone']:.2f}×" for n, x in by_n.items() if n != "1")
        parts.append(f"{tool}: {shown}")
    return (
        f"Measured ({when(r)}; the aggregate tok/s of N runs at once against one alone): "
        + "; ".join(parts)
        + "."
    )


@renderer("grammar/line")
def grammar_line(r: Record) -> str:
    res = r["results"]
    same = res.get("llama.cpp --grammar-file", {}).get("infer_ratio")
    schema = res.get("llama.cpp --json-schema", {}).get("infer_ratio")
    equal = "the same answer" if r.get("same_answer") else "**a different answer**"
    return (
        f"Measured ({when(r)}): {num(same, 2)}× `llama-completion`'s tok/s with the same "
        f"grammar ({equal}), {num(schema, 2)}× `llama-completion --json-schema`."
    )


@renderer("remote/line")
def remote_line(r: Record) -> str:
    samples = r["results"]
    local = samples.get("local", [])
    parts = []
    for name, runs in samples.items():
        if name == "local":
            continue
        pairs = list(zip(runs, local, strict=False))
        x = median([s["generate_tokens_per_s"] / b["generate_tokens_per_s"] for s, b in pairs])
        parts.append(f"{num(x, 2)}× through {name}")
    return f"Over loopback, generation ran at {', '.join(parts)} of the local rate ({when(r)})."


@renderer("perplexity/short")
def perplexity_short(r: Record) -> str:
    rows = [
        [
            x["model"],
            f"{x['size'] / 1e6:.1f} MB",
            f"{x['infer']['ppl']:.4f} ± {x['infer']['stderr']:.4f}",
        ]
        for x in r["results"]
    ]
    agree = all(x.get("same_to_4_decimals") for x in r["results"])
    verdict = "agree" if agree else "**do not all agree**"
    return (
        f"infer and `llama-perplexity` {verdict} to the 4 decimals llama-perplexity prints "
        f"({when(r)}):\n\n" + table(["model", "size", "PPL"], rows)
    )


@renderer("rpc/traffic")
def rpc_traffic(r: Record) -> str:
    rows = [
        [name, num(round(t["per_generated_token"])), num(round(t["per_prompt_token"])),
         f"{t['load'] / 1e6:,.1f} MB"]
        for name, t in r["results"]["traffic"].items()
    ]  # fmt: skip
    header = ["variant", "bytes per generated token", "bytes per prompt token", "load"]
    return f"Measured on loopback ({when(r)}):\n\n" + table(header, rows)
