"""llama.cpp RPC on loopback: a model's layers on 0, 1 and 2 `infer rpc-server` processes, measured
by `infer bench --rpc` and by llama.cpp's own `llama-bench --rpc` against the same servers, and
the bytes that cross the network per token.

    python benchmarks/rpc.py [--model PATH] [-p 128] [-n 64] [--rounds 3] [--threads 2] [--json F]

Every server lends its CPU (`--threads` each) on a loopback port; all layers go to the servers
(infer's default with RPC devices, llama-bench `-ngl 99`), so with one server the whole model
runs there and every token makes a round trip; with two, each holds half and a token makes two.
Each round runs every variant once in a rotated order, each on a quiet machine (servers idle
between runs), and a run is taken again when other processes used more than 5% of the CPUs
meanwhile (the servers' CPU time counts as the run's own): infer's and llama-bench's prompt and
generation tok/s, and infer's time to first token. Bytes per token: the loopback interface's
byte counter (/proc/net/dev, `lo`) around `infer bench` runs that differ only in the tokens
generated (or read), so the load's traffic (the weights, sent once) cancels out; the load's own
figure is what is left at zero tokens (the token traffic of the smallest run taken off).
Loopback counts every byte once; the machine must be otherwise idle for that count to be right.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_arg, compile_infer, machine, measure, wait_quiet, write_results
from vs_llamacpp import build_llamacpp, bundled_model, infer_exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lo_bytes() -> int:
    """Bytes sent over the loopback interface since boot."""
    with open("/proc/net/dev", encoding="ascii") as f:
        for line in f:
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[8])  # transmit bytes
    raise SystemExit("no loopback interface in /proc/net/dev")


def start_server(threads: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [infer_exe(), "rpc-server", "--port", str(port), "--threads", str(threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("infer rpc-server did not start")


def infer_bench(model: Path, rpc: list[str], p: int, n: int, reps: int, threads: int,
                env: dict[str, str], extra: tuple[str, ...] = ()) -> dict:  # fmt: skip
    args = [infer_exe(), "bench", str(model), "-p", str(p), "-n", str(n), "-r", str(reps),
            "-t", str(threads), "--json", *extra]  # fmt: skip
    if rpc:
        args += ["--rpc", ",".join(rpc)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"infer bench failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout)[0]


def llama_bench(binary: Path, model: Path, rpc: list[str], p: int, n: int, reps: int,
                threads: int) -> dict[str, float]:  # fmt: skip
    args = [str(binary), "-m", str(model), "-p", str(p), "-n", str(n), "-r", str(reps),
            "-t", str(threads), "-o", "json"]  # fmt: skip
    if rpc:
        args += ["--rpc", ",".join(rpc), "-ngl", "99"]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"llama-bench failed: {out.stderr[-1500:]}")
    rows = json.loads(out.stdout)
    speeds = {"pp": 0.0, "tg": 0.0}
    for row in rows:
        speeds["pp" if row["n_prompt"] else "tg"] = float(row["avg_ts"])
    return speeds


def traffic(model: Path, rpc: list[str], threads: int, env: dict[str, str],
            extra: tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    """Loopback bytes per generated token and per prompt token, and for the load."""

    def sent(p: int, n: int) -> int:
        wait_quiet()
        before = lo_bytes()
        infer_bench(model, rpc, p, n, 1, threads, env, extra)
        return lo_bytes() - before

    small, more_gen, more_prompt = sent(16, 16), sent(16, 80), sent(144, 16)
    # infer bench runs its repetition plus one warm-up: each token is generated twice.
    per_gen = (more_gen - small) / (64 * 2)
    per_prompt = (more_prompt - small) / (128 * 2)
    return {
        "per_generated_token": per_gen,
        "per_prompt_token": per_prompt,
        # the smallest run less its 2 x (16 + 16) tokens' traffic: the load alone
        "load": small - 2 * 16 * (per_gen + per_prompt),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("-p", type=int, default=128)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="repetitions inside each bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    add_json_arg(parser, "rpc")
    opts = parser.parse_args()
    model = (opts.model or bundled_model()).resolve()
    compile_infer()
    bench_bin = build_llamacpp(targets=("llama-bench", "ggml-rpc-server"), rpc=True) / "llama-bench"
    env = {**os.environ, "INFER_HOME": tempfile.mkdtemp(prefix="infer-bench-rpc-"),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env.pop("INFER_REMOTE", None)
    servers = [start_server(opts.threads, env) for _ in range(2)]
    endpoints = [e for _, e in servers]
    pids = [proc.pid for proc, _ in servers]
    try:
        variants = {"local": [], "1 server": endpoints[:1], "2 servers": endpoints}
        samples: dict[str, list[dict]] = {v: [] for v in variants}
        names = list(variants)
        for r in range(opts.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                rpc = variants[name]
                ours = measure(
                    lambda rpc=rpc: infer_bench(model, rpc, opts.p, opts.n, opts.reps,
                                                opts.threads, env),
                    helpers=pids,  # the servers' CPU time is part of the run
                ).value  # fmt: skip
                theirs = measure(
                    lambda rpc=rpc: llama_bench(bench_bin, model, rpc, opts.p, opts.n, opts.reps,
                                                opts.threads),
                    helpers=pids,
                ).value  # fmt: skip
                sample = {
                    "pp": ours["prompt_tokens_per_s"]["median"],
                    "tg": ours["generate_tokens_per_s"]["median"],
                    "ttft_ms": ours["ttft_s"]["median"] * 1000,
                    "load_s": ours["load_s"]["median"],
                    "llama_pp": theirs["pp"],
                    "llama_tg": theirs["tg"],
                    "split": ours.get("split", ""),
                    "layers_total": ours["layers_total"],
                }
                samples[name].append(sample)
                print(f"round {r + 1} {name:9} infer pp {sample['pp']:.1f} tg {sample['tg']:.1f}"
                      f" ttft {sample['ttft_ms']:.0f} ms · llama-bench pp {theirs['pp']:.1f}"
                      f" tg {theirs['tg']:.1f}", file=sys.stderr)  # fmt: skip
        bytes_by = {name: traffic(model, rpc, opts.threads, env)
                    for name, rpc in variants.items() if rpc}  # fmt: skip
        # The same with the first layer kept here (--gpu-layers offloads the last N, the
        # output layer among them): its hidden state then crosses too.
        layers = samples["local"][0]["layers_total"]
        bytes_by["1 server, layer 0 here"] = traffic(
            model, endpoints[:1], opts.threads, env, ("--gpu-layers", str(layers - 1))
        )
        report(samples, bytes_by, opts, model)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(30)


def report(samples: dict[str, list[dict]], traffic_by: dict[str, dict[str, float]],
           opts: argparse.Namespace, model: Path) -> None:  # fmt: skip
    med = statistics.median
    settings = {"model": model.name, "p": opts.p, "n": opts.n, "reps": opts.reps,
                "rounds": opts.rounds, "threads": opts.threads}  # fmt: skip
    write_results(opts.json, "rpc.py", settings, {"speed": samples, "traffic": traffic_by})
    print(f"machine: {machine()}")
    print(f"model: {model.name}; {opts.rounds} rounds, -p {opts.p} -n {opts.n} -r {opts.reps}, "
          f"{opts.threads} threads per process, servers on loopback\n")  # fmt: skip
    print("| variant | infer pp tok/s | infer tg tok/s | first token ms | load s "
          "| llama-bench pp | llama-bench tg | infer/llama-bench pp | infer/llama-bench tg "
          "| tg vs local |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    local = samples["local"]
    for name, runs in samples.items():
        pp_ratio = med(s["pp"] / s["llama_pp"] for s in runs)
        tg_ratio = med(s["tg"] / s["llama_tg"] for s in runs)
        vs_local = med(s["tg"] / b["tg"] for s, b in zip(runs, local, strict=True))
        print(f"| {name} | {med(s['pp'] for s in runs):.1f} | {med(s['tg'] for s in runs):.1f} "
              f"| {med(s['ttft_ms'] for s in runs):.0f} | {med(s['load_s'] for s in runs):.2f} "
              f"| {med(s['llama_pp'] for s in runs):.1f} | {med(s['llama_tg'] for s in runs):.1f} "
              f"| {pp_ratio:.3f} | {tg_ratio:.3f} | {vs_local:.2f}x |")  # fmt: skip
    print()
    for name, runs in samples.items():
        if runs[0]["split"]:
            print(f"{name}: layers on {runs[0]['split']}")
    print("\n| variant | bytes per generated token | bytes per prompt token | load bytes |")
    print("|---|---|---|---|")
    for name, t in traffic_by.items():
        print(f"| {name} | {t['per_generated_token']:,.0f} | {t['per_prompt_token']:,.0f} "
              f"| {t['load']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
