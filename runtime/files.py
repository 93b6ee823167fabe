"""infer's own files. Temp files are named by the process that writes them ("<pid>-…"), so that
one left behind by a process that died without cleaning up (SIGKILL, a power cut) can be told
from a live writer's and deleted on the next run; every writer also deletes its own temp file
on any exception, SIGTERM and SIGHUP included (the CLI turns those into an exception,
cli/signals.py). Files in the caches are opened only if they are regular files: a FIFO put in
place of one would block the open or the read forever."""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading if it is a regular file (not a FIFO, device or symlink); raise
    OSError otherwise, as for a file that vanished."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
