"""Shared command-line plumbing for the stage modules.

`run_stage(main)` sets up logging and turns the user's mistakes (bad params,
missing inputs, unreachable MLflow) into a one-paragraph message and a
non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix (bad params, missing input, unreachable MLflow).

    `run_stage` prints it as one message, without a traceback. Config and
    tracking errors derive from it, so this module imports nothing of the
    pipeline and every stage's import closure stays what the stage uses.
    """


class StageError(UserError, RuntimeError):
    """A stage's own user-fixable problem; printed without a traceback."""


def setup_logging() -> None:
    level = os.environ.get("PIPELINE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # TensorFlow and friends are loud at INFO.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in ("alembic", "urllib3", "matplotlib", "PIL", "great_expectations", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(
    main: Callable[[list[str] | None], int | None], argv: list[str] | None = None
) -> None:
    """Run a stage's main() and exit with its code; user errors exit 2 with a message."""
    setup_logging()
    try:
        code = main(argv)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code or 0)
