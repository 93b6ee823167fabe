"""The API doors of one `infer serve` against its OpenAI chat door: streamed generation speed.

    python benchmarks/doors.py [--model PATH] [--rounds 8] [--tokens 128] [--json FILE]

One server, one model; the same greedy conversation streamed through `/v1/chat/completions`,
Ollama's `/api/chat`, Anthropic's `/v1/messages` and OpenAI's `/v1/responses`, one request at a
time, the doors' order rotated each round. Each sample is the generation rate a client sees:
(tokens - 1) / (last text frame - first text frame), tokens as the door's own usage reports
them (the same answer, so the same count, on every door). Reported: each door's median and its
ratio to the chat door's (target >= 0.95, issue "The APIs the ecosystem speaks").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from common import add_json_arg, machine
from serve import Server, free_port

PROMPT = "Write a long story about a dragon who learns to bake bread."
TARGET = 0.95


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            yield json.loads(line[6:])


def _openai(event: dict[str, Any]) -> tuple[bool, int | None]:
    usage = event.get("usage")
    text = any(c.get("delta", {}).get("content") for c in event.get("choices", []))
    return text, usage["completion_tokens"] if usage else None


def _ollama(event: dict[str, Any]) -> tuple[bool, int | None]:
    return bool(event.get("message", {}).get("content")), event.get("eval_count")


def _anthropic(event: dict[str, Any]) -> tuple[bool, int | None]:
    if event.get("type") == "content_block_delta":
        return True, None
    if event.get("type") == "message_delta":
        return False, event["usage"]["output_tokens"]
    return False, None


def _responses(event: dict[str, Any]) -> tuple[bool, int | None]:
    if event.get("type") == "response.output_text.delta":
        return True, None
    if event.get("type") in ("response.completed", "response.incomplete"):
        return False, event["response"]["usage"]["output_tokens"]
    return False, None


Reader = Callable[[dict[str, Any]], tuple[bool, int | None]]


def doors(model: str, tokens: int) -> dict[str, tuple[str, dict[str, Any], Reader, bool]]:
    """name -> (path, body, how to read an event, NDJSON rather than SSE)."""
    messages = [{"role": "user", "content": PROMPT}]
    return {
        "openai_chat": (
            "/v1/chat/completions",
            {
                "model": model,
                "messages": messages,
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            _openai,
            False,
        ),
        "ollama_chat": (
            "/api/chat",
            {
                "model": model,
                "messages": messages,
                "stream": True,
                "options": {"num_predict": tokens, "temperature": 0},
            },
            _ollama,
            True,
        ),
        "anthropic_messages": (
            "/v1/messages",
            {
                "model": model,
                "messages": messages,
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
            },
            _anthropic,
            False,
        ),
        "openai_responses": (
            "/v1/responses",
            {
                "model": model,
                "input": PROMPT,
                "max_output_tokens": tokens,
                "temperature": 0,
                "stream": True,
            },
            _responses,
            False,
        ),
    }


def sample(
    client: httpx.Client, path: str, body: dict[str, Any], read: Reader, nd: bool
) -> dict[str, float]:
    first = last = 0.0
    count = None
    with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        lines = response.iter_lines()
        events = (json.loads(line) for line in lines if line.strip()) if nd else _sse(lines)
        for event in events:
            text, used = read(event)
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
            if used is not None:
                count = used
    assert count and last > first, (path, count)
    return {"tokens": count, "tps": (count - 1) / (last - first)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: smollm2, bundled)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    add_json_arg(ap, "doors")
    args = ap.parse_args()
    model = str(args.model) if args.model else "smollm2"
    port = free_port()
    name = Path(model).stem if args.model else model
    plan = doors(name, args.tokens)
    samples: dict[str, list[dict[str, float]]] = {door: [] for door in plan}
    command = ["infer", "serve", model, "--port", str(port), "--parallel", "1"]
    with (
        Server("infer", command, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client,
    ):
        for path, body, read, nd in plan.values():  # warm-up, unmeasured
            sample(client, path, body, read, nd)
        order = list(plan)
        for rnd in range(args.rounds):
            for door in order[rnd % len(order) :] + order[: rnd % len(order)]:
                path, body, read, nd = plan[door]
                samples[door].append(sample(client, path, body, read, nd))
    base = statistics.median(s["tps"] for s in samples["openai_chat"])
    results = {}
    print(f"{machine()}; model {model}; {args.rounds} rounds; {args.tokens} tokens")
    print("| door | tok/s (median) | tokens | ratio to /v1/chat/completions |")
    print("|---|---|---|---|")
    for door, rows in samples.items():
        tps = statistics.median(r["tps"] for r in rows)
        results[door] = {"samples": rows, "median_tps": tps, "ratio": tps / base}
        print(f"| {door} | {tps:.1f} | {rows[0]['tokens']} | {tps / base:.3f} |")
    if args.json:
        record = {
            "script": "doors.py",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "settings": {"model": model, "rounds": args.rounds, "tokens": args.tokens},
            "target": f">= {TARGET}",
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    ok = all(r["ratio"] >= TARGET for r in results.values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
