"""Progress of a stage's long loops: a bar on a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns, which reads well on a TTY and
piles up as noise in a pipe, `dvc repro > log`, or retrain's cron log. So the
bar is drawn only when stderr is a terminal; otherwise each step is one
`logging` line (INFO), which the stage's log shows in order.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger(__name__)


def on_terminal() -> bool:
    """Whether stderr is a terminal (where a redrawn bar belongs)."""
    return sys.stderr.isatty()


def steps(
    items: Sequence[T],
    desc: str,
    unit: str,
    label: Callable[[T], str] = str,
) -> Iterator[T]:
    """Yield `items` in order, showing which one is in progress.

    Args:
        desc: what the loop does, e.g. "evaluate: scoring"; the bar's title.
        unit: what one item is, e.g. "variant".
        label: an item's name in the bar's postfix and the log line.
    """
    total = len(items)
    if not on_terminal():
        for number, item in enumerate(items, 1):
            log.info("%s %s (%d of %d)", desc, label(item), number, total)
            yield item
        return
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False) as bar:
        for item in items:
            bar.set_postfix_str(label(item), refresh=True)
            yield item
            bar.update(1)
