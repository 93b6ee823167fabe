"""benchmarks/fuzz.py's API run keeps its server answering however many requests it logs: its
log once went to a pipe read only at the end, whose 64 KiB filled after ~500 access-log lines;
the server's next log write then blocked its event loop and every later request timed out
(read as schemathesis findings). A real `infer serve` under the harness, with the schemathesis
pass replaced by 1,000 cheap requests — twice the lines that used to block it."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fuzz

REQUESTS = 1000


def test_the_api_runs_server_answers_past_a_pipes_worth_of_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def many_requests(url: str, examples: int) -> list[str]:
        failures = []
        with httpx.Client(timeout=60) as client:
            for _ in range(REQUESTS):
                try:
                    client.get(url + "/v1/models")
                except httpx.TimeoutException as e:
                    failures.append(f"timed out: {e}")
                    break
        return failures

    monkeypatch.setattr(fuzz, "fuzz_api", many_requests)
    result = fuzz.run_api(examples=1)
    assert result["findings"] == []
    assert result["server_alive_after"]
    assert result["requests_logged"] >= REQUESTS
