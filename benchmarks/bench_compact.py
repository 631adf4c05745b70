"""Which network under 100K parameters reaches 0.93 test accuracy on Fashion-MNIST?

A bare `model.fit` per candidate, built as the pipeline builds a variant
(pipeline.own_models.build_any: the built-in builder or a `model.builder`) from
`model` settings, on Fashion-MNIST from
Debian's `dataset-fashion-mnist`: the train file split 85/15 into train and
val (stratified, seed 42, as the pipeline's prepare does), the t10k file as
test. Early stopping on val loss (patience --patience, best weights kept),
Adam, the pipeline's loss. Prints per candidate: parameters, epochs, best
epoch, s/epoch, val and test accuracy; the last line is JSON.

    python benchmarks/bench_compact.py [--candidates gap96,flat64] [--train N]

A candidate that reaches the target here is a `model` setting users can copy
into a variant (the README's recommended settings for data of this size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FASHION = Path("/usr/share/datasets/fashion-mnist")

BASE = {
    "builder": "builtin",
    "weights": "none",
    "freeze_backbone": False,
    "conv_filters": [32, 64],
    "kernel_size": 3,
    "dense_units": 128,
    "dropout": 0.0,
    "conv_dropout": 0.0,
    "l2": 0.0,
    "batch_norm": False,
    "head": "flatten",
    "augmentation": {
        "enabled": False,
        "rotation": 0.08,
        "zoom": 0.1,
        "translation": 0.1,
        "flip": False,
    },
}

# Building blocks of the candidates below.
FLAT64 = {"conv_filters": [32, 64, 64], "dense_units": 64, "batch_norm": True, "dropout": 0.3}
# Horizontal flips only (a garment mirrored is the same garment).
FLIPS = {"enabled": True, "rotation": 0.0, "zoom": 0.0, "translation": 0.0, "flip": True}

# name -> overrides of BASE
CANDIDATES: dict[str, dict] = {
    # three conv blocks, global average pooling, BatchNorm: ~81K parameters
    "gap96": {**FLAT64, "conv_filters": [32, 64, 96], "head": "global_average"},
    # three conv blocks down to 3x3, flatten, BatchNorm: ~93K parameters
    "flat64": FLAT64,
    # two conv blocks, flatten to a narrow dense layer: ~95K parameters
    "two_conv": {**FLAT64, "conv_filters": [32, 64], "dense_units": 24},
    # flat64 with horizontal flips
    "flat64_flip": {**FLAT64, "augmentation": FLIPS},
    # flat64_flip plus dropout after each conv block
    "flat64_cd_flip": {**FLAT64, "conv_dropout": 0.15, "augmentation": FLIPS},
    # flat64_flip plus small shifts
    "flat64_shift_flip": {**FLAT64, "augmentation": {**FLIPS, "translation": 0.06}},
    # examples/compact_fashion.py (two convs per block, flatten into softmax: 96,938
    # parameters) with horizontal flips: 0.933 test accuracy (docs/performance.md)
    "vgg_flip": {
        "builder": "examples/compact_fashion.py:build",
        "dropout": 0.3,
        "augmentation": FLIPS,
    },
}


def load_fashion(train_limit: int | None):
    import numpy as np
    from sklearn.model_selection import train_test_split

    from pipeline.datasets import read_idx

    def pair(prefix: str):
        x = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz", 2051)
        y = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz", 2049)
        return x[..., None].astype(np.float32), y.astype(np.int64)

    x, y = pair("train")
    x_test, y_test = pair("t10k")
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.15, stratify=y, random_state=42)
    if train_limit:
        x_tr, y_tr = x_tr[:train_limit], y_tr[:train_limit]
    return (x_tr, y_tr), (x_val, y_val), (x_test, y_test)


def run(name: str, overrides: dict, data, args) -> dict:
    import keras
    import numpy as np

    from pipeline import precision
    from pipeline.builders import BuildContext
    from pipeline.config import ModelConfig, merge
    from pipeline.fitting import compile_model, set_determinism
    from pipeline.own_models import build_any

    (x_tr, y_tr), (x_val, y_val), (x_test, y_test) = data
    cfg = ModelConfig(**merge(BASE, overrides))
    set_determinism(42)
    precision.apply(args.precision)
    model = build_any(cfg, name, x_tr.shape[1:], 10, 42, BuildContext(cfg, ROOT))
    compile_model(model, args.learning_rate)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=args.patience, restore_best_weights=True
    )
    callbacks = [stop]
    if args.reduce_lr:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
        )
    start = time.perf_counter()
    hist = model.fit(
        x_tr,
        y_tr,
        validation_data=(x_val, y_val),
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    epochs = len(hist.history["loss"])
    best = int(np.argmin(hist.history["val_loss"])) + 1
    _, test_acc = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    return {
        "candidate": name,
        "params": int(model.count_params()),
        "epochs": epochs,
        "best_epoch": best,
        "s_per_epoch": round(seconds / epochs, 2),
        "val_accuracy": round(float(hist.history["val_accuracy"][best - 1]), 4),
        "test_accuracy": round(float(test_acc), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--train", type=int, default=0, help="first N train images (0 = all)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--reduce-lr",
        action="store_true",
        help="halve the learning rate after 2 epochs without val-loss improvement "
        "(the pipeline's train.reduce_lr with its defaults)",
    )
    args = parser.parse_args()
    if not FASHION.is_dir():
        print(f"skipped: {FASHION} missing (apt-get install dataset-fashion-mnist)")
        return 0
    from bench_pipeline import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} x{cpu['cores']}, flags {cpu['flags']}", flush=True)
    data = load_fashion(args.train or None)
    print(f"train {len(data[0][1])}, val {len(data[1][1])}, test {len(data[2][1])}", flush=True)
    results = []
    for name in args.candidates.split(","):
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
        row = run(name, CANDIDATES[name], data, args)
        print(json.dumps(row), flush=True)
        results.append(row)
    under = [r for r in results if r["params"] < 100_000]
    best = max(under, key=lambda r: r["test_accuracy"]) if under else None
    print(json.dumps({"cpu": cpu, "results": results, "best_under_100k": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
