"""Concurrent decoding: processes share the cores (runtime/llama/core_share.py), and two real
runs at once both finish with the right answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infer.runtime.llama.core_share import CoreShare, live_members


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INFER_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run" / "decoding"


def _share(threads: int, log: list[int]) -> CoreShare:
    return CoreShare(threads, log.append)


def test_threads_are_split_between_decoding_processes_and_given_back(runtime: Path) -> None:
    a_log: list[int] = []
    b_log: list[int] = []
    a, b = _share(4, a_log), _share(4, b_log)
    with a:
        a.step()
        assert a.current == 4 and a_log == []  # alone: all its threads, no call at all
        with b:
            a.step()
            assert (a.current, b.current) == (2, 2)
        a.step()
        assert a.current == 4  # b left: a takes the cores back at its next step
    assert b.current == 4
    assert live_members(runtime) == set()
    assert os.listdir(runtime) == ["epoch"]  # both registrations removed


def test_a_follower_takes_its_leaders_share_without_an_entry_of_its_own(runtime: Path) -> None:
    """A server's draft model decodes on its target's thread: it takes the target's share,
    and the process counts once (an entry of its own would halve both shares)."""
    target_log: list[int] = []
    draft_log: list[int] = []
    other_log: list[int] = []
    target, draft = _share(4, target_log), _share(4, draft_log)
    target.lead(draft)
    other = _share(4, other_log)  # another process decoding
    with target:
        target.step()
        assert (target.current, draft.current) == (4, 4)
        with other:
            target.step()
            assert (target.current, draft.current, other.current) == (2, 2, 2)
            draft.step()  # its own step changes nothing: it has no entry
            assert draft.current == 2 and len(live_members(runtime)) == 2
        target.step()
        assert (target.current, draft.current) == (4, 4)
    assert draft_log == [2, 4]


def test_uneven_split_never_drops_below_one_thread(runtime: Path) -> None:
    shares = [_share(2, []) for _ in range(3)]
    for s in shares:
        s.__enter__()
    for s in shares:
        s.step()
    assert sorted(s.current for s in shares) == [1, 1, 1]
    for s in shares:
        s.__exit__()


def test_the_share_of_a_killed_process_is_reclaimed(runtime: Path, tmp_path: Path) -> None:
    """A process that dies while decoding (SIGKILL: no clean-up) must not keep its share."""
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time\n"
            "from infer.runtime.llama.core_share import CoreShare\n"
            "s = CoreShare(2, lambda n: None)\n"
            "s.__enter__()\n"
            f"pathlib.Path({str(ready)!r}).write_text('x')\n"
            "time.sleep(60)\n",
        ],
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        me = _share(2, [])
        with me:
            me.step()
            assert me.current == 1  # the child is decoding
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            me._next_scan = 0.0  # the once-a-second rescan, without waiting for it
            me.step()
            assert me.current == 2
        assert live_members(runtime) == set()
        assert [n for n in os.listdir(runtime) if n != "epoch"] == []
    finally:
        child.kill()
        child.wait()


def test_another_users_folder_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give the folder away")
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, 12345, 12345)
    monkeypatch.setenv("INFER_RUNTIME_DIR", str(folder))
    s = _share(2, [])
    with s:
        s.step()
        assert s.current == 2
    assert not (folder / "decoding" / "epoch").exists()  # nothing of ours written there


def test_two_runs_at_once_both_answer(bundled_model: Path, tmp_path: Path) -> None:
    """Two `infer run`s started together (the collapse of issue 11): both finish, both right.
    Generous timeout: on 2 cores two model processes used to take ~90 s for 128 tokens."""
    env = {**os.environ, "INFER_HOME": str(tmp_path / "home")}
    env["INFER_RUNTIME_DIR"] = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "infer", "run", str(bundled_model)]
    cmd += ["Which city is the capital of France?", "--temperature", "0", "-n", "48"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert "Paris" in out
    assert [n for n in os.listdir(tmp_path / "run" / "decoding") if n != "epoch"] == []


def test_a_file_being_set_up_is_not_mistaken_for_a_dead_one(runtime: Path) -> None:
    """A process creates its file, then locks it: a scan in between must not remove it."""
    runtime.mkdir(parents=True)
    mine = runtime / f"{os.getpid()}.999"  # this process is alive, the file not locked yet
    mine.write_text("")
    dead = runtime / "999999999.0"  # no such pid: left over by a killed process
    dead.write_text("")
    assert live_members(runtime) == set()
    assert mine.exists() and not dead.exists()
    old = time.time() - 60
    os.utime(mine, (old, old))  # unlocked for a minute: a reused pid's leftover
    live_members(runtime)
    assert not mine.exists()
