"""The table of abortguard.py (the load probe's cost), registered like bench_tables.py's, in a
module of its own."""

from __future__ import annotations

from bench_tables import Record, measured, num, ratio, renderer, spread, table


@renderer("abortguard")
def abortguard(r: Record) -> str:
    rows = []
    for name, x in r["results"].items():
        rows.append(
            [
                f"{name}: `{x['file']}` ({num(x['size_mb'])} MB)",
                spread(x["probe_s"], 3),
                spread(x["load_s"], 3),
                ratio(x["probe_median_s"], x["load_median_s"], 2),
            ]
        )
    header = ["model", "probe (child process), s", "load in the server, s", "probe / load"]
    return measured(r) + "\n\n" + table(header, rows)
