"""The tables of the scripts added after render.py (connections, soak, fuzz, vision,
llamacpp_suite, serve_draft, workloads, abortguard): renderers registered like
bench_tables.py's, in a module of their own so that neither grows past a screenful of renderers
per reader."""

from __future__ import annotations

from typing import Any

from bench_lines import when
from bench_tables import Record, measured, num, ratio, renderer, spread, table


def _normal(x: dict[str, Any] | None) -> str:
    """A phase's normal request: median seconds (and how many of them failed)."""
    if not x:
        return "-"
    failed = f", **{x['failed']} failed**" if x.get("failed") else ""
    return f"{num(x.get('median_s'), 3)}{failed}"


def _server(x: dict[str, Any]) -> list[str]:
    alive = "" if x.get("alive", True) else " **(dead)**"
    return [num(x.get("rss_mb")) + alive, num(x.get("open_files")), num(x.get("threads"))]


# --- connections.py ------------------------------------------------------------------------
@renderer("connections")
def connections(r: Record) -> str:
    res = r["results"]
    rows = []
    base = res["baseline"]
    rows.append(["baseline", "nothing else", _normal(base["normal_request"]), "-", *_server(base)])
    if "idle" in res:
        x = res["idle"]
        rows.append(["idle", f"{num(x['connections'])} idle keep-alive connections",
                     _normal(x["normal_request"]), "-", *_server(x)])  # fmt: skip
    if "slowloris" in res:
        x = res["slowloris"]
        cut = x.get("cut_after_s") or {}
        rows.append(["slowloris", f"{num(x['connections'])} connections sending headers a byte "
                     "every 0.5 s", _normal(x["normal_request"]),
                     f"cut after {num(cut.get('min'))}–{num(cut.get('max'))} s",
                     *_server(x)])  # fmt: skip
    if "big_header" in res:
        x = res["big_header"]
        rows.append(["big_header", "a 1 MB header", _normal(x["normal_request"]),
                     f"status {x['status']}", *_server(x)])  # fmt: skip
    if "non_reader" in res:
        x = res["non_reader"]
        rows.append(["non_reader", f"{x['streams']} streamed answers never read",
                     _normal(x["normal_request"]), "(server during them)",
                     *_server(x["during"])])  # fmt: skip
    if "burst" in res:
        x = res["burst"]
        statuses = ", ".join(f"{k}: {num(v)}" for k, v in sorted(x["statuses"].items()))
        during = x["normal_request_during"]
        rows.append(
            [
                "burst",
                f"{num(x['requests'])} chats from up to {num(x['concurrency'])} sockets "
                f"({num(x['seconds'])} s)",
                f"{_normal(x['normal_request_after'])} after; during: status "
                f"{during['status']} in {num(during['s'], 3)} s",
                f"{statuses}; {num(x['503_with_retry_after'])} 503s with Retry-After",
                *_server(x["after"]),
            ]
        )
        rows.append(["(burst peak)", "", "", "", *_server(x["during"])])
    header = ["phase", "abuse", "normal request, median s", "what happened", "RSS MB",
              "open files", "threads"]  # fmt: skip
    end = res.get("end")
    tail = ""
    if end:
        state = "alive" if end.get("alive") else "**dead**"
        tail = (
            f"\n\nAt the end the server was {state}: RSS {num(end.get('rss_mb'))} MB, "
            f"{num(end.get('open_files'))} open files, {num(end.get('threads'))} threads."
        )
    return measured(r) + "\n\n" + table(header, rows) + tail


@renderer("connections/line")
def connections_line(r: Record) -> str:
    res = r["results"]
    burst = res["burst"]
    under = [res[p]["normal_request"].get("median_s") for p in ABUSES if p in res]
    times = [t for t in under if t is not None]
    ok, refused = burst["statuses"].get("200", 0), burst["statuses"].get("503", 0)
    return (
        f"Measured ({when(r)}): under {num(res['idle']['connections'])} idle connections, "
        f"{num(res['slowloris']['connections'])} slowloris clients, a 1 MB header or streams "
        f"never read, a normal request took {num(min(times, default=None), 2)}–"
        f"{num(max(times, default=None), 2)} s (alone: "
        f"{num(res['baseline']['normal_request']['median_s'], 2)} s); of "
        f"{num(burst['requests'])} chats at once {num(ok)} were answered and {num(refused)} "
        f"refused with 503 and `Retry-After`, and the server's open files went back to "
        f"{num(burst['after']['open_files'])} after them."
    )


ABUSES = ("idle", "slowloris", "big_header", "non_reader")


# --- soak.py -------------------------------------------------------------------------------
@renderer("soak")
def soak(r: Record) -> str:
    res = r["results"]
    t0, mvc = res["temperature_0"], res["metrics_vs_client"]
    resources = res.get("resources", {})
    growth = res.get("growth_pct") or {}
    slots = res.get("after_clients") or {}
    log = res.get("server_log")
    log = log if isinstance(log, dict) else {}  # earlier runs kept only its path
    problems = res.get("problems") or {}
    rows = [
        ["clients, duration", f"{res['clients']} clients, {num(res['duration_s'])} s"],
        ["requests", num(res["requests"])],
        ["5xx", num(res["5xx"]) if not res["5xx"] else f"**{num(res['5xx'])}**"],
        ["temperature-0 answers equal to the first", f"{t0['same']} same, {t0['differ']} differ"],
        ["answers of the wrong shape, invalid requests not a 4xx, client errors",
         ", ".join(f"{k}: **{num(v)}**" for k, v in sorted(problems.items())) or "none"],
        ["time to first token p50 / p99, s",
         f"{num(res['ttft_s']['p50'], 3)} / {num(res['ttft_s']['p99'], 3)}"],
        ["total time p50 / p99, s",
         f"{num(res['total_s']['p50'], 3)} / {num(res['total_s']['p99'], 3)}"],
        *[[f"server {when_}: RSS MB / open files / threads", " / ".join(_server(x))]
          for when_, x in resources.items()],
        *([["growth to the end, %: RSS / open files / threads",
            " / ".join(num(growth.get(k)) for k in ("rss_mb", "open_files", "threads"))]]
          if growth else []),
        *([["busy slots / queue depth once the clients stopped",
            f"{num(slots.get('busy_slots'))} / {num(slots.get('queue_depth'))}"]]
          if slots else []),
        ["/metrics counts equal the client's", num(mvc["match"])],
        *([["server log: 5xx or bug lines", num(log.get("5xx_or_bug_lines"))]] if log else []),
        ["server alive at the end", num(res["server_alive"])],
    ]  # fmt: skip
    kinds = sorted({s for by in res["by_kind"].values() for s in by})
    by_kind = [[k, *(num(by.get(s)) if s in by else "" for s in kinds)]
               for k, by in res["by_kind"].items()]  # fmt: skip
    return (
        measured(r)
        + "\n\n"
        + table(["", "result"], rows)
        + "\n\nRequests by kind and status:\n\n"
        + table(["kind", *kinds], by_kind)
    )


# --- fuzz.py -------------------------------------------------------------------------------
@renderer("fuzz")
def fuzz(r: Record) -> str:
    res = r["results"]
    rows = [
        [f"`{name}`", num(x["examples"]), num(x["seconds"]), x["finding"] or "none"]
        for name, x in res.items()
        if name != "api"
    ]
    out = measured(r) + "\n\n" + table(["target", "examples", "seconds", "finding"], rows)
    api = res.get("api")
    if api:
        findings = api["findings"]
        shown = "none" if not findings else f"**{len(findings)}**"
        out += "\n\n" + table(
            ["schemathesis over /openapi.json", "result"],
            [
                ["examples per operation", num(api["examples_per_operation"])],
                ["seconds", num(api["seconds"])],
                ["requests logged", num(api["requests_logged"])],
                ["500s logged", num(api["500_logged"])],
                ["503s logged (the queue, on purpose)", num(api["503_logged"])],
                ["server alive after", num(api["server_alive_after"])],
                ["findings", shown],
            ],
        )
    return out


# --- vision.py -----------------------------------------------------------------------------
@renderer("vision")
def vision(r: Record) -> str:
    res = r["results"]
    answer, encode, cached = res["answer_s"], res["encode_s"], res["cached"]
    rows = [
        [side, num(answer.get(side), 3), num(encode.get(side), 3)]
        for side in ("infer", "llama-mtmd-cli")
    ]
    header = ["side", "answer, s (start to exit, median)", "image encode, s (median)"]
    verdict = "met" if res["answer_ratio"] >= 0.95 else "**missed**"
    lines = (
        f"llama-mtmd-cli / infer answer time: **{res['answer_ratio']:.3f}** (target ≥ 0.95 "
        f"{verdict}). A second question about the same image through the prompt cache: "
        f"`media_encoded` {cached['second_media_encoded']}, time to first token "
        f"{num(cached['second_ttft_s'], 3)} s against the first question's "
        f"{num(cached['first_ttft_s'], 3)} s."
    )
    return measured(r) + "\n\n" + table(header, rows) + "\n\n" + lines


# --- llamacpp_suite.py ---------------------------------------------------------------------
@renderer("llamacpp_suite")
def llamacpp_suite(r: Record) -> str:
    res = r["results"]
    rows = [[f"`{f}`", num(e["llama_server"]), num(e["infer"])] for f, e in res["files"].items()]
    ls, inf = res["llama_server_passed"], res["infer_passed"]
    rows.append(["**all**", f"**{num(ls)}**", f"**{num(inf)}** ({ratio(100 * inf, ls, 0)}%)"])
    out = measured(r) + "\n\n" + table(["test file", "llama-server passes",
                                        "of those, infer passes"], rows)  # fmt: skip
    rest = [
        [f"`{x['test']}`", x["infer"], x["category"], x["reason"] or "-"]
        for e in res["files"].values()
        for x in e["rest"]
    ]
    if rest:
        out += "\n\nWhat passes on llama-server and not on infer, with the reason:\n\n"
        out += table(["test", "on infer", "category", "reason"], rest)
    return out


# --- serve_draft.py ------------------------------------------------------------------------
@renderer("serve_draft")
def serve_draft(r: Record) -> str:
    res = r["results"]
    rows = []
    for name, samples in res["aggregate_tps"].items():
        server, mode = name.rsplit(" ", 1)
        same = res["same_answers_as_plain"].get(name)
        speedup = res["speedups"].get(name)
        rows.append(
            [
                server,
                mode,
                spread(samples),
                "-" if speedup is None else f"**{speedup:.2f}×**",
                "-" if same is None else ("yes" if same else "**no**"),
            ]
        )
    header = ["server", "decoding", "aggregate tok/s (per round)", "over its plain decoding",
              "same answers as plain"]  # fmt: skip
    return measured(r) + "\n\n" + table(header, rows)


# --- workloads.py (branch fork) --------------------------------------------------------------
WORKLOADS = {
    "chat": "(a) chat: users' conversations growing turn by turn",
    "document": "(b) questions about one shared document",
    "restart": "(c) (b) after a server restart",
}


@renderer("workloads")
@renderer("workloads_slots")  # --llama-server-args="--cache-ram 0": its cache in its slots
def workloads(r: Record) -> str:
    rows = []
    for workload, sides in r["results"].items():
        i, s = sides["infer"], sides["llama-server"]

        def ttft(x: dict[str, Any]) -> str:
            return f"{x['ttft']:.3f} ({x['ttft_stat']}, n={x['ttft_n']})"

        rows.append(
            [
                WORKLOADS.get(workload, workload),
                spread(i["total_rounds"], 2),
                spread(s["total_rounds"], 2),
                ratio(i["total_s"], s["total_s"]),
                f"{i['ttft_p50']:.3f} / {s['ttft_p50']:.3f}",
                f"{ttft(i)} / {ttft(s)}",
                f"{i['prompt_tokens_mean']:,.0f} / {s['prompt_tokens_mean']:,.0f}",
                *(
                    f"{i[k]:,.0f} / {s[k]:,.0f}" if k in i and k in s else "-"
                    for k in ("prompt_tokens_read", "decodes")
                ),
            ]
        )
    header = ["workload", "infer total s", "llama-server total s", "infer / llama-server",
              "TTFT median infer / llama-server, s", "TTFT tail infer / llama-server, s",
              "prompt tokens (mean) infer / llama-server",
              "prompt tokens read (median of rounds) infer / llama-server",
              "decodes infer / llama-server"]  # fmt: skip
    return measured(r) + "\n\n" + table(header, rows)


# --- abortguard.py -------------------------------------------------------------------------
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
