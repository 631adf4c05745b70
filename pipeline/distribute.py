"""tf.distribute for training: which strategy a fit runs under, and which process writes.

params.yaml `train.strategy` (a variant may override it):
- `none`: TensorFlow's default strategy, one device (what every stage used before).
- `mirrored`: `tf.distribute.MirroredStrategy` over this machine's GPUs; without
  GPUs, over the CPU split into PIPELINE_CPU_DEVICES logical devices (default 1,
  which is the same as `none`; 2 or more only to try the strategy out, since
  the devices share the same cores).
- `multi_worker_mirrored`: `tf.distribute.MultiWorkerMirroredStrategy` across
  the processes that TF_CONFIG lists (scripts/train-workers.sh starts N of them
  on one machine). Worker 0 (or the task of type "chief") is the chief.

`train.batch_size` is the global batch under every strategy: each step's
batch is split across the replicas and their gradients summed, so a strategy
changes where the arithmetic runs, not what it computes (tests/test_distribute.py
compares with a one-device run of the same global batch).

Only the chief writes: stage outputs, resume state and the MLflow run. The
other workers train in lockstep and write into a temporary folder that is
removed afterwards. A strategy must be started before TensorFlow runs any op,
so the train stage calls `start` first thing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from pipeline.cli import UserError

log = logging.getLogger(__name__)

CPU_DEVICES_ENV = "PIPELINE_CPU_DEVICES"
STRATEGIES = ("none", "mirrored", "multi_worker_mirrored")

_started: dict[str, Any] = {}  # name -> strategy: one per process


class DistributeError(UserError, RuntimeError):
    """A strategy that cannot run as configured (TF_CONFIG, devices)."""


def cluster_spec() -> dict[str, Any] | None:
    """TF_CONFIG parsed, or None when it is unset.

    Raises:
        DistributeError: TF_CONFIG is not the JSON TensorFlow expects.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        workers = spec["cluster"]
        task = spec["task"]
        task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise DistributeError(
            'TF_CONFIG is not valid: expected JSON like {"cluster": {"worker": '
            '["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if not isinstance(workers, dict) or not workers:
        raise DistributeError("TF_CONFIG: `cluster` must map task types to host:port lists")
    return spec


def n_tasks(spec: dict[str, Any] | None) -> int:
    """How many processes the cluster has (1 without TF_CONFIG)."""
    if spec is None:
        return 1
    return sum(len(hosts) for hosts in spec["cluster"].values())


def is_chief() -> bool:
    """Whether this process writes: always, except a non-chief multi-worker task."""
    spec = cluster_spec()
    if spec is None or "multi_worker_mirrored" not in _started:
        return True
    task = spec["task"]
    has_chief = "chief" in spec["cluster"]
    return task["type"] == "chief" or (not has_chief and int(task["index"]) == 0)


def check_cluster(name: str) -> None:
    """Raise DistributeError where the strategy and TF_CONFIG disagree."""
    spec = cluster_spec()
    if name == "multi_worker_mirrored" and spec is None:
        raise DistributeError(
            "train.strategy multi_worker_mirrored needs TF_CONFIG naming every worker; "
            "start the workers with scripts/train-workers.sh N VARIANT"
        )
    if name != "multi_worker_mirrored" and n_tasks(spec) > 1:
        raise DistributeError(
            f"TF_CONFIG lists {n_tasks(spec)} workers but train.strategy is {name!r}: every "
            "worker would train alone and write the same outputs. Set train.strategy: "
            "multi_worker_mirrored for this variant, or unset TF_CONFIG"
        )


def set_threads(intra_op: int, inter_op: int) -> None:
    """TensorFlow's intra-op and inter-op thread pools for this process (0 = its default).

    Only before TensorFlow runs its first op: in a process where it already has
    (tests train several stages in one process), the pools stay as they are.
    """
    import tensorflow as tf

    threading = tf.config.threading
    for name, value, getter, setter in (
        ("intra_op", intra_op, threading.get_intra_op_parallelism_threads,
         threading.set_intra_op_parallelism_threads),
        ("inter_op", inter_op, threading.get_inter_op_parallelism_threads,
         threading.set_inter_op_parallelism_threads),
    ):  # fmt: skip
        if value and getter() != value:
            try:
                setter(value)
            except RuntimeError:
                log.info("train.threads.%s %d: TensorFlow already started here", name, value)


def start(name: str) -> Any:
    """Create the strategy `name` for this process (once; before any TensorFlow op)."""
    if name not in STRATEGIES:
        raise DistributeError(f"train.strategy {name!r}: allowed are {', '.join(STRATEGIES)}")
    if name in _started:
        return _started[name]
    if _started:
        raise DistributeError(
            f"train.strategy {name!r}: this process already runs under {active_name()!r}"
        )
    check_cluster(name)
    import tensorflow as tf

    if name == "none":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_mirrored_devices(tf))
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _started[name] = strategy
    return strategy


def _mirrored_devices(tf: Any) -> list[str]:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [f"/gpu:{i}" for i in range(len(gpus))]
    raw = os.environ.get(CPU_DEVICES_ENV, "1").strip()
    try:
        n = int(raw)
        if n < 1:
            raise ValueError
    except ValueError:
        raise DistributeError(f"{CPU_DEVICES_ENV}={raw!r}: expected a whole number >= 1") from None
    cpu = tf.config.list_physical_devices("CPU")[0]
    if n > 1:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * n
            )
        except RuntimeError:
            raise DistributeError(
                f"{CPU_DEVICES_ENV}={n}: TensorFlow was already initialized in this process"
            ) from None
    return [f"/cpu:{i}" for i in range(n)]


def active_name() -> str:
    """The started strategy's name ("none" when none was started)."""
    return next(iter(_started), "none")


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """The started strategy's scope, for building and compiling a model."""
    if not _started:
        yield
        return
    with next(iter(_started.values())).scope():
        yield
