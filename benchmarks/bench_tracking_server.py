"""Benchmark: how many metrics per second the team tracking server takes in.

Starts scripts/tracking-server.sh (mlflow server on PostgreSQL, loopback, in a
temp folder), then N client processes at once, each one training-run-like
MLflow run that logs epochs of 7 per-epoch metrics (one log_metrics call per
epoch, as pipeline.callbacks does) for a fixed number of epochs. Prints, for
each N, metrics per second summed over the clients and the wall time; the
baseline in the same run is one client on a local sqlite file (the default
single-machine store), and each figure is given as a ratio to it.

A training epoch on Fashion-MNIST takes seconds and logs 7 metrics, so a server
that takes in hundreds of metrics per second serves tens of concurrently
training variants; the figures say how far that holds on this machine.

Inputs: PostgreSQL (Debian's postgresql), the project's .venv.
Outputs: stdout only; the server, its database and the temp folder are removed.
The last line is one JSON object.

Run: .venv/bin/python benchmarks/bench_tracking_server.py [--clients 1 2 4] [--epochs 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "tracking-server.sh"
METRICS = (
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "gap_accuracy",
    "gap_loss",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(uri: str, experiment: str, epochs: int, start: mp.Event, out: mp.Queue) -> None:
    """One training-like run: `epochs` calls of log_metrics with 7 curves each."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        start.wait()
        began = time.perf_counter()
        for epoch in range(1, epochs + 1):
            mlflow.log_metrics(
                {f"curves/{k}": 1.0 / (epoch + i) for i, k in enumerate(METRICS)}, step=epoch
            )
        seconds = time.perf_counter() - began
    out.put((run.info.run_id, seconds))


def measure(uri: str, n: int, epochs: int) -> dict[str, float]:
    """N clients at once; metrics/s over all of them, and a check that none was lost."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    name = f"ingest-{n}-{time.time_ns()}"
    procs = [ctx.Process(target=client, args=(uri, name, epochs, start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(3 + n)  # every client connected and its run created before the clock starts
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - began
    for p in procs:
        p.join()
    import mlflow

    client_ = mlflow.MlflowClient(uri)
    for run_id, _ in results:  # nothing lost under concurrency
        history = client_.get_metric_history(run_id, "curves/val_loss")
        assert len(history) == epochs, f"run {run_id}: {len(history)} of {epochs} epochs"
    total = n * epochs * len(METRICS)
    return {"clients": n, "metrics": total, "wall_s": round(wall, 2),
            "metrics_per_s": round(total / wall, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=200, help="log_metrics calls per client")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        sqlite_uri = f"sqlite:///{Path(tmp) / 'baseline.db'}"
        baseline = measure(sqlite_uri, 1, args.epochs)
        print(f"baseline, local sqlite, 1 client: {baseline['metrics_per_s']} metrics/s")

        env = dict(os.environ)
        env.update(TRACKING_SERVER_DIR=str(Path(tmp) / "server"),
                   MLFLOW_SERVER_PORT=str(free_port()), PG_PORT=str(free_port()),
                   MLFLOW_BIN=str(Path(sys.executable).parent / "mlflow"))  # fmt: skip
        subprocess.run(["bash", str(SCRIPT), "start"], env=env, check=True, capture_output=True)
        try:
            uri = f"http://127.0.0.1:{env['MLFLOW_SERVER_PORT']}"
            rows = []
            for n in args.clients:
                row = measure(uri, n, args.epochs)
                row["ratio_to_sqlite"] = round(row["metrics_per_s"] / baseline["metrics_per_s"], 2)
                rows.append(row)
                print(
                    f"server (PostgreSQL), {n} client(s): {row['metrics_per_s']} metrics/s "
                    f"({row['ratio_to_sqlite']}x local sqlite), {row['metrics']} metrics "
                    f"in {row['wall_s']} s, none lost"
                )
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)
    print(json.dumps({"baseline_sqlite": baseline, "server": rows, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
