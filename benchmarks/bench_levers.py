"""Benchmark: per-epoch speed levers for training, each an A/B ratio against float32,
batch 64, default threads, measured in the same run.

On a Fashion-MNIST subset (the first --train-size training images, the next
--val-size as validation), one params.yaml variant is fitted for --epochs
epochs by a bare `model.fit` (the variant's own builder and seed), once per
setting, each in a fresh process (precision policy and thread pools are
process-wide). Settings:

  reference        float32, batch 64, TensorFlow's default thread pools
  bf16             keras mixed_bfloat16 (bf16 compute, float32 weights)
  batch256         batch 256 with the learning rate x2 (square-root scaling)
  intra2_inter1    intra_op 2, inter_op 1 threads
  jit              XLA jit_compile=True
  bf16_inter1      bf16 with intra_op 2, inter_op 1
  tfdata           the train stage's input (tf.data from uint8 arrays) instead of numpy
  bf16_tfdata      bf16 on the train stage's input

Prints steady images/s (epochs after the first, which includes tracing),
the ratio to the reference, val accuracy and loss after the last epoch, and
the CPU with its bf16/AMX flags. Accuracy after a fixed epoch count is a
sanity check, not the accuracy claim: benchmarks/bench_pipeline.py trains to
early stopping with a lever on (--set) for that.

Inputs: /usr/share/datasets/fashion-mnist, params.yaml. Outputs: stdout.

Run: .venv/bin/python benchmarks/bench_levers.py [--variant baseline] [--epochs 4]
     [--settings reference,bf16,batch256] [--train-size 12000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SETTINGS = {
    "reference": {},
    "bf16": {"precision": "mixed_bfloat16"},
    "batch256": {"batch_size": 256, "lr_factor": 2.0},
    "intra2_inter1": {"intra": 2, "inter": 1},
    "jit": {"jit": True},
    "bf16_inter1": {"precision": "mixed_bfloat16", "intra": 2, "inter": 1},
    # The train stage's own input: tf.data batches gathered from uint8 arrays.
    "tfdata": {"tfdata": True},
    "bf16_tfdata": {"precision": "mixed_bfloat16", "tfdata": True},
}


def one(setting: str, variant: str, epochs: int, train_size: int, val_size: int) -> dict:
    """Run in a fresh process: fit the variant under one setting; its figures."""
    opts = SETTINGS[setting]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    if "intra" in opts:
        tf.config.threading.set_intra_op_parallelism_threads(opts["intra"])
        tf.config.threading.set_inter_op_parallelism_threads(opts["inter"])
    if "precision" in opts:
        keras.mixed_precision.set_global_policy(opts["precision"])

    from bench_train import epoch_timer, load_fashion, steady_rate

    from pipeline.config import load_config
    from pipeline.fitting import set_determinism
    from pipeline.models import build_model

    vcfg = load_config(REPO / "params.yaml").variant(variant)
    arrays = load_fashion(train_size, val_size)
    (x, y), (xv, yv) = arrays["train"], arrays["val"]
    x, xv = x.astype(np.float32), xv.astype(np.float32)
    set_determinism(vcfg.train.seed)
    model = build_model(vcfg.model, x.shape[1:], 10, seed=vcfg.train.seed)
    lr = vcfg.train.learning_rate * opts.get("lr_factor", 1.0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=opts.get("jit", False),
    )
    seconds: list[float] = []
    timer = epoch_timer(seconds)

    batch = opts.get("batch_size", vcfg.train.batch_size)
    if opts.get("tfdata"):
        from pipeline import train_input

        xu, xvu = x.astype(np.uint8), xv.astype(np.uint8)
        hist = model.fit(
            train_input.train_dataset(xu, y, batch, vcfg.train.seed, 0, epochs),
            validation_data=train_input.eval_dataset(xvu, yv, batch),
            epochs=epochs,
            steps_per_epoch=-(-len(y) // batch),
            callbacks=[timer],
            verbose=0,
        )
    else:
        hist = model.fit(
            x, y, validation_data=(xv, yv), batch_size=batch, epochs=epochs,
            callbacks=[timer], verbose=0,
        )  # fmt: skip
    return {
        "setting": setting,
        "images_per_s": steady_rate(len(y), seconds),
        "val_accuracy": float(hist.history["val_accuracy"][-1]),
        "val_loss": float(hist.history["val_loss"][-1]),
        "dtype_policy": keras.mixed_precision.global_policy().name,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="baseline")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=12_000)
    parser.add_argument("--val-size", type=int, default=3_000)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = one(args.one, args.variant, args.epochs, args.train_size, args.val_size)
        print(json.dumps(result))
        return 0
    from bench_pipeline import cpu_info

    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        print(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {cpu['flags']}")
    print(
        f"variant {args.variant}, {args.train_size} train / {args.val_size} val images 28x28, "
        f"{args.epochs} epochs per setting"
    )
    results = []
    for setting in ["reference"] + [s for s in settings if s != "reference"]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", setting, "--variant", args.variant,
             "--epochs", str(args.epochs), "--train-size", str(args.train_size),
             "--val-size", str(args.val_size)],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
        if out.returncode != 0:
            print(f"{setting}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = results[0]["images_per_s"]
    print(f"{'setting':16s} {'images/s':>9s} {'ratio':>6s} {'val acc':>8s} {'val loss':>8s}")
    for r in results:
        print(
            f"{r['setting']:16s} {r['images_per_s']:9.0f} {r['images_per_s'] / ref:6.2f} "
            f"{r['val_accuracy']:8.4f} {r['val_loss']:8.4f}"
        )
    print(json.dumps({"cpu": cpu, "variant": args.variant, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
