"""`infer run --remote` against `infer serve` and llama.cpp's `llama-server` on loopback, versus
a local `infer run`: time to first token and generation tok/s, as each run's `--json` reports
them.

    python benchmarks/remote.py [--model PATH] [--tokens 128] [--rounds 5]

Both servers are started once with the same model and one slot (llama-server: its default
threads, as infer's; `-c 2048`), warmed with one request, and stay idle while another variant
runs. Each round runs the three variants in a rotated order (local, serve, llama-server; then
serve, llama-server, local; ...), each run on a quiet machine (benchmarks/common.py). Every run
asks for `--tokens` tokens at temperature 0 from the same prompt. The local run's time to first
token counts from its request (the model already loaded: `load_s` is apart), the remote's from
the request being sent to the first piece arriving, so the difference is what the network path
and the server add. Ratios are against local, per round, then the median.
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

import httpx
from common import add_json_arg, compile_infer, machine, measure, write_results
from vs_llamacpp import build_llamacpp, bundled_model, infer_exe

PROMPT = "Write a long story about a dragon who learns to fly."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen, path: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited {proc.returncode}"
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} did not come up")


def one_run(args: list[str], env: dict[str, str]) -> dict:
    result = subprocess.run(
        [infer_exe(), "run", *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        sys.exit(f"infer run {' '.join(args)} failed: {result.stderr[-1000:]}")
    return json.loads(result.stdout)["stats"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    add_json_arg(parser, "remote")
    opts = parser.parse_args()
    model = (opts.model or bundled_model()).resolve()
    compile_infer()
    home = tempfile.mkdtemp(prefix="infer-bench-remote-")
    env = {**os.environ, "INFER_HOME": home, "HF_HUB_OFFLINE": "1"}
    env.pop("INFER_REMOTE", None)
    serve_port, llama_port = free_port(), free_port()
    serve = subprocess.Popen(
        [infer_exe(), "serve", str(model), "--port", str(serve_port), "--parallel", "1",
         "--ctx-size", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    binary = Path(build_llamacpp(targets=("llama-server",))) / "llama-server"
    llama = subprocess.Popen(
        [str(binary), "-m", str(model), "--port", str(llama_port), "-c", "2048", "-np", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        serve_url, llama_url = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{llama_port}"
        wait_up(serve_url, serve, "/v1/models")
        wait_up(llama_url, llama, "/health")
        common = [str(model), "--temperature", "0", "-n", str(opts.tokens), "--json"]
        variants = {
            "local": common,
            "infer serve": [*common, "--remote", serve_url],
            "llama-server": [*common, "--remote", llama_url],
        }
        tale = iter(range(1, 1_000_000))
        for name in ("infer serve", "llama-server"):
            one_run([*variants[name], PROMPT], env)  # warm: the first request's lazy set-up
        samples: dict[str, list[dict]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(opts.rounds):
            order = names[r % 3 :] + names[: r % 3]
            for name in order:
                prompt = f"Tale {next(tale)}. {PROMPT}"
                sample = measure(
                    lambda name=name, p=prompt: one_run([*variants[name], p], env),
                    helpers=[serve.pid, llama.pid],  # their work is the run's, not interference
                )
                samples[name].append(sample.value)
                s = sample.value
                print(
                    f"round {r + 1} {name:13} prompt {s['prompt_tokens']} tok · first token "
                    f"{s['ttft_s'] * 1000:6.0f} ms · "
                    f"{s['generated_tokens']} tok at {s['generate_tokens_per_s']:.1f} tok/s",
                    file=sys.stderr,
                )
        report(samples, opts)
        settings = {"model": model.name, "tokens": opts.tokens, "rounds": opts.rounds}
        write_results(opts.json, "remote.py", settings, samples)
    finally:
        for proc in (serve, llama):
            proc.terminate()
            proc.wait(30)


def report(samples: dict[str, list[dict]], opts: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"{opts.rounds} rounds, {opts.tokens} tokens at temperature 0, one slot per server\n")
    print("| variant | first token, ms (median) | + vs local | tok/s (median) | x local |")
    print("|---|---|---|---|---|")
    local = samples["local"]
    for name, runs in samples.items():
        ttft = statistics.median(s["ttft_s"] * 1000 for s in runs)
        tps = statistics.median(s["generate_tokens_per_s"] for s in runs)
        added = statistics.median(
            (s["ttft_s"] - base["ttft_s"]) * 1000 for s, base in zip(runs, local, strict=True)
        )
        ratio = statistics.median(
            s["generate_tokens_per_s"] / base["generate_tokens_per_s"]
            for s, base in zip(runs, local, strict=True)
        )
        print(f"| {name} | {ttft:.0f} | {added:+.0f} | {tps:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
