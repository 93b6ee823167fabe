"""Sharing the machine's cores between infer processes that decode at the same time.

Why: llama.cpp's worker threads spin-wait at the barriers between graph nodes. Two processes
with one thread per core each on the same cores keep descheduling each other's threads in the
middle of a graph, and every barrier then waits out a whole time slice: on 2 cores, two
concurrent `infer run`s fell from ~120 to 1.4 tok/s each (0.05x the aggregate of one alone).
So each decoding process registers here, and between decode steps uses its share of the threads
it would use alone (threads // decoding processes, never below 1). One thread per process has no
barriers to wait at, and the kernel shares the cores fairly between processes, so the aggregate
stays near one process alone and nobody starves (benchmarks/concurrency.py measures it).

Mechanism: one file per decoding process in the user's runtime directory, held with an
exclusive flock (a crashed process's lock goes with it, so its file is recognised as stale and
removed). A shared 8-byte "epoch" that every join and leave changes is mapped into memory, so the
per-token check is one memory read; the directory is scanned again only when the epoch moved,
and once a second in case a process died without saying so. Best effort: when the directory
cannot be used, the process keeps its threads, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..files import alive
from ..paths import runtime_dir

EPOCH = "epoch"
RESCAN_S = 1.0  # a dead process's share is reclaimed within this many seconds
STALE_S = 10.0  # an unlocked file of a live pid (a reused pid, say) counts as stale after this
_ids = itertools.count()


class CoreShare:
    """Call `step()` before every decode while inside `with share:`; it calls `set_threads(n)`
    when this process's share changes. Entries nest (a chat turn inside a batch, say)."""

    def __init__(self, threads: int, set_threads: Callable[[int], None]) -> None:
        self.threads = threads  # what this process uses alone
        self.current = threads
        self._set_threads = set_threads
        self._dir = runtime_dir() / "decoding"
        self._name = f"{os.getpid()}.{next(_ids)}"
        self._fd = -1
        self._depth = 0
        self._epoch: memoryview | None = None
        self._seen = -1
        self._next_scan = 0.0
        self._followers: list[CoreShare | FixedCores] = []

    def lead(self, follower: CoreShare | FixedCores) -> None:
        """`follower` (another context decoded on this one's thread, between its decodes: a
        draft model's in the server) takes this one's share from now on, instead of an entry
        of its own: a second entry would count the process twice and halve both shares."""
        self._followers.append(follower)
        follower.take(self.current)

    def take(self, threads: int) -> None:
        """Use `threads` (a leader's share)."""
        self._apply(threads)

    def __enter__(self) -> CoreShare:
        self._depth += 1
        if self._depth == 1:
            self._join()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._leave()

    def step(self) -> None:
        """Cheap unless someone joined or left: then take this process's new share."""
        epoch = self._epoch
        if epoch is None or (epoch[0] == self._seen and time.monotonic() < self._next_scan):
            return
        self._rebalance()

    def _join(self) -> None:
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._dir.parent.stat().st_uid != os.getuid():
                raise ValueError("another user's folder")  # it could starve us of threads
            if self._epoch is None:  # mapped once, kept across joins (every chat turn joins)
                self._epoch = _map_epoch(self._dir / EPOCH)
            fd = os.open(self._dir / self._name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except (OSError, ValueError):
            self._epoch = None  # no shared directory: keep this process's threads
            return
        self._fd = fd
        self._bump()
        self._rebalance()

    def _leave(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._dir / self._name)
            os.close(self._fd)
            self._fd = -1
            self._bump()
        if self.current != self.threads:
            self._apply(self.threads)  # alone again, or leaving: back to the full count

    def _bump(self) -> None:
        if self._epoch is not None:
            # Any new value will do: readers only compare with the one they last saw.
            self._epoch[0] = (self._epoch[0] + 1 + os.getpid()) & 0x7FFF_FFFF_FFFF_FFFF

    def _rebalance(self) -> None:
        assert self._epoch is not None
        self._seen = self._epoch[0]
        self._next_scan = time.monotonic() + RESCAN_S
        live = live_members(self._dir)
        if self._name not in live:
            return
        n, rank = len(live), sorted(live).index(self._name)
        share = self.threads // n + (1 if rank < self.threads % n else 0)
        self._apply(max(1, share))

    def _apply(self, threads: int) -> None:
        if threads != self.current:
            self._set_threads(threads)
            self.current = threads
        for follower in self._followers:
            follower.take(threads)


class FixedCores:
    """A context's threads as given (--threads, one core, or sharing turned off)."""

    def __enter__(self) -> FixedCores:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def step(self) -> None:
        pass

    def lead(self, follower: CoreShare | FixedCores) -> None:
        pass

    def take(self, threads: int) -> None:
        pass


def live_members(folder: Path) -> set[str]:
    """Names of the registered processes still decoding; files of dead processes are removed."""
    try:
        names = [n for n in os.listdir(folder) if n != EPOCH]
    except OSError:
        return set()
    live = set()
    for name in names:
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            live.add(name)  # its owner holds the lock: it is decoding now
        except OSError:
            pass
        else:
            if _stale(name, os.fstat(fd).st_mtime):
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
        finally:
            os.close(fd)
    return live


def _stale(name: str, mtime: float) -> bool:
    """An unlocked file is left over when its process is gone; a live process's file may just
    not be locked yet (it is created, then locked), so only an old one of those is removed."""
    pid = name.partition(".")[0]
    if pid.isdigit() and not alive(int(pid)):
        return True
    return time.time() - mtime > STALE_S


def _map_epoch(path: Path) -> memoryview:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_size < 8:
            os.ftruncate(fd, 8)
        mapped = mmap.mmap(fd, 8)
    finally:
        os.close(fd)
    return memoryview(mapped).cast("q")
