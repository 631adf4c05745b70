"""Atomic file writes: every stage output goes through here.

A temp file in the same directory, then `os.replace`, so an interrupted stage
never leaves a half-written file that the next stage would trust.

Large arrays are written through memory maps whose disk blocks are reserved
up front (`open_reserved_npy`): a memory-mapped file on a full disk would
otherwise kill the process with SIGBUS (exit 135, no message) at the first
page that cannot be stored. Reserving turns that into ENOSPC, an error the
stage reports as `DiskFullError`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from pipeline.cli import UserError

MB = 2**20


class DiskFullError(UserError, OSError):
    """Not enough space for an output: names the folder, what is needed and what is free."""

    def __init__(self, folder: Path, needed: int, free: int) -> None:
        self.message = (
            f"not enough disk space in {folder}: about {needed / MB:.1f} MB needed, "
            f"{free / MB:.1f} MB free. Free some space (or put the project on a larger "
            "disk) and rerun; the previous outputs are untouched"
        )
        super().__init__(errno.ENOSPC, self.message)

    def __str__(self) -> str:
        return self.message


def require_free_space(folder: Path, needed: int) -> None:
    """DiskFullError unless `folder`'s file system has `needed` bytes free (a cheap estimate)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(folder, needed, free)


def open_reserved_npy(path: Path, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.memmap:
    """A new .npy file mapped for writing, its disk blocks reserved before any page is written.

    Raises DiskFullError (and removes the file) when the blocks cannot be reserved.
    """
    array = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:  # a file system without fallocate: map it as it is
            return array
        del array
        Path(path).unlink(missing_ok=True)
        raise DiskFullError(Path(path).parent, size, shutil.disk_usage(path.parent).free) from None
    finally:
        os.close(fd)
    return array


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    """The one place metrics and reports JSON are written.

    Strict JSON: NaN and infinity (an interval of unknown size, a share of
    nothing) become null, since jq, browsers and other tools reject them.
    """
    text = json.dumps(
        _finite(payload), indent=2, sort_keys=False, default=_jsonable, allow_nan=False
    )
    write_text_atomic(path, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return _finite(value.tolist())
    return value


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays, Paths: everything else is a bug worth raising on.
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, TypeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
