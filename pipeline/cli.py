"""Shared command-line plumbing for the stage modules.

`run_stage(main)` sets up logging and turns the user's mistakes (bad params,
missing inputs, unreachable MLflow) and a full disk into a one-paragraph
message and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.abc
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

EXIT_USER_ERROR = 2
VERBOSE_ENV = "PIPELINE_VERBOSE"

# What TensorFlow's C++ side prints on every import, whatever TF_CPP_MIN_LOG_LEVEL
# says (absl writes to fd 2 before its logging is initialized, TF >= 2.16).
TF_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


class UserError(Exception):
    """A problem the user can fix (bad params, missing input, unreachable MLflow).

    `run_stage` prints it as one message, without a traceback. Config and
    tracking errors derive from it, so this module imports nothing of the
    pipeline and every stage's import closure stays what the stage uses.
    """


class StageError(UserError, RuntimeError):
    """A stage's own user-fixable problem; printed without a traceback."""


def verbose() -> bool:
    """PIPELINE_VERBOSE=1: show TensorFlow's native and Python warnings too."""
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level() -> str:
    """PIPELINE_LOG_LEVEL, upper-cased; INFO when unset. A value logging does not
    know is a UserError naming the variable and the allowed values."""
    level = os.environ.get("PIPELINE_LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise UserError(
            f"PIPELINE_LOG_LEVEL={os.environ['PIPELINE_LOG_LEVEL']!r} is not a log level; "
            f"use one of {', '.join(LOG_LEVELS)} (PIPELINE_VERBOSE=1 shows TensorFlow's "
            "own warnings too)"
        )
    return level


def setup_logging() -> None:
    level = log_level()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # TensorFlow and friends are loud at INFO.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in (
        "alembic",
        "urllib3",
        "matplotlib",
        "PIL",
        "great_expectations",
        "git",
        "mlflow.system_metrics",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose():
        # tf.function retracing notes and absl's Python-side warnings, per stage
        for noisy in ("tensorflow", "absl"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    # MLflow's SQL store logs every database error with its traceback, then raises it as
    # an MlflowException; that exception is reported once (run_stage or the traceback).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


# How a full disk reads when a library wraps the OSError: SQLite (MLflow's
# store), and Arrow or HDF5 messages that carry strerror but no errno.
_DISK_FULL_TEXT = ("database or disk is full", "No space left on device")


def in_chain(exc: BaseException, test: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in `exc`'s chain (itself, then its cause or context, ...)
    for which `test` holds, if any; a cyclic chain is walked once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if test(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _says(texts: tuple[str, ...]) -> Callable[[BaseException], bool]:
    return lambda e: any(text in str(e) for text in texts)


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that says the disk is full, if any."""
    return in_chain(
        exc, lambda e: getattr(e, "errno", None) == errno.ENOSPC or _says(_DISK_FULL_TEXT)(e)
    )


# How SQLite reports a damaged database file (MLflow's sqlite store).
DAMAGED_DB_TEXT = ("file is not a database", "database disk image is malformed")


# How the MLflow client reports a tracking server that stopped answering.
_SERVER_GONE_TEXT = (
    "API request to",
    "Max retries exceeded",
    "Connection refused",
    "RemoteDisconnected",
    "Connection aborted",
)


def server_gone_message(cause: BaseException) -> str:
    """One paragraph for a tracking server that stopped answering mid-stage."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (
        f"the MLflow tracking server {uri} stopped answering during this stage "
        f"({first[:200]}). Restart the server and rerun: the stage's previous outputs are "
        "untouched, and an interrupted training resumes from its last epoch"
    )


_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _denied_cause(exc: BaseException) -> OSError | None:
    """The OSError in `exc`'s chain that refused to write a named file, if any."""
    found = in_chain(
        exc, lambda e: isinstance(e, OSError) and e.errno in _DENIED and bool(e.filename)
    )
    return found if isinstance(found, OSError) else None


def denied_message(cause: OSError) -> str:
    """One line: which file or folder could not be written, and what to do."""
    target = str(cause.filename)
    why = "the file system is read-only" if cause.errno == errno.EROFS else "permission denied"
    folder = target if os.path.isdir(target) else os.path.dirname(target) or "."
    return (
        f"cannot write {target}: {why}. Make {folder} writable by this user "
        f"(e.g. chmod u+w {folder}) and rerun; this stage's previous outputs are untouched"
    )


def damaged_store_message(cause: BaseException) -> str:
    """One paragraph for a damaged MLflow sqlite store."""
    detail = next((t for t in DAMAGED_DB_TEXT if t in str(cause)), "damaged")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or "sqlite:///mlflow.db"
    return (
        f"the MLflow store {uri} is damaged (SQLite: {detail}). Move it aside "
        "(mv mlflow.db mlflow.db.damaged) and rerun to start a new store, or restore it "
        "from a backup; the stages' files (data/, models/, reports/) are untouched"
    )


def disk_full_message(cause: BaseException, where: str = ".") -> str:
    """One paragraph: what could not be written, the free space, what to do."""
    # A copy that filled the disk (shutil's sendfile path, as MLflow's artifact store uses)
    # names its source in `filename` and the file it was writing in `filename2`.
    written = getattr(cause, "filename2", None) or getattr(cause, "filename", None)
    target = str(written or os.path.abspath(where))
    folder = target if os.path.isdir(target) else os.path.dirname(target) or "."
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return (
        f"the disk is full: could not write {target} ({free}). Free some space (or put "
        "the project on a larger disk) and rerun; this stage's previous outputs are "
        "untouched, since every output is swapped in only once it is complete"
    )


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple[str, ...]) -> Iterator[None]:
    """File descriptor 2 captured for the block; afterwards its lines are written back
    to stderr, except those that contain one of `noise`. Catches what C++ libraries
    print, which Python's sys.stderr never sees."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(True) if not any(n in line for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class _QuietTensorflowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the usual way, and runs its import with the startup banner
    filtered out; removes itself, so only that first import is touched."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with native_stderr_filtered(TF_STARTUP_NOISE):
                run(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def import_tensorflow_quietly() -> None:
    """Make the first import of TensorFlow, whenever it comes, skip its startup banner
    (shown with PIPELINE_VERBOSE=1). Lazy: a stage that fails before it needs TensorFlow
    (bad params, MLflow unreachable) does not wait for it."""
    if verbose() or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorflowImport())


def run_stage(
    main: Callable[[list[str] | None], int | None],
    argv: list[str] | None = None,
    tensorflow: bool = False,
) -> None:
    """Run a stage's main() and exit with its code; user errors and a full disk exit 2
    with a message instead of a traceback.

    Args:
        tensorflow: the stage uses TensorFlow: its import, when it comes, is quiet.
    """
    try:
        setup_logging()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if tensorflow:
        import_tensorflow_quietly()
    try:
        code = main(argv)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is not None:
            print(f"error: {disk_full_message(cause)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        denied = _denied_cause(exc)
        if denied is not None:
            print(f"error: {denied_message(denied)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        gone = in_chain(exc, _says(_SERVER_GONE_TEXT))
        if gone is not None and os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
            print(f"error: {server_gone_message(gone)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        damaged = in_chain(exc, _says(DAMAGED_DB_TEXT))
        if damaged is not None:
            print(f"error: {damaged_store_message(damaged)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    sys.exit(code or 0)
