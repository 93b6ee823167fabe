"""Temp files named by the process that writes them ("<pid>-…"), so that one left behind by a
process that died without cleaning up (SIGKILL, a power cut) can be told from a live writer's
and deleted on the next run. Every writer also deletes its own temp file on any exception,
SIGTERM and SIGHUP included (the CLI turns those into an exception, cli/signals.py)."""

from __future__ import annotations

import os
import sys
import time


def alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def pause_point(name: str) -> None:
    """A test hook: with INFER_TEST_PAUSE_IN=name, say so on stderr and wait, so that a test
    can send a signal while a file is half-written (tests/test_signals.py)."""
    if os.environ.get("INFER_TEST_PAUSE_IN") == name:
        sys.stderr.write(f"infer: test: paused in {name}\n")
        sys.stderr.flush()
        time.sleep(60)
