"""The one module that relies on Keras internals (written against Keras 3.15).

Exact resume needs three things Keras does not offer publicly:

1. An atomic checkpoint. BackupAndRestore writes the weights and then the
   epoch number in place; a kill in between pairs one epoch's weights with
   another's number. `AtomicBackupAndRestore` overrides the private
   `BackupAndRestore._save_model` and reads its private `_current_epoch`,
   `_last_batch_seen`, `_weights_path` and `_training_metadata_path`.
2. Every random stream of a model (dropout, augmentation), to re-seed at each
   epoch: Keras 3 keeps SeedGenerator states out of weight checkpoints.
   `seed_generators` walks the private `Layer._flatten_layers` and reads each
   layer's private `_seed_generators`.
3. The weights EarlyStopping(restore_best_weights=True) restores, set on
   resume through its undocumented `best_weights` attribute.

And for a user's own model (pipeline.own_models): its Conv and Dense kernels get
an L2 penalty after they are built; Keras computes a weight's penalty from the
variable's `regularizer` attribute, set only by `add_weight`
(`set_kernel_l2`, and `all_layers` walks nested models with `_flatten_layers`).

And one thing tf.distribute needs: under a strategy, Keras 3.15's `fit` first
averages the distributed dataset's first batch across replicas
(`Trainer._maybe_symbolic_build`) only to learn its shapes, and under
MultiWorkerMirroredStrategy on CPU that eager reduce fails (`ValueError:
Attempt to convert a value (PerReplica...)`). `build_compiled_state` builds
the model's compiled state from one plain example batch through the private
`Trainer._symbolic_build` and turns that step off for the model. Keras then
averages each step's per-replica logs (loss, accuracy) across workers with
`strategy.reduce("MEAN", v, axis=0)`, which fails on a scalar;
`average_logs_across_workers` replaces the private
`backend.tensorflow.trainer.reduce_per_replica` for that case with the
across-replica mean (`axis=None`), as one device would compute it.

`PRIVATE_API` lists them; tests/test_resume.py fails naming the attribute when
a Keras upgrade removes or renames one, and at run time `require` raises
KerasInternalsError instead of letting a resumed run silently diverge.

Inputs: Keras objects. Outputs: the checkpoint files under a BackupState's
`checkpoint` (see pipeline.resume). Importing this module imports Keras.
"""

from __future__ import annotations

import importlib
import os
import shutil
import types
from pathlib import Path
from typing import Any

import keras
from keras.callbacks import BackupAndRestore, EarlyStopping

from pipeline.io import write_json_atomic
from pipeline.resume import CHECKPOINT_METADATA, CHECKPOINT_WEIGHTS

# (class, attribute) pairs this module relies on.
PRIVATE_API = (
    ("BackupAndRestore", "_save_model"),
    ("BackupAndRestore", "_current_epoch"),
    ("BackupAndRestore", "_last_batch_seen"),
    ("BackupAndRestore", "_weights_path"),
    ("BackupAndRestore", "_training_metadata_path"),
    ("Layer", "_flatten_layers"),
    ("Layer", "_seed_generators"),
    ("EarlyStopping", "best_weights"),
    ("Model", "_symbolic_build"),
    ("Model", "_maybe_symbolic_build"),
    ("tensorflow_trainer", "reduce_per_replica"),
    ("tensorflow_trainer", "_collective_all_reduce_multi_worker"),
    ("Variable", "regularizer"),
)


class KerasInternalsError(RuntimeError):
    """A Keras internal that exact resume relies on is gone (a Keras upgrade)."""


def require(obj: Any, attribute: str) -> Any:
    """obj.<attribute>, or KerasInternalsError naming it."""
    try:
        return getattr(obj, attribute)
    except AttributeError:
        if isinstance(obj, types.ModuleType):
            owner = obj.__name__
        else:
            owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise KerasInternalsError(
            f"Keras {keras.__version__} has no {owner}.{attribute}, which "
            "pipeline/keras_private.py relies on (exact resume, multi-worker training; "
            "written for Keras 3.15); adapt that module to this Keras or pin keras==3.15.1"
        ) from None


def probe_objects() -> dict[str, Any]:
    """One fresh instance per class of PRIVATE_API (no training, nothing written)."""
    layer = keras.layers.Dropout(0.5, seed=1)
    return {
        "BackupAndRestore": BackupAndRestore(backup_dir="unused-probe"),
        "Layer": layer,
        "EarlyStopping": EarlyStopping(restore_best_weights=True),
        "Model": keras.Sequential(),
        "tensorflow_trainer": importlib.import_module("keras.src.backend.tensorflow.trainer"),
        "Variable": _built_dense().kernel,
    }


def _built_dense() -> keras.layers.Dense:
    layer = keras.layers.Dense(1)
    layer.build((None, 1))
    return layer


def missing_private_api() -> list[str]:
    """`Class.attribute` for each entry of PRIVATE_API this Keras lacks."""
    objects = probe_objects()
    return [f"{cls}.{attr}" for cls, attr in PRIVATE_API if not hasattr(objects[cls], attr)]


class AtomicBackupAndRestore(BackupAndRestore):
    """BackupAndRestore whose checkpoint (weights + epoch) changes atomically.

    `backup_dir` is a symlink to a complete `<backup_dir>-<epoch>` directory,
    swapped in one rename.
    """

    def __init__(self, backup_dir: str, **kwargs: Any) -> None:
        # Otherwise a renamed hook would leave ours uncalled and Keras writing in place.
        require(BackupAndRestore, "_save_model")
        super().__init__(backup_dir, **kwargs)
        for attribute, name in (
            ("_weights_path", CHECKPOINT_WEIGHTS),
            ("_training_metadata_path", CHECKPOINT_METADATA),
        ):
            if Path(require(self, attribute)).name != name:
                raise KerasInternalsError(
                    f"Keras {keras.__version__} names BackupAndRestore.{attribute} "
                    f"{Path(getattr(self, attribute)).name!r}, not {name!r} "
                    "(pipeline/resume.py reads the checkpoint by that name)"
                )

    def _save_model(self) -> None:
        epoch = require(self, "_current_epoch")
        link = Path(self.backup_dir)
        target = link.with_name(f"{link.name}-{epoch}")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        self.model.save_weights(str(target / CHECKPOINT_WEIGHTS))
        write_json_atomic(
            target / CHECKPOINT_METADATA,
            {"epoch": epoch, "batch": require(self, "_last_batch_seen")},
        )
        tmp_link = link.with_name(f".{link.name}.tmp")
        tmp_link.unlink(missing_ok=True)
        os.symlink(target.name, tmp_link)
        os.replace(tmp_link, link)
        for old in link.parent.glob(f"{link.name}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)


def seed_generators(model: keras.Model) -> list:
    """Every SeedGenerator of the model's layers, in a fixed order."""
    generators = []
    for layer in require(model, "_flatten_layers")(include_self=False):
        generators.extend(require(layer, "_seed_generators"))
    return generators


def all_layers(model: keras.Model) -> list:
    """Every layer of the model, nested models' included (not the model itself)."""
    return list(require(model, "_flatten_layers")(include_self=False))


def set_kernel_l2(layer: Any, l2: float) -> None:
    """An L2 penalty on a built layer's kernel. Keras reads a weight's penalty from the
    variable's undocumented `regularizer` (set by add_weight), so the layer's
    `kernel_regularizer`, which only its config keeps, is set for saving as well."""
    penalty = keras.regularizers.L2(l2)
    require(layer.kernel, "regularizer")
    layer.kernel.regularizer = penalty
    layer.kernel_regularizer = penalty


def set_restored_weights(early_stopping: EarlyStopping, weights: list) -> None:
    """The weights early_stopping restores if it stops training (restore_best_weights)."""
    require(early_stopping, "best_weights")
    early_stopping.best_weights = weights


def build_compiled_state(model: keras.Model, x: Any, y: Any) -> None:
    """Build the compiled loss, metrics and optimizer from one batch (x, y), inside the
    strategy's scope; then a distributed `fit` has nothing left to build, and skips
    the first-batch reduce that fails across workers."""
    require(model, "_symbolic_build")(data_batch=(x, y))
    require(model, "_maybe_symbolic_build")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def average_logs_across_workers() -> None:
    """Make a multi-worker fit average its scalar logs across replicas (see the module
    docstring); idempotent, and a no-op for every other strategy."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    original = require(trainer, "reduce_per_replica")
    if getattr(original, "patched_by_pipeline", False):
        return
    multi_worker = require(trainer, "_collective_all_reduce_multi_worker")

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):

            def mean(v):
                if isinstance(v, tf.distribute.DistributedValues):
                    return strategy.reduce("MEAN", v, axis=None)
                return v

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.patched_by_pipeline = True
    trainer.reduce_per_replica = reduce_per_replica
