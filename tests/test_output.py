"""cli/output.py: the one progress reporter in its three modes (a bar on a terminal, a plain
line every few seconds otherwise, nothing with --json), and the shared formatting."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from infer.cli import output
from infer.cli.models import _PullReport


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)


def test_a_terminal_gets_a_rich_bar_and_no_plain_lines() -> None:
    stream = FakeTTY()
    with output.Reporter("{task.description}", "bar", "count", stream=stream) as reporter:
        assert reporter.mode == "bar"
        reporter.begin("tensors", total=4)
        reporter.update(completed=3)
        assert reporter.line("a plain line", force=True) is False
        reporter.refresh()
        drawn = stream.getvalue()
    assert "tensors" in drawn and "3/4" in drawn and "\x1b[" in drawn
    assert "a plain line" not in stream.getvalue()
    assert reporter.bar is None  # closed


def test_a_note_goes_above_the_bar() -> None:
    stream = FakeTTY()
    with output.Reporter("bar", stream=stream) as reporter:
        reporter.note("before the bar")
        reporter.begin("x", total=1)
        reporter.note("with the bar")
    text = stream.getvalue()
    assert "infer: before the bar\n" in text and "with the bar" in text


def test_no_color_on_a_terminal_means_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert output.Reporter("bar", stream=FakeTTY()).mode == "lines"


def test_without_a_terminal_a_plain_line_at_most_every_few_seconds() -> None:
    stream, clock = io.StringIO(), FakeClock()
    reporter = output.Reporter("bar", stream=stream, clock=clock, every=5.0)
    assert reporter.mode == "lines"
    reporter.begin("ignored", total=10)  # no bar without a terminal
    reporter.update(completed=1)
    assert reporter.line("start", force=True)
    clock.now += 4.9
    assert not reporter.line("too soon")
    clock.now += 0.1
    assert reporter.line("five seconds on")
    clock.now += 1.0
    assert not reporter.line("too soon again")
    assert reporter.line("the end", force=True)
    reporter.close()
    assert stream.getvalue() == "infer: start\ninfer: five seconds on\ninfer: the end\n"


def test_json_means_no_progress_at_all() -> None:
    for stream in (FakeTTY(), io.StringIO()):
        clock = FakeClock()
        with output.Reporter("bar", quiet=True, stream=stream, clock=clock) as reporter:
            assert reporter.mode == "off"
            reporter.begin("x", total=2)
            reporter.update(completed=1)
            clock.now += 60
            assert not reporter.line("progress")
            assert not reporter.line("last", force=True)
        assert stream.getvalue() == ""


def test_pull_lines_start_every_few_seconds_and_end() -> None:
    stream, clock = io.StringIO(), FakeClock()
    report = _PullReport(output.Reporter("bar", stream=stream, clock=clock))
    report.start("m.gguf", 10_000_000, 0)
    clock.now += 1
    report.advance(1_000_000)  # too soon for a line
    clock.now += 4
    report.advance(1_000_000)
    clock.now += 5
    report.advance(8_000_000)
    report.finish()
    assert stream.getvalue().splitlines() == [
        "infer: downloading m.gguf (10.0 MB)",
        "infer: m.gguf: 20% of 10.0 MB, 400.0 kB/s",
        "infer: m.gguf: 100% of 10.0 MB, 1.0 MB/s",
        "infer: m.gguf: 10.0 MB in 10.0 s (1.0 MB/s)",
    ]


def test_status_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with output.status("working…") as update:
        update("still working")
    assert capsys.readouterr().err == ""


def test_sizes_counts_times_and_tables() -> None:
    assert output.human_size(999) == "999 B"
    assert output.human_size(1_500_000) == "1.5 MB"
    assert output.human_size(3 * 10**12) == "3000.0 GB"
    assert output.human_count(135_000_000) == "135.0M (135,000,000)"
    assert output.human_count(12) == "12"
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert output.relative_time((now - timedelta(seconds=5)).isoformat(), now) == "just now"
    assert output.relative_time((now - timedelta(hours=1)).isoformat(), now) == "1 hour ago"
    assert output.relative_time((now - timedelta(days=3)).isoformat(), now) == "3 days ago"
    assert output.relative_time("not a time", now) == "not a time"
    assert output.table(["A", "BB"], [["xyz", ""], ["1", "2"]]) == "A    BB\nxyz\n1    2\n"
    assert output.key_values([("k", None), ("long", 1)]) == "k     -\nlong  1\n"
