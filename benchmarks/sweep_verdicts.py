"""Record the verdict sweep (tests/sweep.py) and write its table to docs/calibration.md.

The plain CNN and its dropout variant on Fashion-MNIST at 50 to 1,600 training
images per class, 3 seeds each, plus construction cases at 200 per class
(shuffled labels, 30 % flipped labels, a tiny model, a 2-epoch budget, early
stopping off for 40 epochs). Each cell is one network trained once for real
and recorded under tests/data/sweep/<cell>/ (a few KB); the suite replays every
recorded cell.

    python benchmarks/sweep_verdicts.py --minutes 20   # record missing cells, cheapest first
    python benchmarks/sweep_verdicts.py --list         # cells, recorded or not
    python benchmarks/sweep_verdicts.py --table        # only rewrite docs/calibration.md's table
    python benchmarks/sweep_verdicts.py --fresh        # re-record every cell from scratch

Resumable: a recorded cell is skipped (unless --fresh), and no new cell starts
after --minutes, so the sweep fills over several sessions. Needs Debian's
dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["DVC_NO_ANALYTICS"] = "1"

CALIBRATION = REPO / "docs" / "calibration.md"
BEGIN, END = "<!-- sweep table: begin -->", "<!-- sweep table: end -->"


def table() -> str:
    """One row per recorded cell: truth (from outcomes), the verdict replayed today with its
    grade, and the overfitting scores behind it (1 = clear; mild from the params' share)."""
    from tests import sweep

    cells = sweep.grid()
    outcomes = sweep.recorded_outcomes(cells)
    replayed = sweep.replay_all(cells)
    rows = [
        "| cell | seed | train | test | truth | why | verdict | saved model | score: gap, run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cell in cells:
        if cell.key not in outcomes:
            continue
        own, truth, v = outcomes[cell.key], sweep.truth(cell, outcomes), replayed[cell.key]
        rows.append(
            f"| {cell.name} | {cell.seed} | {own.train:.3f} | {own.test:.3f} | {truth.label} "
            f"| {truth.reason} | {v['label']} | {v['model_verdict']} "
            f"| {v['gap']['score']:.2f}, {v['training']['score']:.2f} |"
        )
    return "\n".join(rows) + f"\n\n{len(outcomes)} of {len(cells)} cells recorded.\n"


def write_table() -> None:
    from pipeline.io import write_text_atomic

    text = CALIBRATION.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_text_atomic(CALIBRATION, f"{head}{BEGIN}\n{table()}{END}{tail}")
    print(f"wrote {CALIBRATION.relative_to(REPO)}")


def record(minutes: float, fresh: bool, only: str | None) -> None:
    from tests import known_truth as kt
    from tests import sweep

    if not kt.fashion_available():
        sys.exit("error: needs Debian's dataset-fashion-mnist (apt-get install it)")
    started = time.perf_counter()
    for cell in sweep.grid():
        if only and only not in cell.key:
            continue
        if (cell.path / "case.json").is_file() and not fresh:
            continue
        if time.perf_counter() - started > minutes * 60:
            print(f"stopped after {minutes:g} minutes; run again to resume", flush=True)
            return
        t0 = time.perf_counter()
        evaluation = kt.record_case(cell.case(), cell.seed)
        verdict = evaluation["variants"][cell.variant]["verdict"]
        print(f"{cell.key}: {time.perf_counter() - t0:.0f} s, {verdict}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from tests import sweep

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="start no cell after this")
    parser.add_argument("--fresh", action="store_true", help="re-record recorded cells too")
    parser.add_argument("--only", help="cells whose name contains this, e.g. n200 or shuffled")
    parser.add_argument("--list", action="store_true", help="list the cells and stop")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args(argv)
    if args.list:
        for cell in sweep.grid():
            done = "recorded" if (cell.path / "case.json").is_file() else "missing"
            print(f"{cell.key}: {done}")
        return 0
    if not args.table:
        record(args.minutes, args.fresh, args.only)
    write_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
