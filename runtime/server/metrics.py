"""/metrics in Prometheus' text exposition format (version 0.0.4), written by hand: a few
counters, gauges and two histograms do not need a client library."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from .backend import LoadReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        """`times` observations of `value` (a request's mean per-token latency stands for each
        of its tokens, so the histogram weighs requests by their length)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]
        return out


@dataclass
class Metrics:
    """The HTTP side's own counts; queue depth and busy slots come from the backend on read."""

    requests: Counter[int] = field(default_factory=Counter)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    per_token: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))

    def record(
        self,
        status: int,
        prompt_tokens: int = 0,
        generated_tokens: int = 0,
        ttft_s: float | None = None,
        generation_s: float | None = None,
    ) -> None:
        """One finished request. `generation_s`: first token to last, for the per-token mean."""
        self.requests[status] += 1
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if generation_s is not None and generated_tokens > 1:
            steps = generated_tokens - 1
            self.per_token.observe(generation_s / steps, steps)

    def render(self, load: LoadReport) -> str:
        lines = [
            "# HELP infer_requests_total HTTP requests answered, by status code.",
            "# TYPE infer_requests_total counter",
            *(f'infer_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.requests.items())),
            "# HELP infer_prompt_tokens_total Prompt tokens evaluated.",
            "# TYPE infer_prompt_tokens_total counter",
            f"infer_prompt_tokens_total {self.prompt_tokens}",
            "# HELP infer_generated_tokens_total Tokens generated.",
            "# TYPE infer_generated_tokens_total counter",
            f"infer_generated_tokens_total {self.generated_tokens}",
            "# HELP infer_queue_depth Requests waiting for a slot.",
            "# TYPE infer_queue_depth gauge",
            f"infer_queue_depth {load.queue_depth}",
            "# HELP infer_busy_slots Sequences decoding now.",
            "# TYPE infer_busy_slots gauge",
            f"infer_busy_slots {load.busy_slots}",
            "# HELP infer_slots Sequences the loaded models can decode at once.",
            "# TYPE infer_slots gauge",
            f"infer_slots {load.slots}",
            "# HELP infer_time_to_first_token_seconds From admission to the first token.",
            "# TYPE infer_time_to_first_token_seconds histogram",
            *self.ttft.lines("infer_time_to_first_token_seconds"),
            "# HELP infer_time_per_output_token_seconds Time between generated tokens.",
            "# TYPE infer_time_per_output_token_seconds histogram",
            *self.per_token.lines("infer_time_per_output_token_seconds"),
        ]
        return "\n".join(lines) + "\n"
