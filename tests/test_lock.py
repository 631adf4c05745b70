"""pipeline.lock: the retrain lock, its holder metadata and when it may be taken over."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from pipeline import lock

from .conftest import dead_pid, write_holder


def test_stale_reason():
    now = time.time()
    here = socket.gethostname()
    live = lock.LockHolder(os.getpid(), here, now - 5)
    assert lock.stale_reason(live, 60, now) is None
    assert lock.stale_reason(None, 60, now) is None
    # A live holder on this host is never stale, however old: it may just be slow.
    assert lock.stale_reason(live, 1, now) is None
    dead = lock.LockHolder(dead_pid(), here, now)
    assert "is gone" in lock.stale_reason(dead, 60, now)
    # Another host's pid cannot be checked: only age counts there.
    remote = lock.LockHolder(os.getpid(), "other-host", now - 120)
    assert lock.stale_reason(remote, 600, now) is None
    reason = lock.stale_reason(remote, 60, now)
    assert "older than retrain.lock_stale_seconds = 60" in reason
    assert "host cannot be checked" in reason


def test_lock_records_holder_and_blocks_a_second_taker(tmp_path):
    path = tmp_path / "retrain.lock"
    handle = lock.acquire_lock(path, stale_seconds=3600)
    try:
        holder = lock.read_holder(path)
        assert holder.pid == os.getpid()
        # flock conflicts between two open() calls even within one process.
        with pytest.raises(lock.LockHeldError, match=f"pid {os.getpid()}"):
            lock.acquire_lock(path, stale_seconds=3600)
    finally:
        lock.release_lock(handle)
    assert lock.read_holder(path) is None  # cleared on release
    lock.release_lock(lock.acquire_lock(path, stale_seconds=3600))


def test_lock_left_by_a_dead_process_is_taken(tmp_path):
    path = tmp_path / "retrain.lock"
    write_holder(path, dead_pid(), time.time() - 10)
    handle = lock.acquire_lock(path, stale_seconds=3600)
    try:
        assert lock.read_holder(path).pid == os.getpid()
    finally:
        lock.release_lock(handle)


def test_live_lock_older_than_stale_seconds_is_respected(tmp_path):
    path = tmp_path / "retrain.lock"
    held = lock.acquire_lock(path, stale_seconds=3600)
    try:
        write_holder(path, os.getpid(), time.time() - 120)  # live, maybe hung
        with pytest.raises(lock.LockHeldError) as caught:
            lock.acquire_lock(path, stale_seconds=60)
        assert f"if it is hung, stop it (kill {os.getpid()} on" in str(caught.value)
        assert lock.read_holder(path).started_at < time.time() - 100  # untouched
    finally:
        lock.release_lock(held)


def test_old_lock_of_another_host_is_taken_over(tmp_path):
    path = tmp_path / "retrain.lock"
    old = lock.acquire_lock(path, stale_seconds=3600)
    try:
        # The holder's pid is live here, but it names another host: age decides.
        write_holder(path, os.getpid(), time.time() - 120, host="other-host")
        with pytest.raises(lock.LockHeldError, match="other-host"):
            lock.acquire_lock(path, stale_seconds=600)
        new = lock.acquire_lock(path, stale_seconds=60)
        holder = lock.read_holder(path)
        assert holder.host == socket.gethostname()
        assert holder.started_at > time.time() - 60
        lock.release_lock(new)
    finally:
        lock.release_lock(old)


def test_read_holder_of_a_missing_empty_or_garbled_file_is_none(tmp_path):
    path = tmp_path / "retrain.lock"
    assert lock.read_holder(path) is None
    path.write_text("")
    assert lock.read_holder(path) is None
    path.write_text('{"pid": "x", "host": "h", "started_at": 1}')
    assert lock.read_holder(path) is None
    path.write_text('{"pid": 12, "host": "h", "started_at": 1}')
    assert lock.read_holder(path) == lock.LockHolder(12, "h", 1.0)


def test_held_message_names_a_starting_process_or_a_possibly_hung_one(tmp_path):
    path = tmp_path / "retrain.lock"
    now = time.time()
    assert "a process that is starting" in lock.held_message(None, path, 60, now)
    young = lock.LockHolder(4242, "here", now - 10)
    assert "stop it" not in lock.held_message(young, path, 60, now)
    old = lock.LockHolder(4242, "here", now - 600)
    assert "if it is hung, stop it (kill 4242 on here)" in lock.held_message(old, path, 60, now)


def test_retrain_lock_releases_on_an_exception(tmp_path):
    path = tmp_path / "retrain.lock"
    with pytest.raises(RuntimeError, match="boom"), lock.retrain_lock(path, stale_seconds=60):
        assert lock.read_holder(path).pid == os.getpid()
        raise RuntimeError("boom")
    assert lock.read_holder(path) is None
    lock.release_lock(lock.acquire_lock(path, stale_seconds=60))  # free again


def test_a_zombie_counts_as_gone():
    """A stage killed with its `dvc` lingers as a zombie until reaped; its pid must not
    keep its lock or staging folder alive."""
    import subprocess
    import sys

    from pipeline.processes import pid_alive

    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        state = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    assert state == "Z"
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
