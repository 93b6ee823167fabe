"""/metrics in Prometheus' text exposition format (version 0.0.4), written by hand: a few
counters, gauges and two histograms do not need a client library.

infer's own series (`infer_*`), then llama-server's (`llamacpp:*`, server-task.cpp's
to_metrics: the same names, types and help lines), so that dashboards and alerts built for
llama-server read infer unchanged. Each figure has one home: the HTTP side's counts here
(requests, tokens generated, generation time), the decode threads' in the backend's
`DecodeCounts` (decodes, prompt tokens read and found cached, prompt time, drafts). Summed over
the models served: llama-server serves one.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field

from .backend import DecodeCounts, LoadReport

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
    started: int = field(default_factory=lambda: int(time.time()))  # Process-Start-Time-Unix
    # At the last scrape: (prompt tokens, prompt seconds, generation steps, generation seconds),
    # llama-server's throughput gauges being averages over the time between two scrapes.
    _scraped: tuple[int, float, int, float] = (0, 0.0, 0, 0.0)

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
            *self._llamacpp(load),
        ]
        return "\n".join(lines) + "\n"

    def _llamacpp(self, load: LoadReport) -> list[str]:
        """llama-server's series. Generation is counted as llama-server counts it: the first
        token of an answer comes with its prompt's last decode, so its rate is over the steps
        after it (what per_token observes), and its time is first token to last."""
        d: DecodeCounts = load.decode
        steps, gen_s = self.per_token.count, self.per_token.total
        last = self._scraped
        self._scraped = (d.prompt_tokens, d.prompt_s, steps, gen_s)
        counters = [
            ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached "
             "tokens", d.prompt_tokens),
            ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache",
             d.cached_tokens),
            ("prompt_seconds_total", "Total time spent processing prompts", d.prompt_s),
            ("tokens_predicted_total", "Number of generation tokens processed",
             self.generated_tokens),
            ("tokens_predicted_seconds_total", "Total time spent generating tokens", gen_s),
            ("n_decode_total", "Total number of llama_decode() calls, excluding speculative "
             "decoding and multimodal decoding", d.decodes),
            ("n_tokens_max", "Largest observed sequence length (prompt + generation)",
             d.max_tokens),
            ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated",
             d.drafted),
            ("spec_decode_num_accepted_tokens_total", "Speculative: Total draft tokens "
             "accepted by the target model", d.accepted),
            ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding "
             "verification steps", d.verified),
        ]  # fmt: skip
        gauges = [
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s",
             _rate(d.prompt_tokens - last[0], d.prompt_s - last[1])),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
             _rate(steps - last[2], gen_s - last[3])),
            ("requests_processing", "Number of requests processing", load.busy_slots),
            ("requests_deferred", "Number of requests deferred", load.queue_depth),
            ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             d.busy_slots / max(d.decodes, 1)),
        ]  # fmt: skip
        out = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, help_text, value in items:
                out += [
                    f"# HELP llamacpp:{name} {help_text}",
                    f"# TYPE llamacpp:{name} {kind}",
                    f"llamacpp:{name} {_number(value)}",
                ]
        return out


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _number(value: float) -> str:
    """Integers as integers (a counter keeps every digit), other values to 9 digits."""
    return str(value) if isinstance(value, int) else format(value, ".9g")
