"""The retrain lock: one scheduled retrain at a time, never two overlapping; and
the same lock per training stage, one writer per variant (or learning-curve point).

`retrain_lock(path, stale_seconds)` holds an fcntl lock on `path` (it vanishes
with its process) and records pid, host and start time in the file. A second
taker gets `LockHeldError`. A lock recorded on this host is taken over only
when its process is gone: a live run is never overlapped, however long it
takes (a hung one must be stopped; cron does not). Only a lock recorded by
another host (a shared filesystem), whose process cannot be checked, is taken
over by age: once older than ``retrain.lock_stale_seconds``.

Inputs: the lock file's metadata, the process table. Outputs: the lock file
(cleared on release, so a non-empty unlocked file means a crashed run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.cli import UserError
from pipeline.processes import pid_alive

log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """Another retrain holds the lock and may not be taken over."""


class LockFileError(UserError, RuntimeError):
    """The lock file cannot be opened (a directory in its place, no permission)."""


def _open_lock_file(path: Path) -> IO[str]:
    try:
        return open(path, "a+")  # noqa: SIM115 - held until release_lock
    except IsADirectoryError:
        raise LockFileError(
            f"{path} is a directory, not a lock file; remove it (rmdir {path}) and rerun"
        ) from None
    except OSError as exc:
        raise LockFileError(
            f"{path}: cannot open the lock file ({exc.strerror or exc}); make its folder "
            "writable, or remove a file in the way"
        ) from None


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the process that took it."""

    pid: int
    host: str
    started_at: float

    def describe(self) -> str:
        started = dt.datetime.fromtimestamp(self.started_at, dt.UTC).isoformat(timespec="seconds")
        return f"pid {self.pid} on {self.host}, started {started}"


def read_holder(path: Path) -> LockHolder | None:
    """The lock file's metadata, or None when absent, empty or unreadable."""
    try:
        raw = json.loads(path.read_text() or "null")
        return LockHolder(int(raw["pid"]), str(raw["host"]), float(raw["started_at"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def stale_reason(
    holder: LockHolder | None, stale_seconds: int, now: float, host: str | None = None
) -> str | None:
    """Why a *held* lock may be taken over, or None when it must be respected.

    On this host (`host`, default this machine's name) only a dead holder is
    taken over, however old its lock: cron does not stop a hung run, so taking
    over a live one by age would let two retrains run at once. Age decides only
    when the holder cannot be checked: it recorded another host (a lock file on
    a shared filesystem). A held lock without metadata belongs to a run that
    has just locked and not yet written its pid: respect it.
    """
    if holder is None:
        return None
    if holder.host == (host or socket.gethostname()):
        return None if pid_alive(holder.pid) else f"its process ({holder.describe()}) is gone"
    age = now - holder.started_at
    if age > stale_seconds:
        return (
            f"it is {age:.0f} s old ({holder.describe()}), older than "
            f"retrain.lock_stale_seconds = {stale_seconds}, and its host cannot be checked"
        )
    return None


def held_message(
    holder: LockHolder | None, path: Path, stale_seconds: int, now: float, what: str = "retrain"
) -> str:
    """Why the lock is respected; names a possibly hung holder and how to end it."""
    if holder is None:
        return f"another {what} is running (a process that is starting); lock file {path}"
    message = f"another {what} is running ({holder.describe()}); lock file {path}"
    age = now - holder.started_at
    if age > stale_seconds:
        message += (
            f"; it has run {age:.0f} s, longer than retrain.lock_stale_seconds = "
            f"{stale_seconds}: if it is hung, stop it (kill {holder.pid} on {holder.host})"
        )
    return message


def acquire_lock(
    path: Path, stale_seconds: int, attempts: int = 3, what: str = "retrain"
) -> IO[str]:
    """Lock `path` for this process and record pid, host and start time in it.

    `what` names the holder's job in messages ("retrain", "training of baseline").

    Raises:
        LockHeldError: the holder lives on this host, or on another host and locked
            less than `stale_seconds` ago (see `stale_reason`).
    """
    for _ in range(attempts):
        handle = _open_lock_file(path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            _take_over_if_stale(path, stale_seconds, what)
            continue
        if not _is_current_file(handle, path):  # taken over between open and flock
            handle.close()
            continue
        _record_holder(handle, path)
        return handle
    raise LockHeldError(
        f"could not take {path} after {attempts} attempts; another {what} is racing"
    )


def _take_over_if_stale(path: Path, stale_seconds: int, what: str = "retrain") -> None:
    """Unlink a held but stale lock file; LockHeldError when it must be respected."""
    holder = read_holder(path)
    now = time.time()
    reason = stale_reason(holder, stale_seconds, now)
    if reason is None:
        raise LockHeldError(held_message(holder, path, stale_seconds, now, what)) from None
    # The old holder keeps its lock on the unlinked file; we lock a new one.
    log.warning("taking over %s: %s", path, reason)
    path.unlink(missing_ok=True)


def _record_holder(handle: IO[str], path: Path) -> None:
    """Write this process's pid, host and start time into the freshly locked file."""
    leftover = read_holder(path)
    if leftover is not None:
        log.warning("previous holder (%s) ended without releasing %s", leftover.describe(), path)
    handle.seek(0)
    handle.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}, handle)
    handle.flush()
    os.fsync(handle.fileno())


def _is_current_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def release_lock(handle: IO[str]) -> None:
    """Clear the metadata (a non-empty unlocked file then means a crashed run) and unlock."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def retrain_lock(path: Path, stale_seconds: int, what: str = "retrain") -> Iterator[None]:
    """Hold the lock on `path` for the body; LockHeldError when another holder has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = acquire_lock(path, stale_seconds, what=what)
    try:
        yield
    finally:
        release_lock(handle)
