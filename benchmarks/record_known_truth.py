"""Re-record the known-truth training runs the test suite replays (tests/data/known_truth/).

Each case (tests/known_truth.py: CASES) trains for real through the train stage
on real images, is scored by evaluate's own code, and leaves what the diagnosis
reads as small text files. The suite then checks every verdict on them in
milliseconds instead of retraining.

    python benchmarks/record_known_truth.py                 # every case and seed
    python benchmarks/record_known_truth.py little_data     # one case, its seeds
    python benchmarks/record_known_truth.py fashion_300_per_class --seed 1

The Fashion-MNIST cases need Debian's dataset-fashion-mnist package. Each run
prints its wall time and verdicts; a recording is written to a temp folder and
swapped in whole, so an interrupted run leaves the previous one in place.
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


def record_one(case_name: str, seed: int) -> None:
    from tests import known_truth as kt

    case = kt.CASES[case_name]
    started = time.perf_counter()
    evaluation = kt.record_case(case, seed)
    verdicts = ", ".join(f"{n}={v['verdict']}" for n, v in evaluation["variants"].items())
    print(
        f"{case.recording(seed).relative_to(REPO)}: {time.perf_counter() - started:.0f} s; "
        f"{verdicts}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    from tests import known_truth as kt

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help=f"any of {', '.join(kt.CASES)} (default: all)")
    parser.add_argument("--seed", type=int, action="append", help="default: the case's seeds")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(kt.CASES))
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; known: {', '.join(kt.CASES)}")
    names = args.cases or list(kt.CASES)
    for name in names:
        case = kt.CASES[name]
        if case.needs_fashion and not kt.fashion_available():
            print(f"{name}: skipped, dataset-fashion-mnist is not installed", file=sys.stderr)
            continue
        for seed in args.seed or case.seeds:
            record_one(name, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
