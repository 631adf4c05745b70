"""Known-truth training runs: defined once, trained for real, recorded, replayed.

A known-truth case is a real training run whose right answer comes from how it
was built, not from the rule under test: shuffled labels can only be memorized
(Zhang et al. 2017), 3-4 images per class overfit, a plain CNN on 300
Fashion-MNIST images per class left running without early stopping diverges,
a 2-epoch tiny model underfits.

Each case trains through the real train stage (`pipeline.train.main`) on real
images with the thresholds params.yaml ships, and is scored by evaluate's own
code (`pipeline.evaluate.evaluate_variant`). What the diagnosis reads of it (each
variant's history.csv, metrics.json, the saved model's scores on every split,
the per-row correctness, its training-only layers) is recorded once under
tests/data/known_truth/<case>-seed<k>/ by `benchmarks/record_known_truth.py`;
the suite replays every recording through `assessment.build_evaluation` in
milliseconds (`replay`), with whatever rules and thresholds are current. One
run per family still trains end to end in the suite and checks that its live
evaluation and the replay of its own recording agree, so the recording keeps
carrying everything the diagnosis reads.

Recording layout (small text files, a few KB per variant):

    case.json                 case, seed, params overrides, classes, n_train, chance,
                              validation, and what recorded it (versions, CPU, date)
    <variant>/history.csv     the train stage's history, as written
    <variant>/record.json     metrics.json, scores (with per-class arrays and the
                              confusion matrix), behaviour, per-row correctness
                              (bit-packed, base64), seeds.json when there is one
"""

from __future__ import annotations

import base64
import dataclasses
import json
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, merge, parse_config

from .conftest import (
    FASHION,
    Project,
    digits_arrays,
    fashion_arrays,
    make_prepared,
    real_params,
    write_validation,
)

RECORDINGS = Path(__file__).resolve().parent / "data" / "known_truth"
SWEEP = RECORDINGS.parent / "sweep"
# The command that re-records a recording, by where it lives.
RECORDERS = {
    RECORDINGS: "python benchmarks/record_known_truth.py",
    SWEEP: "python benchmarks/sweep_verdicts.py",
}

DROPOUT = {"model": {"dropout": 0.5, "conv_dropout": 0.25}}
TINY = {"model": {"conv_filters": [1], "dense_units": 2}, "train": {"epochs": 2}}
OVER_REGULARIZED = {"model": {"l2": 0.05, "dropout": 0.5}}
LARGE = {"model": {"conv_filters": [64, 128], "dense_units": 512}}


@dataclasses.dataclass(frozen=True)
class Case:
    """How one known-truth run is built: data, variants and training overrides."""

    name: str
    variants: Mapping[str, Any]
    seeds: tuple[int, ...] = (1, 2)
    train_size: float = 0.7
    val_size: float | None = None
    shuffle_labels: bool = False
    flip_labels: float = 0.0  # this share of the labels replaced by another class, at random
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fashion_images: int = 0  # > 0: that many real Fashion-MNIST images instead of the digits
    truth: str = ""  # what the construction makes true, in words
    root: Path = RECORDINGS  # where its recordings live

    @property
    def needs_fashion(self) -> bool:
        return self.fashion_images > 0

    def recording(self, seed: int) -> Path:
        return self.root / f"{self.name}-seed{seed}"


CASES = {
    case.name: case
    for case in (
        Case(
            "shuffled_labels",
            {"baseline": {}, "large": LARGE},
            shuffle_labels=True,
            truth="labels carry no signal: any train accuracy above chance is memorization",
        ),
        Case(
            "little_data",
            {"baseline": {}, "overreg": OVER_REGULARIZED},
            # 35 training images (3-4 per class), val 539, test the rest.
            train_size=0.02,
            train={"batch_size": 16},
            truth="3-4 images per class overfit; l2 0.05 + dropout 0.5 cannot fit them",
        ),
        Case(
            "enough_data",
            {"baseline": {}, "dropout": DROPOUT, "tiny": TINY},
            truth="1,257 digits at 8x8 are enough for a plain CNN; 1 filter for 2 epochs underfits",
        ),
        Case(
            "fashion_300_per_class",
            {"baseline": {}, "dropout": DROPOUT},
            fashion_images=5_500,
            train_size=3_000 / 5_500,  # 300 per class; val 2,000, test 500
            val_size=2_000 / 5_500,
            train={"epochs": 30, "early_stopping": {"enabled": False}},
            truth="a plain CNN on 300 images per class, 30 epochs without early stopping, "
            "diverges; dropout on the same budget does not",
        ),
    )
}


# --------------------------------------------------------------------------- training


def train_for_real(
    project: Project,
    variants: Mapping[str, Any],
    *,
    seed: int = 42,
    train_size: float = 0.7,
    shuffle_labels: bool = False,
    train: Mapping[str, Any] | None = None,
    images: tuple[np.ndarray, np.ndarray] | None = None,
    val_size: float | None = None,
    flip_labels: float = 0.0,
) -> Config:
    """Prepared real images (the digits at 8x8 unless `images`) and the shipped params with
    `variants`, each trained by the real train stage; returns the Config.

    Everything but the variants, the seed and (when given) `train` keys is what
    params.yaml ships, thresholds included.
    """
    from pipeline import train as train_stage

    x, y = digits_arrays() if images is None else images
    if shuffle_labels:
        # Zhang et al. 2017: labels that carry no signal can only be memorized.
        y = np.random.default_rng(seed).permutation(y)
    if flip_labels:
        y = flip(y, flip_labels, seed)
    fractions = (train_size, 0.15) if train_size >= 0.7 else (train_size, 0.3)
    if val_size is not None:
        fractions = (train_size, val_size)
    make_prepared(
        project.paths.prepared_dir,
        x,
        y,
        [str(c) for c in range(10)],
        seed=seed,
        fractions=fractions,
    )
    cfg = project.write_params(case_params(variants, seed, list(x.shape[1:3]), train or {}))
    write_validation(project)
    for name in variants:
        assert train_stage.main(["--variant", name]) == 0
    return cfg


def flip(y: np.ndarray, share: float, seed: int, n_classes: int = 10) -> np.ndarray:
    """`share` of the labels, chosen at random, replaced by another class at random."""
    rng = np.random.default_rng(seed + 1_000)
    y = y.copy()
    picked = rng.choice(len(y), size=round(share * len(y)), replace=False)
    y[picked] = (y[picked] + rng.integers(1, n_classes, size=len(picked))) % n_classes
    return y


def case_params(
    variants: Mapping[str, Any], seed: int, image_size: list[int], train: Mapping[str, Any]
) -> dict:
    """The shipped params.yaml with a case's variants, seed, image size and train overrides."""
    params = real_params()
    params["data"]["image_size"] = image_size
    params["train"]["seed"] = seed
    params["train"] = merge(params["train"], dict(train))
    params["variants"] = dict(variants)
    if params["learning_curve"]["variant"] not in params["variants"]:
        # A case without `baseline` (a sweep cell of one network) draws its curve on its own.
        params["learning_curve"]["variant"] = next(iter(params["variants"]))
    return params


def train_case(project: Project, case: Case, seed: int) -> Config:
    """train_for_real with the case's construction."""
    images = fashion_arrays(case.fashion_images, seed) if case.needs_fashion else None
    return train_for_real(
        project,
        case.variants,
        seed=seed,
        train_size=case.train_size,
        shuffle_labels=case.shuffle_labels,
        train=case.train,
        images=images,
        val_size=case.val_size,
        flip_labels=case.flip_labels,
    )


# --------------------------------------------------------------------------- record


def measure(project: Project, cfg: Config) -> dict[str, Any]:
    """What evaluate measures of each trained variant, by evaluate's own code, plus the
    dataset facts the diagnosis reads; the inputs of `assessment.build_evaluation`."""
    from pipeline import assessment, figures, scoring
    from pipeline import evaluate as ev
    from pipeline.catalog.training import read_seed_records
    from pipeline.prepared import SPLITS, load_prepared

    data = load_prepared(project.paths.prepared_dir)
    probe = figures.select_probe(data, 1)
    indices = scoring.evaluation_indices(data)
    artifacts = {n: assessment.load_variant_artifacts(project.paths, n) for n in cfg.variants}
    evaluations = {
        name: ev.evaluate_variant(art, data, indices, probe, n_layers=1)
        for name, art in artifacts.items()
    }
    return {
        "classes": list(data.classes),
        "n_train": len(data.y("train")),
        "chance": {split: assessment.majority_share(data.y(split)) for split in SPLITS},
        "artifacts": artifacts,
        "evaluations": evaluations,
        "seed_records": {name: read_seed_records(project.paths, name) for name in artifacts},
    }


def record(case: Case, seed: int, cfg: Config, measured: Mapping[str, Any], dest: Path) -> Path:
    """Write one recording of `measured` (from `measure`) to `dest`; returns `dest`."""
    import keras
    import tensorflow as tf

    from pipeline.io import write_json_atomic, write_text_atomic

    dest.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        dest / "case.json",
        {
            "case": case.name,
            "seed": seed,
            "truth": case.truth,
            "params": {
                "variants": dict(case.variants),
                "train": dict(case.train),
                "data": {"image_size": list(cfg.data.image_size)},
            },
            "classes": measured["classes"],
            "n_train": measured["n_train"],
            "chance": measured["chance"],
            "validation": {"success": True, "checks": [], "warnings": [], "errors": []},
            "recorded_with": {
                "command": f"{RECORDERS.get(case.root, RECORDERS[RECORDINGS])} {case.name} "
                f"--seed {seed}",
                "date": time.strftime("%Y-%m-%d"),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "cpu": cpu_model(),
            },
        },
    )
    for name, art in measured["artifacts"].items():
        evaluation = measured["evaluations"][name]
        (dest / name).mkdir(exist_ok=True)
        write_text_atomic(dest / name / "history.csv", art.history.to_csv(index=False))
        write_json_atomic(
            dest / name / "record.json",
            {
                "train_metrics": art.train_metrics,
                "scores": evaluation.scores,
                "behaviour": evaluation.behaviour,
                "correct": {s: pack_bits(c) for s, c in (evaluation.correct or {}).items()},
                "seeds": extra_seeds(measured["seed_records"].get(name)),
            },
        )
    return dest


def extra_seeds(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """seeds.json without seed 0's entry, which repeats history.csv and the scores and
    which the diagnosis reads from those instead (assessment.summarize_seeds)."""
    if record is None:
        return None
    return {**record, "seeds": [e for e in record.get("seeds") or [] if int(e["index"]) != 0]}


def record_case(case: Case, seed: int) -> dict[str, Any]:
    """Train `case` for real in a temp project, measure it and swap its recording in whole
    (pipeline.prepared.staging_dir: an interrupted run leaves the previous one); returns
    the replayed evaluation.

    For the recording scripts: the working directory and MLflow's environment are
    the temp project's while it trains, as the `project` fixture makes them.
    """
    import tempfile

    import pytest

    from pipeline.prepared import staging_dir

    with tempfile.TemporaryDirectory(prefix=f"record-{case.name}-") as tmp:
        project = Project(Path(tmp))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(project.root)
            mp.setenv("MLFLOW_TRACKING_URI", project.tracking_uri)
            for key in ("MLFLOW_RUN_ID", "PIPELINE_REPRO_ID", "MLFLOW_REGISTRY_URI"):
                mp.delenv(key, raising=False)
            cfg = train_case(project, case, seed)
            measured = measure(project, cfg)
        with staging_dir(case.recording(seed)) as staging:
            record(case, seed, cfg, measured, staging)
            return replay(read_recording(staging))  # a recording that cannot replay is not kept


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pack_bits(flags: np.ndarray) -> dict[str, Any]:
    flags = np.asarray(flags, dtype=bool)
    return {"n": int(len(flags)), "bits": base64.b64encode(np.packbits(flags)).decode("ascii")}


def unpack_bits(packed: Mapping[str, Any]) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(raw)[: int(packed["n"])].astype(bool)


# --------------------------------------------------------------------------- replay


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recorded run, read back: the Config it replays under and the diagnosis inputs."""

    path: Path
    case: str
    seed: int
    cfg: Config
    inputs: dict[str, Any]


def read_recording(path: Path) -> Recording:
    """A recording as `assessment.build_evaluation`'s inputs, under today's params.yaml with
    the case's own overrides (so a changed rule or threshold replays on it)."""
    from pipeline import diagnosis
    from pipeline.catalog.training import TrainOutputs
    from pipeline.catalog.validation import Validation
    from pipeline.scoring import VariantEvaluation

    meta = json.loads((path / "case.json").read_text())
    p = meta["params"]
    cfg = parse_config(
        case_params(p["variants"], meta["seed"], p["data"]["image_size"], p["train"])
    )
    artifacts, evaluations, seed_records = {}, {}, {}
    for name in p["variants"]:
        rec = json.loads((path / name / "record.json").read_text())
        history = diagnosis.check_history(pd.read_csv(path / name / "history.csv"))
        artifacts[name] = TrainOutputs(
            name, path / name / "model.keras", history, rec["train_metrics"], {"run_id": None}
        )
        evaluations[name] = VariantEvaluation(
            name,
            rec["scores"],
            feature_maps={},
            behaviour=rec["behaviour"],
            correct={s: unpack_bits(c) for s, c in rec["correct"].items()},
        )
        seed_records[name] = rec["seeds"]
    inputs = {
        "classes": meta["classes"],
        "artifacts": artifacts,
        "evaluations": evaluations,
        "validation": Validation.from_payload(meta["validation"]),
        "n_train": meta["n_train"],
        "chance": meta["chance"],
        "seed_records": seed_records,
    }
    return Recording(path, meta["case"], int(meta["seed"]), cfg, inputs)


def join_recordings(recordings: Sequence[Recording]) -> Recording:
    """Recordings of the same data, split and training params (the sweep's cells of one size
    and seed) as one evaluation of all their variants, the way evaluate compares variants."""
    first = recordings[0]
    inputs = dict(first.inputs)
    for key in ("artifacts", "evaluations", "seed_records"):
        inputs[key] = {}
    variants: dict[str, Any] = {}
    for rec in recordings:
        for key in ("classes", "n_train", "chance"):
            if rec.inputs[key] != first.inputs[key]:
                raise ValueError(f"{rec.path} and {first.path} differ in {key}")
        if rec.cfg.train != first.cfg.train or rec.seed != first.seed:
            raise ValueError(f"{rec.path} and {first.path} trained differently")
        for key in ("artifacts", "evaluations", "seed_records"):
            inputs[key].update(rec.inputs[key])
        meta = json.loads((rec.path / "case.json").read_text())
        variants.update(meta["params"]["variants"])
    p = json.loads((first.path / "case.json").read_text())["params"]
    cfg = parse_config(case_params(variants, first.seed, p["data"]["image_size"], p["train"]))
    return Recording(first.path, first.case, first.seed, cfg, inputs)


def replay(recording: Recording) -> dict[str, Any]:
    """The evaluation.json payload evaluate would write for the recorded run, today."""
    from pipeline import assessment

    return assessment.build_evaluation(recording.cfg, **recording.inputs)


def recordings(case: str | None = None, root: Path = RECORDINGS) -> list[Path]:
    """Every recorded run (of `case`) under `root`, in name order."""
    pattern = f"{case}-seed*" if case else "*-seed*"
    # Not a recording being written (staging_dir's hidden temp folders).
    found = root.glob(pattern)
    return sorted(p for p in found if not p.name.startswith(".") and (p / "case.json").is_file())


def fashion_available() -> bool:
    return FASHION.is_dir()
