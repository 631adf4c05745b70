"""Benchmark: the evaluate and report stages for 7 variants on Fashion-MNIST.

Target: evaluate + report under 2 minutes on 2 CPU cores, for the 7 variants
in params.yaml on the full Fashion-MNIST splits (51,000 train / 9,000 val /
10,000 test images, 28x28), i.e. 490,000 predictions plus all figures, the
MLflow logging, the registry and the HTML page.

Setup (not timed): a throwaway project in --workdir with the prepared arrays
read straight from the IDX files, and the 7 variants built by
pipeline.models.build_model and trained briefly (2 epochs on 3,000 images;
the verdicts do not matter here, only the work) and saved per the train
contract, with their models logged to a sqlite MLflow in the workdir.

Timed: `python -m pipeline.evaluate` and `python -m pipeline.report` as DVC
runs them (fresh interpreters, so TensorFlow's import is included).

Usage: .venv/bin/python benchmarks/bench_evaluate.py [--workdir DIR] [--limit 120]
(a --workdir that already holds the prepared data and models skips the setup)
Exits 0 within the limit, 1 over it, 2 when the dataset is absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
]
VAL_FRACTION = 0.15


def load_idx(path: Path) -> np.ndarray:
    """The pipeline's own IDX reader (images or labels, by the file name)."""
    from pipeline.datasets import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

    return read_idx(path, IDX_IMAGES_MAGIC if "images" in path.name else IDX_LABELS_MAGIC)


def prepare(root: Path) -> None:
    """data/prepared/ from the IDX files: stratified 15% of train as val, t10k as test."""
    from sklearn.model_selection import train_test_split

    from pipeline.prepared import SPLITS, manifest_frame, write_prepared

    x = load_idx(FASHION / "train-images-idx3-ubyte.gz")[..., None]
    y = load_idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64)
    x_test = load_idx(FASHION / "t10k-images-idx3-ubyte.gz")[..., None]
    y_test = load_idx(FASHION / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    tr, va = train_test_split(np.arange(len(y)), test_size=VAL_FRACTION, stratify=y, random_state=0)
    tr, va = np.sort(tr), np.sort(va)
    arrays = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x_test, y_test)}
    frames = []
    for split in SPLITS:
        xs, ys = arrays[split]
        n = len(ys)
        frames.append(
            pd.DataFrame(
                {
                    "id": [f"{split}#{i}" for i in range(n)],
                    "path": "",
                    "label": [CLASSES[c] for c in ys],
                    "label_index": ys,
                    "split": split,
                    "source_split": "train" if split != "test" else "test",
                    "width": 28,
                    "height": 28,
                    "mode": "L",
                    "bytes": 784,
                    "pixel_hash": "",
                    "phash": "",
                    "pixel_mean": xs.reshape(n, -1).mean(axis=1),
                    "pixel_std": 0.0,
                    "status": "ok",
                    "error": "",
                    "array_index": np.arange(n),
                }
            )
        )
    manifest = manifest_frame(pd.concat(frames).to_dict("records"))
    meta = {
        "classes": CLASSES,
        "image_size": [28, 28],
        "channels": 1,
        "source": str(FASHION),
        "format": "idx",
    }
    write_prepared(root / "data" / "prepared", manifest, arrays, meta)


def train_variants(root: Path) -> None:
    """Every params variant, trained briefly and saved per the train contract."""
    import keras

    from pipeline import tracking
    from pipeline.catalog.training import write_train_outputs
    from pipeline.catalog.validation import write_validation
    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.paths import Paths
    from pipeline.prepared import load_prepared

    paths = Paths(root)
    cfg = load_config(paths.params)
    data = load_prepared(paths.prepared_dir)
    x = np.asarray(data.x("train")[:3000], dtype=np.float32)
    y = data.y("train")[:3000]
    xv = np.asarray(data.x("val")[:1000], dtype=np.float32)
    yv = data.y("val")[:1000]
    for name in cfg.variants:
        model = build_model(cfg.variant(name).model, data.image_shape, len(CLASSES), seed=0)
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        fit = model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)
        hist = pd.DataFrame(
            {k: fit.history[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        )
        hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
        hist["learning_rate"] = 1e-3
        hist["epoch_seconds"] = 0.0
        with tracking.stage_run(paths, cfg, "train", variant=name) as run:
            model_uri = tracking.log_keras_model(model, x[:3])
        write_train_outputs(
            paths,
            name,
            save_model=lambda path, model=model: model.save(str(path)),
            history_csv=hist.to_csv(index=False),
            metrics={
                "variant": name,
                "best_epoch": int(hist["val_loss"].idxmin()) + 1,
                "stopped_epoch": len(hist),
                "epochs_run": len(hist),
                "params": int(model.count_params()),
            },
            run_info={
                "run_id": run.info.run_id,
                "experiment_id": run.info.experiment_id,
                "model_uri": model_uri,
                "variant": name,
            },
        )
        keras.backend.clear_session()
    write_validation(paths, {"success": True, "checks": [], "warnings": [], "errors": []})


def timed_stage(root: Path, module: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{module} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    print(f"  {module}: {seconds:.1f} s — {result.stdout.strip()}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: temp)")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds allowed")
    args = parser.parse_args()
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        print(f"Fashion-MNIST not found in {FASHION}; install the dataset package to benchmark")
        return 2

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(FASHION)
    params["data"]["image_size"] = [28, 28]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PYTHONPATH=str(REPO),
        TF_CPP_MIN_LOG_LEVEL="2",
        PIPELINE_LOG_LEVEL="WARNING",
    )
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "TF_CPP_MIN_LOG_LEVEL")})
    sys.path.insert(0, str(REPO))
    os.chdir(root)

    n_variants = len(params["variants"])
    ready = all((root / "models" / v / "run.json").exists() for v in params["variants"])
    if ready and (root / "data" / "prepared" / "meta.json").exists():
        print(f"setup: reusing the prepared data and {n_variants} models in {root}")
    else:
        t0 = time.perf_counter()
        prepare(root)
        train_variants(root)
        print(
            f"setup: {n_variants} variants on Fashion-MNIST in {time.perf_counter() - t0:.0f} s "
            f"(not timed); {os.cpu_count()} CPUs"
        )

    evaluate_s = timed_stage(root, "pipeline.evaluate", env)
    report_s = timed_stage(root, "pipeline.report", env)
    total = evaluate_s + report_s
    size_kb = (root / "reports" / "report.html").stat().st_size / 1024
    verdict = "PASS" if total <= args.limit else "FAIL"
    print(
        f"{verdict}: evaluate {evaluate_s:.1f} s + report {report_s:.1f} s = {total:.1f} s "
        f"for {n_variants} variants (limit {args.limit:.0f} s); report.html {size_kb:.0f} KiB"
    )
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if total <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
