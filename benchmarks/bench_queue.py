"""Benchmark: DVC's experiment queue with one worker vs two (`dvc queue start -j N`).

In a temp git repo copied from this project (the embedded digits, the variants
`baseline` and `dropout`, otherwise params.yaml as shipped), `dvc repro` runs
once; then two experiments are queued that each change the dropout rate (so
each reruns train@dropout, evaluate and report) and run with `-j 1`, then two
more with new rates and `-j 2`. Prints each wall time and their ratio.

Both workers share the machine's cores: TensorFlow already spreads one
training over every core, so on 2 cores two workers mostly take turns; what
they can overlap is the single-threaded part of each experiment (DVC's
workspace copy and checkout, process start-up, evaluate's figures). The
ratio says how much that is here; on a machine with more cores than one
training uses, or with per-worker GPUs, it grows.

Inputs: the project's tracked files; Outputs: stdout only (the temp repo is
deleted). The last line is one JSON object.

Run: .venv/bin/python benchmarks/bench_queue.py [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(root: Path, *args: str) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)  # the repo's own sqlite store
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def make_repo(root: Path, epochs: int) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        source = REPO / rel
        if source.is_file() and not rel.startswith(("reports/", "models/", "data/prepared")):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / rel)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"] = {"baseline": {}, "dropout": {"model": {"dropout": 0.5}}}
    params["train"]["epochs"] = epochs
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/.pipeline_state/\n")
    for args in (["git", "init", "-q"], ["git", "config", "user.email", "b@example.com"],
                 ["git", "config", "user.name", "bench"]):  # fmt: skip
        run(root, *args)
    if not (root / ".dvc").exists():
        run(root, str(BIN / "dvc"), "init", "-q")
    run(root, str(BIN / "dvc"), "repro")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "baseline results")


def queue_and_time(root: Path, rates: list[float], jobs: int) -> float:
    dvc = str(BIN / "dvc")
    for rate in rates:
        run(root, dvc, "exp", "run", "--queue", "-S", f"variants.dropout.model.dropout={rate}")
    began = time.perf_counter()
    run(root, dvc, "queue", "start", "-j", str(jobs))
    while True:
        status = run(root, dvc, "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(1)
    wall = time.perf_counter() - began
    if status.count("Success") < len(rates):
        raise SystemExit(f"an experiment failed:\n{status}")
    run(root, dvc, "queue", "remove", "--success")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="train.epochs (an upper bound)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        make_repo(root, args.epochs)
        one = queue_and_time(root, [0.3, 0.6], jobs=1)
        print(f"-j 1: 2 experiments in {one:.1f} s")
        two = queue_and_time(root, [0.35, 0.65], jobs=2)
        print(f"-j 2: 2 experiments in {two:.1f} s")
        ratio = one / two
        print(f"speed-up of -j 2 over -j 1: {ratio:.2f}x on {os.cpu_count()} cores")
    print(json.dumps({"j1_s": round(one, 1), "j2_s": round(two, 1), "speedup": round(ratio, 2),
                      "cpus": os.cpu_count()}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
