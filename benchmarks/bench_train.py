"""Benchmark: what the training stage's input pipeline and MLflow logging cost.

On a Fashion-MNIST subset, with one model (the params.yaml `baseline`), batch
size and epoch count, three ways:

  (a) bare `model.fit` on in-memory float32 numpy arrays (the reference);
  (b) pipeline.train's tf.data input from memory-mapped uint8 arrays, with
      its callbacks (history rows, checkpoints, best weights), no MLflow;
  (c) the full stage path `train_variant` logging to a temp sqlite MLflow
      (per-epoch metrics, model summary, logged model, output files).

Prints images/s (steady state: epochs after the first, which includes graph
tracing) and wall times; (b) and (c) run --repeats times each, alternating,
and print their medians and spread. Targets: b/a >= 0.9 images/s; c's median
wall time within 3% of b's (c adds a fixed cost at the end for logging the
model). The difference of two wall times drowns in this VM's run-to-run
swings (20-30%), so (c) also times every MLflow call itself (MlflowClock) and
prints that time's share of the stage's wall time: the overhead, measured
directly.

Inputs: /usr/share/datasets/fashion-mnist (IDX files), params.yaml.
Outputs: stdout only; everything else goes to a temp dir that is deleted.

Run: .venv/bin/python benchmarks/bench_train.py [--train-size 10000] [--epochs 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline import fitting, history, resume, train  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.datasets import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.prepared import load_prepared, manifest_frame, write_prepared  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
VARIANT = "baseline"
MLFLOW_SECONDS: list[tuple[float, float, int]] = []  # per (c) run: in MLflow, wall, calls


def load_fashion(train_size: int, val_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The first train_size + val_size Fashion-MNIST training images, uint8 (n, 28, 28, 1)."""
    x = read_idx(FASHION / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC).astype(np.int64)
    x = x[..., None]
    end = train_size + val_size
    return {
        "train": (x[:train_size], y[:train_size]),
        "val": (x[train_size:end], y[train_size:end]),
        "test": (x[end : end + 100], y[end : end + 100]),
    }


def bench_params(epochs: int, batch_size: int) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source=str(FASHION), image_size=[28, 28])
    # Fixed epoch count and no class weights, the same for all three ways.
    params["train"].update(epochs=epochs, batch_size=batch_size, class_weight="off")
    params["train"]["early_stopping"]["enabled"] = False
    params["train"]["reduce_lr"]["enabled"] = False
    params["variants"] = {VARIANT: {}}
    return params


def epoch_timer(seconds: list[float]):
    """A Keras callback appending each epoch's wall seconds to `seconds`."""
    import keras

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    return Timer()


def steady_rate(n_train: int, epoch_seconds: list[float]) -> float:
    steady = epoch_seconds[1:] or epoch_seconds
    return n_train * len(steady) / sum(steady)


def run_bare(vcfg, arrays) -> tuple[float, float]:
    """(a): model.fit on float32 numpy arrays in memory."""

    from pipeline.models import build_model

    x_train, y_train = arrays["train"]
    x_val, y_val = arrays["val"]
    x_train, x_val = x_train.astype(np.float32), x_val.astype(np.float32)
    fitting.set_determinism(vcfg.train.seed)
    model = build_model(vcfg.model, x_train.shape[1:], 10, seed=vcfg.train.seed)
    fitting.compile_model(model, vcfg.train.learning_rate)
    seconds: list[float] = []
    timer = epoch_timer(seconds)

    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=vcfg.train.batch_size,
        epochs=vcfg.train.epochs,
        shuffle=True,
        callbacks=[timer],
        verbose=0,
    )
    return steady_rate(len(y_train), seconds), time.perf_counter() - start


def run_pipeline(vcfg, paths: Paths) -> tuple[float, float]:
    """(b): fit_variant from the memmapped prepared arrays, without MLflow."""
    data = load_prepared(paths.prepared_dir)
    state = resume.open_backup(paths.backup_dir("bench"), {"bench": "b"})
    start = time.perf_counter()
    result = fitting.fit_variant(vcfg, data, state, class_weight=None, log_to_mlflow=False)
    wall = time.perf_counter() - start
    state.discard()
    rate = steady_rate(len(data.y("train")), [r["epoch_seconds"] for r in result.rows])
    return rate, wall


class MlflowClock:
    """Wall seconds the main thread spends inside MLflow's API during a block.

    Every public method of MlflowClient, every fluent `mlflow.*` function the stage
    can call, `Model.log` (the logged model) and pipeline.tracking's logging helpers
    are wrapped with a timer; nested calls (a helper calling the client) count
    once, at the outermost. This measures the
    logging's own cost directly, unlike the difference of two wall times, which
    this VM's 20-30% run-to-run swings swamp. MLflow's system-metrics thread runs
    beside training and is not counted (it samples every 10 s)."""

    FLUENT = (
        "start_run", "end_run", "log_metric", "log_metrics", "log_param", "log_params",
        "set_tag", "set_tags", "log_artifact", "log_artifacts", "log_text", "log_dict",
        "log_figure", "log_input", "set_experiment", "get_experiment_by_name",
        "search_runs", "register_model",
    )  # fmt: skip

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._patches: list[tuple[object, str, object]] = []
        self._local = threading.local()

    def _wrap(self, owner: object, name: str) -> None:
        original = getattr(owner, name, None)
        if not callable(original):
            return
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            main = threading.current_thread() is threading.main_thread()
            depth = getattr(clock._local, "depth", 0)
            clock._local.depth = depth + 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock._local.depth = depth
                if main and depth == 0:
                    clock.seconds += time.perf_counter() - start
                    clock.calls += 1

        self._patches.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> MlflowClock:
        import mlflow
        import mlflow.keras
        from mlflow.tracking import MlflowClient

        for name in dir(MlflowClient):
            if not name.startswith("_"):
                self._wrap(MlflowClient, name)
        from mlflow.models import Model

        from pipeline import tracking

        for name in self.FLUENT:
            self._wrap(mlflow, name)
        self._wrap(mlflow.keras, "log_model")
        self._wrap(Model, "log")  # the stage logs its model through Model.log
        # and the stage's own MLflow helpers, whatever API they use inside
        for name in dir(tracking):
            if name.startswith(("log_", "set_", "register", "end_dead", "pipeline_run")):
                self._wrap(tracking, name)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)


def run_full(cfg, paths: Paths) -> tuple[float, float]:
    """(c): the whole stage, MLflow logging to sqlite in the temp dir."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{paths.root / 'mlflow.db'}"
    # Create the sqlite schema outside the timing: it is a one-off per database.
    from pipeline import tracking

    tracking.configure(paths)
    tracking.ensure_experiment(paths, cfg.mlflow.experiment)
    with MlflowClock() as clock:
        start = time.perf_counter()
        train.train_variant(paths, cfg, VARIANT)
        wall = time.perf_counter() - start
    MLFLOW_SECONDS.append((clock.seconds, wall, clock.calls))
    rows = history.read_history(paths.history_csv(VARIANT))
    n_train = len(load_prepared(paths.prepared_dir).y("train"))
    return steady_rate(n_train, [r["epoch_seconds"] for r in rows]), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--val-size", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of (b) and (c) each, alternating"
    )
    args = parser.parse_args()
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        print(f"{FASHION} not found: install the dataset-fashion-mnist package", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)

    arrays = load_fashion(args.train_size, args.val_size)
    cfg = parse_config(bench_params(args.epochs, args.batch_size))
    vcfg = cfg.variant(VARIANT)
    print(
        f"Fashion-MNIST subset: {args.train_size} train / {args.val_size} val images 28x28, "
        f"model {VARIANT} ({list(vcfg.model.conv_filters)} filters), batch {args.batch_size}, "
        f"{args.epochs} epochs; (b) and (c) {args.repeats} times each, alternating"
    )
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        paths = Paths(Path(tmp))
        paths.params.write_text(yaml.safe_dump(bench_params(args.epochs, args.batch_size)))
        meta = {"classes": [str(c) for c in range(10)], "image_size": [28, 28], "channels": 1}
        write_prepared(paths.prepared_dir, manifest_frame([]), arrays, meta)

        a = run_bare(vcfg, arrays)
        b_runs, c_runs = [], []
        for _ in range(args.repeats):
            b_runs.append(run_pipeline(vcfg, paths))
            c_runs.append(run_full(cfg, paths))
    results = {
        "a bare fit, numpy in memory": [a],
        "b tf.data from memmap, no MLflow": b_runs,
        "c full stage with MLflow": c_runs,
    }
    print(f"{'way':36s} {'images/s':>10s} {'wall s median':>14s} {'wall s min-max':>15s}")
    for name, runs in results.items():
        rates, walls = [r for r, _ in runs], [w for _, w in runs]
        print(
            f"{name:36s} {statistics.median(rates):10.0f} {statistics.median(walls):14.2f} "
            f"{min(walls):7.2f}-{max(walls):<7.2f}"
        )
    b_rate = statistics.median(r for r, _ in b_runs)
    c_rate = statistics.median(r for r, _ in c_runs)
    b_wall = statistics.median(w for _, w in b_runs)
    c_wall = statistics.median(w for _, w in c_runs)
    print(f"b/a images/s: {b_rate / a[0]:.3f} (target >= 0.9)")
    print(f"c/b images/s: {c_rate / b_rate:.3f} (per-epoch MLflow logging cost)")
    overheads = sorted(100 * (c / b - 1) for (_, b), (_, c) in zip(b_runs, c_runs, strict=True))
    print(
        f"MLflow overhead, median wall c vs b: {100 * (c_wall / b_wall - 1):+.1f}% (target < 3%); "
        f"pairwise over {len(overheads)} pairs {overheads[0]:+.1f}% to {overheads[-1]:+.1f}%, "
        f"median {statistics.median(overheads):+.1f}% (c adds a fixed cost at the end: "
        f"{c_wall - b_wall:.1f} s, logging the model and outputs)"
    )
    shares = sorted(100 * inside / wall for inside, wall, _ in MLFLOW_SECONDS)
    inside = statistics.median(x for x, _, _ in MLFLOW_SECONDS)
    calls = statistics.median(n for _, _, n in MLFLOW_SECONDS)
    print(
        f"MLflow overhead, measured inside its calls: median {statistics.median(shares):.2f}% "
        f"of the stage's wall time (target < 3%), {min(shares):.2f}% to {max(shares):.2f}% "
        f"over {len(shares)} runs; {inside:.2f} s in {calls:.0f} calls per run, the model "
        "logged at the end included"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
