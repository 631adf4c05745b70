"""Benchmark: the prepare stage on Fashion-MNIST (70,000 images), 1 vs 2 workers.

Inputs: /usr/share/datasets/fashion-mnist (the Debian dataset-fashion-mnist
package) and the repo's params.yaml (image size, colour mode, fractions).
Outputs: timings on stdout; the prepared data goes to a temp dir and is deleted.
Target: under 60 s on 2 cores.

Run: .venv/bin/python benchmarks/bench_prepare.py [--workers 1 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.prepare import prepare_dataset  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_once(workers: int) -> tuple[float, float, int]:
    """Prepare Fashion-MNIST with `workers` processes; returns (wall s, CPU s, images).

    CPU seconds (this process plus its finished worker processes) show the cost
    per image even when other jobs share the machine and slow the wall clock.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source=str(FASHION), format="auto", workers=workers)
    config = parse_config(params)
    with tempfile.TemporaryDirectory(prefix="bench_prepare.") as tmp:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        summary = prepare_dataset(config, Paths(Path(tmp)), progress=False)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    return seconds, cpu, int(summary["records"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not FASHION.is_dir():
        print(f"skipped: {FASHION} is absent (install the dataset-fashion-mnist package)")
        return 0
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    timings = {}
    for workers in args.workers:
        seconds, cpu, images = run_once(workers)
        timings[workers] = seconds
        rate = images / seconds
        print(
            f"workers={workers}: {images} images in {seconds:.1f} s = {rate:,.0f} images/s "
            f"({cpu:.1f} CPU s, {1e6 * cpu / images:.0f} CPU us/image)"
        )
    if 1 in timings and len(timings) > 1:
        for workers, seconds in timings.items():
            if workers != 1:
                print(f"speed-up workers={workers} vs 1: {timings[1] / seconds:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
