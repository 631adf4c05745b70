"""pipeline.cli: one clear line for a user's mistake or a full disk, and a quiet console."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys

import pytest

from pipeline.cli import (
    TF_STARTUP_NOISE,
    disk_full_cause,
    disk_full_message,
    native_stderr_filtered,
)

from .conftest import REPO


def test_a_full_disk_is_found_anywhere_in_the_exception_chain(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("could not write the report") from exc
    except RuntimeError as wrapped:
        assert disk_full_cause(wrapped) is full
        message = disk_full_message(full)
        assert str(tmp_path / "x.json") in message and "MB free" in message
    # SQLite (MLflow's store) says it in words, without an errno
    assert disk_full_cause(RuntimeError(sqlite3.OperationalError("database or disk is full")))
    assert disk_full_cause(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_cause(ValueError("no space here")) is None


def test_native_stderr_is_filtered_line_by_line(capfd):
    with native_stderr_filtered(("noise",)):
        os.write(2, b"some noise from C++\na real warning\n")
    assert capfd.readouterr().err == "a real warning\n"


def python_stderr(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=300,
        check=True,
    )
    return done.stderr


@pytest.mark.slow
def test_tensorflow_starts_quietly_unless_verbose():
    """TF >= 2.16 prints its oneDNN banner through absl before logging is set up, whatever
    TF_CPP_MIN_LOG_LEVEL says; stages import it with that filtered out."""
    bare = python_stderr("import tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    printed = [n for n in TF_STARTUP_NOISE if n in bare]
    if not printed:
        pytest.skip("this TensorFlow build prints no startup banner here")
    quiet = "from pipeline.cli import import_tensorflow_quietly as q; q(); import tensorflow"
    assert not any(n in python_stderr(quiet) for n in TF_STARTUP_NOISE)
    verbose = python_stderr(quiet, PIPELINE_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    assert [n for n in TF_STARTUP_NOISE if n in verbose] == printed
