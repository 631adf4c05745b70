"""Stage `evaluate`: score every variant, diagnose it, compare, register the best.

Inputs: params.yaml (`variants`, `evaluate`, `registry`), data/prepared/,
reports/validation.json, and for every variant models/<variant>/{model.keras,
history.csv, metrics.json, run.json, seeds.json} (the train stage's contract;
a missing seeds.json, from a model trained before `train.seeds`, means one seed).

Outputs:
- reports/evaluation.json: per variant train/val/test scores (accuracy, loss,
  macro precision/recall/F1), gap, best and run epochs, onset epoch, verdict,
  evidence, MLflow run id, per-class metrics (with each class's train-vs-val
  recall gap), confusion matrices; plus best_variant, effects (each variant vs
  the baseline), recommendations and the registered model version.
  Under each variant, `seeds`: every training seed's verdict (diagnosis.diagnose
  on that seed's history and scores), val accuracy and gap, and their aggregate
  (pipeline.seeds: mean, sd, Student-t 95% interval, verdict agreement).
- reports/comparison.csv and comparison.md: one row per variant (plus
  across-seed columns and a section when a variant trained more than one seed).
- reports/curves.csv: long format (variant, epoch, loss, val_loss, accuracy,
  val_accuracy, gap) for dvc.yaml's top-level plots.
- reports/metrics.json: flat DVC metrics (<variant>.test_accuracy, ...).
- reports/figures/: learning curves, all-variant curves, gaps, confusion
  matrices, feature maps (pipeline.plots); learning_curve.png.
- evaluation.json `learning_curve` (when models/learning_curve/<fraction>/
  exist): "would more data help?" from the learning_curve stages' scores plus
  this stage's own scores of `learning_curve.variant` as the full-data point
  (pipeline.learning_curve.analyse); "Get more training data" is appended to
  the recommendations only when val accuracy still rises beyond noise.
- MLflow: evaluation metrics, a `verdict` tag and the evidence logged to each
  variant's own train run (with several seeds also seeds_* metrics and a
  `verdict_agreement` tag); an `evaluate` run holding the comparison and the
  figures; the best variant's model registered as a new version of
  registry.model_name with alias "challenger" (alias "champion" is never
  touched here: only the retrain gate moves it).

Train-split scores use a fixed random sample of the train split no larger
than the bigger of val and test (all of it when it is smaller): the train
accuracy then has the same statistical precision as the val accuracy it is
compared with (standard error < 0.5% at 9,000 images), and evaluation cost
stops growing with the training set. evaluation.json records `n` per split.

Loss here is plain cross-entropy of the saved model in inference mode, without
the L2 penalty Keras adds during training, so train and val losses compare
like for like. evaluation.json also records, per variant, which training-only
behaviour the saved model has (`training_behaviour`: dropout, augmentation, L2
penalty), read from the model's layers: the report uses it to say whose
per-epoch train curves Keras measured with those active.

Feature-map probes are one validation image per class (the first
`feature_map_images` classes, cycling when there are more images than
classes), each picked with a fixed seed, so the figure shows what the filters
respond to across classes rather than N images of the sorted split's first class.

MLflow is checked first: the stage configures tracking and confirms every
variant's train run exists before any inference or write, so an unreachable
server or a stale run.json leaves reports/ exactly as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import diagnosis, plots, seeds
from pipeline import learning_curve as lc
from pipeline.cli import StageError, run_stage
from pipeline.config import Config, load_config
from pipeline.io import read_stage_json, write_json_atomic, write_text_atomic
from pipeline.paths import Paths, fraction_key
from pipeline.prepared import SPLITS, PreparedDataset, load_prepared, staging_dir
from pipeline.scoring import evaluation_indices, predict_proba, split_scores
from pipeline.tracking import CHALLENGER

log = logging.getLogger(__name__)

# Inference batch: bounds memory only, results do not depend on it.
# The train-split sample is fixed (scoring.TRAIN_SAMPLE_SEED); likewise the feature-map
# probe images.
PROBE_SEED = 0
# Keras layer classes that act only while training (the per-epoch train metrics include them).
AUGMENTATION_PREFIX = "Random"
CURVES_COLUMNS = ["variant", "epoch", "loss", "val_loss", "accuracy", "val_accuracy", "gap"]
COMPARISON_COLUMNS = [
    "variant",
    "verdict",
    "model_verdict",
    "diverged",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "gap",
    "onset_epoch",
    "best_epoch",
    "epochs_run",
    "delta_val_accuracy",
    "delta_test_accuracy",
    "delta_gap",
    "delta_val_ci95",
    "delta_gap_ci95",
    "helped",
]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class VariantArtifacts:
    """What the train stage left for one variant."""

    name: str
    model_path: Path
    history: pd.DataFrame
    train_metrics: dict[str, Any]
    run_info: dict[str, Any]


def load_variant_artifacts(paths: Paths, variant: str) -> VariantArtifacts:
    """Read models/<variant>/; raises StageError naming the variant and the missing file."""
    needed = {
        "model": paths.model_file(variant),
        "history": paths.history_csv(variant),
        "metrics": paths.train_metrics(variant),
        "run": paths.run_info(variant),
    }
    missing = [str(p) for p in needed.values() if not p.exists()]
    if missing:
        raise StageError(
            f"variant {variant!r} has no trained model: missing {', '.join(missing)}. "
            f"Train it first (dvc repro train@{variant}) or remove it from params.yaml `variants`"
        )
    try:
        history = diagnosis.check_history(pd.read_csv(needed["history"]))
        train_metrics = json.loads(needed["metrics"].read_text())
        run_info = json.loads(needed["run"].read_text())
    except (ValueError, OSError) as exc:
        raise StageError(f"variant {variant!r}: unreadable training output: {exc}") from None
    return VariantArtifacts(variant, needed["model"], history, train_metrics, run_info)


def load_validation(paths: Paths) -> dict[str, Any]:
    return read_stage_json(paths.validation_json, "validate")


# --------------------------------------------------------------------------- scoring


def per_class_table(scores: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> list[dict]:
    """One row per class: precision/recall/F1 per split and the train-vs-val recall gap."""
    rows = []
    for i, name in enumerate(classes):
        row: dict[str, Any] = {"class": name}
        for split in SPLITS:
            pc = scores[split]["_per_class"]
            for metric in ("precision", "recall", "f1", "support"):
                row[f"{split}_{metric}"] = pc[metric][i]
        # Recall of a class = accuracy on that class's images.
        row["accuracy_gap"] = row["train_recall"] - row["val_recall"]
        rows.append(row)
    return rows


def feature_maps(model: Any, images: np.ndarray, n_layers: int) -> dict[str, np.ndarray]:
    """Outputs of the first `n_layers` layers named conv_1, conv_2, ... on `images`."""
    names = []
    for i in range(1, n_layers + 1):
        try:
            model.get_layer(f"conv_{i}")
        except ValueError:
            break
        names.append(f"conv_{i}")
    if not names:
        log.warning("model has no layer named conv_1; no feature maps")
        return {}
    x = np.asarray(images, dtype=np.float32)
    try:
        import keras

        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        probe = keras.Model(inputs, [model.get_layer(n).output for n in names])
        outputs = probe(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {n: np.asarray(o) for n, o in zip(names, outputs, strict=True)}
    except (AttributeError, ValueError, TypeError):
        # A Sequential model loaded without a defined input: walk its layers.
        found: dict[str, np.ndarray] = {}
        out = x
        for layer in model.layers:
            out = layer(out, training=False)
            if layer.name in names:
                found[layer.name] = np.asarray(out)
            if len(found) == len(names):
                break
        return found


def probe_indices(labels: np.ndarray, n: int, seed: int = PROBE_SEED) -> np.ndarray:
    """`n` row indices, one per class in class order, cycling over classes when `n` exceeds them.

    Each class's image is drawn at random with a fixed seed, so the probe is the
    same in every run yet not always the first (often atypical) image of a class.
    """
    labels = np.asarray(labels)
    if n < 1 or len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    classes = sorted(pools)
    picked: list[int] = []
    round_ = 0
    while len(picked) < min(n, len(labels)):
        for c in classes:
            if round_ < len(pools[c]) and len(picked) < n:
                picked.append(int(pools[c][round_]))
        round_ += 1
    return np.asarray(picked, dtype=np.int64)


def training_behaviour(model: Any) -> dict[str, bool]:
    """Which training-only behaviour the model has: dropout, augmentation, an L2 penalty.

    Keras reports the per-epoch train loss and accuracy with these active, so
    they make the history's train curves differ from an inference-mode score.
    """
    import keras

    layers = list(getattr(model, "layers", []))
    return {
        "dropout": any(
            isinstance(layer, keras.layers.Dropout) and float(layer.rate) > 0 for layer in layers
        ),
        "augmentation": any(
            type(layer).__name__.startswith(AUGMENTATION_PREFIX) for layer in layers
        ),
        "l2": any(getattr(layer, "kernel_regularizer", None) is not None for layer in layers),
    }


@dataclass
class VariantEvaluation:
    name: str
    scores: dict[str, dict[str, Any]]  # split -> split_scores()
    feature_maps: dict[str, np.ndarray]
    behaviour: dict[str, bool] | None = None  # training_behaviour(); None when unknown
    # split -> per-row correctness of the saved model (for paired comparisons)
    correct: dict[str, np.ndarray] | None = None


def evaluate_variant(
    artifacts: VariantArtifacts,
    data: PreparedDataset,
    indices: Mapping[str, np.ndarray],
    probe_images: np.ndarray,
    n_layers: int,
) -> VariantEvaluation:
    import keras

    model = keras.saving.load_model(artifacts.model_path, compile=False)
    n_classes = len(data.classes)
    scores, correct = {}, {}
    for split in SPLITS:
        x, idx = data.x(split), indices[split]
        rows = x if len(idx) == len(x) else x[idx]  # fancy indexing copies only the sample
        proba = predict_proba(model, rows)
        scores[split] = split_scores(data.y(split)[idx], proba, n_classes)
        correct[split] = proba.argmax(axis=1) == np.asarray(data.y(split)[idx])
    maps = feature_maps(model, probe_images, n_layers)
    behaviour = training_behaviour(model)
    keras.backend.clear_session()
    return VariantEvaluation(artifacts.name, scores, maps, behaviour, correct)


# --------------------------------------------------------------------------- assembling


def public_scores(scores: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if not k.startswith("_")}


def chance_accuracy(scores: Mapping[str, Any]) -> float | None:
    """Accuracy of always answering the split's most common class (None: unknown)."""
    support = scores.get("_per_class", {}).get("support") or []
    total = sum(support)
    return max(support) / total if total else None


def majority_share(labels: np.ndarray) -> float | None:
    """Accuracy of always answering the most common label (None for no labels)."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else None


def split_facts(scores: Mapping[str, Any], chance: float | None = None) -> diagnosis.SplitScores:
    """The saved model's scores on one split, with its size and chance level.

    `chance` is the split's majority-class share; None reads it off the scored
    rows (for train those are a sample, so the caller passes the full split's).
    """
    return diagnosis.SplitScores(
        accuracy=scores["accuracy"],
        loss=scores["loss"],
        n=int(scores.get("n", 0)),
        chance=chance if chance is not None else chance_accuracy(scores),
    )


def run_facts(
    history: pd.DataFrame, train_metrics: Mapping[str, Any], n_train: int
) -> diagnosis.RunFacts:
    """How the run ended, from metrics.json or a seeds.json entry (stopped_epoch > 0:
    early stopping ended it)."""
    best_epoch = train_metrics.get("best_epoch")
    stopped = train_metrics.get("stopped_epoch")
    return diagnosis.RunFacts(
        best_epoch=best_epoch if best_epoch in set(history["epoch"]) else None,
        stopped_early=None if stopped is None else int(stopped) > 0,
        n_train=n_train,
    )


def build_evaluation(
    cfg: Config,
    classes: Sequence[str],
    artifacts: Mapping[str, VariantArtifacts],
    evaluations: Mapping[str, VariantEvaluation],
    validation: Mapping[str, Any],
    n_train: int = 0,
    chance: Mapping[str, float | None] | None = None,
    seed_records: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The evaluation.json payload (without the registry part), from pure inputs.

    `n_train` is the size of the train split (the history's train accuracy is
    measured over it); 0 falls back to the scored train sample's size.
    `chance` maps a split to its majority-class share (majority_share of the
    full split); missing splits read it off the scored rows. `seed_records`
    maps a variant to its seeds.json: every extra training seed is diagnosed
    with the same facts as seed 0 (whose saved model is model.keras), and the
    seed-to-seed spread widens the noise of the comparison.
    """
    chance = chance or {}
    seed_records = seed_records or {}
    reference = diagnosis.Reference(
        train_accuracy=max(e.scores["train"]["accuracy"] for e in evaluations.values()),
        val_accuracy=max(e.scores["val"]["accuracy"] for e in evaluations.values()),
    )
    variants: dict[str, Any] = {}
    summaries = []

    def diagnose_run(name, history, scores, train_metrics) -> diagnosis.Diagnosis:
        return diagnosis.diagnose(
            name,
            history,
            split_facts(scores["train"], chance.get("train")),
            split_facts(scores["val"], chance.get("val")),
            n_classes=len(classes),
            cfg=cfg.evaluate,
            reference=reference,
            run=run_facts(history, train_metrics, n_train),
        )

    for name, ev in evaluations.items():
        art = artifacts[name]
        diag = diagnose_run(name, art.history, ev.scores, art.train_metrics)
        seed_summary = summarize_seeds(
            name, cfg, diag, art, ev, seed_records.get(name), diagnose_run
        )
        variants[name] = {
            **{split: public_scores(ev.scores[split]) for split in SPLITS},
            "gap": diag.gap,
            "best_epoch": diag.best_epoch,
            "epochs_run": diag.epochs_run,
            "onset_epoch": diag.onset_epoch,
            "max_generalization_loss": diag.max_generalization_loss,
            "verdict": diag.verdict,
            "model_verdict": diag.model_verdict,
            "summary": diag.summary,
            "evidence": diag.evidence,
            "training": diag.training,
            "memorization": diag.memorization,
            "rules": diag.rules,
            "mlflow_run_id": art.run_info.get("run_id"),
            "model_uri": art.run_info.get("model_uri"),
            "training_behaviour": ev.behaviour,
            "seeds": seed_summary,
            "per_class": per_class_table(ev.scores, classes),
            "confusion": {
                "labels": list(classes),
                **{split: ev.scores[split]["_confusion"] for split in SPLITS},
            },
        }
        if seed_summary["n_seeds"] > 1:
            # The verdict is seed 0's (its saved model is the one served); say how the others agree.
            variants[name]["evidence"].append(f"across training seeds: {seed_summary['summary']}")
        model_cfg = cfg.variant(name).model
        summaries.append(
            diagnosis.VariantSummary(
                name=name,
                verdict=diag.verdict,
                train_accuracy=ev.scores["train"]["accuracy"],
                val_accuracy=ev.scores["val"]["accuracy"],
                test_accuracy=ev.scores["test"]["accuracy"],
                gap=diag.gap["accuracy"],
                onset_epoch=diag.onset_epoch,
                n_val=int(ev.scores["val"]["n"]),
                augmented=model_cfg.augmentation.enabled,
                model_verdict=diag.model_verdict,
                n_train=int(ev.scores["train"]["n"]),
                memorizing=bool(diag.rules["memorization"]),
                train_peak=diag.memorization["train_peak"],
                val_peak=diag.memorization["val_peak"],
                val_correct=(ev.correct or {}).get("val"),
                train_correct=(ev.correct or {}).get("train"),
                seed_var_val=_sd_squared(seed_summary["val_accuracy"]),
                seed_var_gap=_sd_squared(seed_summary["gap"]),
                regularized=bool(
                    model_cfg.dropout > 0
                    or model_cfg.conv_dropout > 0
                    or model_cfg.l2 > 0
                    or model_cfg.augmentation.enabled
                ),
            )
        )
    effects = diagnosis.compare_to_baseline(summaries, cfg.evaluate.min_effect)
    best, reason = diagnosis.choose_best(summaries)
    reference_name = diagnosis.reference_variant([s.name for s in summaries])
    return {
        "answer": variants[reference_name]["summary"],
        "variants": variants,
        "best_variant": best,
        "best_variant_reason": reason,
        "reference_variant": reference_name,
        "effects": effects,
        "recommendations": diagnosis.recommend(summaries, effects, best, validation),
        "validation_success": bool(validation.get("success", False)),
        "classes": list(classes),
    }


def _sd_squared(spread: Mapping[str, Any]) -> float:
    """Seed-to-seed variance of one draw (seed 0's) for the comparison's noise; 0 for one seed."""
    sd = spread.get("sd")
    return float(sd) ** 2 if sd is not None else 0.0


def summarize_seeds(
    name: str,
    cfg: Config,
    diag: diagnosis.Diagnosis,
    art: VariantArtifacts,
    ev: VariantEvaluation,
    record: Mapping[str, Any] | None,
    diagnose_run: Any,
) -> dict[str, Any]:
    """Each training seed's verdict, val accuracy and gap, and their aggregate (pipeline.seeds).

    Seed 0 is the variant's own diagnosis; the other seeds' saved models were
    scored by the train stage on the same rows with the same formula
    (pipeline.scoring). A model trained before train.seeds existed is one seed.
    """
    entries = (record or {}).get("seeds") or []
    per_seed = [
        {
            "index": 0,
            "seed": cfg.variant(name).train.seed,
            "verdict": diag.verdict,
            "model_verdict": diag.model_verdict,
            "train_accuracy": float(ev.scores["train"]["accuracy"]),
            "val_accuracy": float(ev.scores["val"]["accuracy"]),
            "gap": float(diag.gap["accuracy"]),
            "best_epoch": diag.best_epoch,
            "epochs_run": diag.epochs_run,
            "mlflow_run_id": art.run_info.get("run_id"),
        }
    ]
    for entry in entries:
        if int(entry["index"]) == 0:
            continue
        try:
            history = diagnosis.check_history(pd.DataFrame(entry["history"]))
            seed_diag = diagnose_run(name, history, entry["scores"], entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise StageError(
                f"variant {name!r} seed {entry.get('seed')}: unusable seeds.json entry ({exc}); "
                f"retrain it (dvc repro -f train@{name})"
            ) from None
        per_seed.append(
            {
                "index": int(entry["index"]),
                "seed": int(entry["seed"]),
                "verdict": seed_diag.verdict,
                "model_verdict": seed_diag.model_verdict,
                "train_accuracy": float(entry["scores"]["train"]["accuracy"]),
                "val_accuracy": float(entry["scores"]["val"]["accuracy"]),
                "gap": float(seed_diag.gap["accuracy"]),
                "best_epoch": seed_diag.best_epoch,
                "epochs_run": seed_diag.epochs_run,
                "mlflow_run_id": entry.get("mlflow_run_id"),
            }
        )
    summary = seeds.summarize_seeds(
        [p["val_accuracy"] for p in per_seed],
        [p["gap"] for p in per_seed],
        [p["verdict"] for p in per_seed],
    )
    return {**summary, "summary": seeds.describe(summary), "per_seed": per_seed}


def curves_frame(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Long format: one row per variant and epoch (dvc plots colour by `variant`)."""
    frames = []
    for name, history in histories.items():
        frame = history.loc[:, ["epoch", "loss", "val_loss", "accuracy", "val_accuracy"]].copy()
        frame.insert(0, "variant", name)
        frame["gap"] = frame["accuracy"] - frame["val_accuracy"]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[CURVES_COLUMNS]


def comparison_frame(evaluation: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name, v in evaluation["variants"].items():
        eff = evaluation["effects"][name]
        rows.append(
            {
                "variant": name,
                "verdict": v["verdict"],
                "model_verdict": v["model_verdict"],
                "diverged": bool(v["training"]["diverged"]),
                "train_accuracy": v["train"]["accuracy"],
                "val_accuracy": v["val"]["accuracy"],
                "test_accuracy": v["test"]["accuracy"],
                "gap": v["gap"]["accuracy"],
                "onset_epoch": v["onset_epoch"],
                "best_epoch": v["best_epoch"],
                "epochs_run": v["epochs_run"],
                "delta_val_accuracy": eff["delta_val_accuracy"],
                "delta_test_accuracy": eff["delta_test_accuracy"],
                "delta_gap": eff["delta_gap"],
                "delta_val_ci95": eff["delta_val_ci95"],
                "delta_gap_ci95": eff["delta_gap_ci95"],
                "helped": bool(eff["helped"]),
            }
        )
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    frame["onset_epoch"] = frame["onset_epoch"].astype("Int64")
    return frame


def comparison_markdown(frame: pd.DataFrame, best: str, reference: str) -> str:
    """A GitHub-style table; deltas vs the reference variant."""
    head = (
        "| variant | verdict | saved model | train acc | val acc | test acc | gap | onset | "
        f"Δ val acc (±95%) | Δ test acc | Δ gap (±95%) | helped |\n|{'---|' * 12}\n"
    )
    lines = []
    for r in frame.itertuples(index=False):
        onset = "-" if pd.isna(r.onset_epoch) else str(int(r.onset_epoch))
        name = f"**{r.variant}** (best)" if r.variant == best else r.variant
        lines.append(
            f"| {name} | {r.verdict} | {r.model_verdict} | {r.train_accuracy:.3f} | "
            f"{r.val_accuracy:.3f} | {r.test_accuracy:.3f} | {r.gap:+.3f} | {onset} | "
            f"{r.delta_val_accuracy:+.3f} (±{r.delta_val_ci95:.3f}) | "
            f"{r.delta_test_accuracy:+.3f} | {r.delta_gap:+.3f} (±{r.delta_gap_ci95:.3f}) | "
            f"{'yes' if r.helped else '-'} |"
        )
    return (
        f"# Variant comparison\n\nΔ columns are relative to `{reference}`.\n\n"
        + head
        + "\n".join(lines)
        + "\n"
    )


def flat_metrics(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """reports/metrics.json for `dvc metrics diff`: {variant: {metric: value}}."""
    return {
        name: {
            "test_accuracy": v["test"]["accuracy"],
            "val_accuracy": v["val"]["accuracy"],
            "train_accuracy": v["train"]["accuracy"],
            "gap": v["gap"]["accuracy"],
        }
        for name, v in evaluation["variants"].items()
    }


# --------------------------------------------------------------------------- seeds


def load_seed_records(paths: Paths, variant: str) -> dict[str, Any] | None:
    """models/<variant>/seeds.json, or None for a model trained before train.seeds existed."""
    path = paths.seeds_json(variant)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise StageError(f"variant {variant!r}: unreadable {path}: {exc}") from None


def with_seed_columns(frame: pd.DataFrame, evaluation: Mapping[str, Any]) -> pd.DataFrame:
    """The comparison plus across-seed columns, when any variant trained more than one seed."""
    summaries = {n: v.get("seeds") for n, v in evaluation["variants"].items()}
    if not any(s and s["n_seeds"] > 1 for s in summaries.values()):
        return frame
    frame = frame.copy()

    def pick(name: str, *keys: str) -> Any:
        return _dig(summaries.get(name), keys)

    frame["n_seeds"] = [pick(n, "n_seeds") for n in frame["variant"]]
    for metric in ("val_accuracy", "gap"):
        for stat in ("mean", "ci95", "sd"):
            frame[f"seeds_{metric}_{stat}"] = [pick(n, metric, stat) for n in frame["variant"]]
    frame["verdict_agreement"] = [pick(n, "agreement") for n in frame["variant"]]
    return frame


def _dig(tree: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, Mapping) else None
    return tree


def seeds_markdown(evaluation: Mapping[str, Any]) -> str:
    """A section for comparison.md when any variant trained more than one seed, else ''."""
    rows = []
    for name, v in evaluation["variants"].items():
        s = v.get("seeds")
        if not s or s["n_seeds"] < 2:
            continue
        val, gap = s["val_accuracy"], s["gap"]
        rows.append(
            f"| {name} | {s['n_seeds']} | {val['mean']:.3f} ± {val['ci95']:.3f} | "
            f"{gap['mean']:+.3f} ± {gap['ci95']:.3f} | {s['agreement']} |"
        )
    if not rows:
        return ""
    return (
        "\n## Across training seeds\n\nMean ± 95% interval (Student t) over `train.seeds` "
        "seeds; the table above is seed 0.\n\n"
        "| variant | seeds | val acc | gap | verdicts |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def log_seeds_to_variant_runs(evaluation: Mapping[str, Any]) -> None:
    """Across-seed aggregate on each variant's run, and each extra seed's verdict on its own."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for v in evaluation["variants"].values():
        s = v.get("seeds")
        if not s or s["n_seeds"] < 2:
            continue
        run_id = v["mlflow_run_id"]
        for metric in ("val_accuracy", "gap"):
            client.log_metric(run_id, f"seeds_{metric}_mean", s[metric]["mean"])
            client.log_metric(run_id, f"seeds_{metric}_ci95", s[metric]["ci95"])
            client.log_metric(run_id, f"seeds_{metric}_sd", s[metric]["sd"])
        client.log_metric(run_id, "seeds_n", s["n_seeds"])
        client.set_tag(run_id, "verdict_agreement", s["agreement"])
        for seed in s["per_seed"]:
            if seed["index"] > 0 and seed["mlflow_run_id"]:
                client.set_tag(seed["mlflow_run_id"], "verdict", seed["verdict"])


# --------------------------------------------------------------------------- figures


def write_figures(
    figures_dir: Path,
    evaluation: Mapping[str, Any],
    histories: Mapping[str, pd.DataFrame],
    evaluations: Mapping[str, VariantEvaluation],
    probe_images: np.ndarray,
    probe_labels: Sequence[str] | None = None,
) -> None:
    """All PNGs into a fresh figures dir, swapped in whole (no stale variants)."""
    marks = {
        name: (v["best_epoch"], v["onset_epoch"]) for name, v in evaluation["variants"].items()
    }
    with staging_dir(figures_dir) as tmp:
        for name, history in histories.items():
            v = evaluation["variants"][name]
            plots.save_png(
                plots.learning_curves(
                    history, name, v["best_epoch"], v["onset_epoch"], v["verdict"]
                ),
                tmp / plots.curves_name(name),
            )
            plots.save_png(
                plots.confusion_figure(
                    np.asarray(v["confusion"]["test"]),
                    evaluation["classes"],
                    f"{name}: test confusion (acc {v['test']['accuracy']:.1%})",
                ),
                tmp / plots.confusion_name(name),
            )
            maps = evaluations[name].feature_maps
            if maps:
                plots.save_png(
                    plots.feature_maps_figure(probe_images, maps, name, probe_labels),
                    tmp / plots.feature_maps_name(name),
                )
        plots.save_png(plots.all_val_curves(histories, marks), tmp / plots.VAL_CURVES)
        plots.save_png(plots.gap_curves(histories), tmp / plots.GAP_CURVES)
        if evaluation.get("learning_curve"):
            plots.save_png(
                plots.learning_curve_figure(evaluation["learning_curve"]),
                tmp / plots.LEARNING_CURVE,
            )


# --------------------------------------------------------------------------- learning curve


def learning_curve_points(
    paths: Paths,
    cfg: Config,
    n_train: int,
    full_scores: Mapping[str, Mapping[str, Any]],
    full_run_id: str | None,
    data_version: str,
) -> list[lc.CurvePoint] | None:
    """The learning_curve stages' points plus the full-data point from this stage's scores.

    None when no fraction was trained (the stages have not run); StageError when
    only some were, or when one was trained on other data or another variant.
    """
    fractions = cfg.learning_curve.fractions
    found = [f for f in fractions if paths.fraction_result(f).exists()]
    if not found:
        log.info("no learning-curve outputs in %s; skipping it", paths.learning_curve_dir)
        return None
    points = []
    for fraction in fractions:
        stage = f"learning_curve@{fraction_key(fraction)}"
        result = read_stage_json(paths.fraction_result(fraction), stage)
        if result.get("variant") != cfg.learning_curve.variant or (
            result.get("data_version") != data_version
        ):
            raise StageError(
                f"{paths.fraction_result(fraction)} was trained for variant "
                f"{result.get('variant')!r} on data {result.get('data_version')}, not "
                f"{cfg.learning_curve.variant!r} on {data_version}; run dvc repro {stage}"
            )
        points.append(
            lc.CurvePoint(
                n_train=int(result["n_train"]),
                train_accuracy=float(result["train"]["accuracy"]),
                val_accuracy=float(result["val"]["accuracy"]),
                n_val=int(result["val"]["n"]),
                n_train_scored=int(result["train"]["n"]),
                mlflow_run_id=result.get("mlflow_run_id"),
            )
        )
    points.append(
        lc.CurvePoint(
            n_train=n_train,
            train_accuracy=float(full_scores["train"]["accuracy"]),
            val_accuracy=float(full_scores["val"]["accuracy"]),
            n_val=int(full_scores["val"]["n"]),
            n_train_scored=int(full_scores["train"]["n"]),
            mlflow_run_id=full_run_id,
        )
    )
    return points


def add_learning_curve(
    evaluation: dict[str, Any], points: Sequence[lc.CurvePoint] | None, variant: str
) -> None:
    """evaluation["learning_curve"], and "Get more training data" when the curve still rises."""
    if points is None:
        return
    try:
        curve = lc.analyse(points, variant)
    except ValueError as exc:
        raise StageError(f"learning curve of {variant!r}: {exc}") from None
    evaluation["learning_curve"] = curve
    if curve["still_rising"]:
        recs = evaluation["recommendations"]
        # Before the closing "Use <best>" item: a measured reason to collect data.
        recs.insert(
            max(len(recs) - 1, 0),
            {
                "action": "Get more training data",
                "reason": f"learning curve of {variant}: {curve['summary']}",
                "source": "learning_curve",
            },
        )
        for rank, rec in enumerate(recs, start=1):
            rec["rank"] = str(rank)


# --------------------------------------------------------------------------- MLflow


def variant_run_metrics(v: Mapping[str, Any]) -> dict[str, float]:
    metrics = {
        f"eval_{split}_{m}": float(v[split][m])
        for split in SPLITS
        for m in ("accuracy", "loss", "precision", "recall", "f1")
    }
    metrics["eval_gap_accuracy"] = float(v["gap"]["accuracy"])
    metrics["eval_gap_relative"] = float(v["gap"]["relative"])
    metrics["eval_gap_loss"] = float(v["gap"]["loss"])
    metrics["eval_max_generalization_loss"] = float(v["max_generalization_loss"])
    metrics["eval_diverged"] = float(bool(v["training"]["diverged"]))
    metrics["eval_val_loss_rise_share"] = _finite(v["training"]["rise_share"])
    if v["onset_epoch"] is not None:
        metrics["eval_onset_epoch"] = float(v["onset_epoch"])
    return metrics


def _finite(value: float, cap: float = 1e6) -> float:
    """MLflow metrics must be finite: an unbounded share (nothing gained) is capped."""
    return float(min(value, cap)) if math.isfinite(value) or value > 0 else 0.0


def require_variant_runs(paths: Paths, run_ids: Mapping[str, str | None]) -> None:
    """Raise StageError unless every variant's train run (run.json) is in the tracking backend.

    Called before any inference or write: a stale run.json or the wrong
    MLFLOW_TRACKING_URI must not leave reports/ half updated.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for name, run_id in run_ids.items():
        if not run_id:
            raise StageError(f"{paths.run_info(name)} has no run_id; retrain variant {name!r}")
        try:
            client.get_run(run_id)
        except MlflowException:
            raise StageError(
                f"variant {name!r}: MLflow run {run_id} from {paths.run_info(name)} is not in the "
                "tracking backend (MLFLOW_TRACKING_URI or ./mlflow.db); retrain the variant"
            ) from None


def log_to_variant_runs(paths: Paths, evaluation: Mapping[str, Any], figures_dir: Path) -> None:
    """Evaluation metrics, verdict tag, evidence and figures into each variant's train run."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    now = int(time.time() * 1000)
    for name, v in evaluation["variants"].items():
        run_id = v["mlflow_run_id"]
        metrics = [Metric(k, val, now, 0) for k, val in variant_run_metrics(v).items()]
        client.log_batch(run_id, metrics=metrics)
        client.set_tag(run_id, "verdict", v["verdict"])
        client.set_tag(run_id, "model_verdict", v["model_verdict"])
        # The run's description in the MLflow UI: the answer, then its evidence.
        client.set_tag(
            run_id,
            "mlflow.note.content",
            "\n".join([f"**{v['summary']}**", "", *(f"- {line}" for line in v["evidence"])]),
        )
        client.set_tag(run_id, "evaluated", "true")
        client.log_text(
            run_id,
            json.dumps(
                {
                    k: v[k]
                    for k in (
                        "verdict",
                        "model_verdict",
                        "summary",
                        "evidence",
                        "gap",
                        "onset_epoch",
                        "training",
                        "memorization",
                        "rules",
                    )
                },
                indent=2,
            ),
            "evaluation/diagnosis.json",
        )
        for fig in (
            plots.curves_name(name),
            plots.confusion_name(name),
            plots.feature_maps_name(name),
        ):
            if (figures_dir / fig).exists():
                client.log_artifact(run_id, str(figures_dir / fig), "evaluation")


def register_best(
    paths: Paths, cfg: Config, evaluation: Mapping[str, Any], validation: Mapping[str, Any]
) -> dict[str, Any]:
    """The best variant's model as a new registry version, alias challenger, with tags."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    best = evaluation["best_variant"]
    v = evaluation["variants"][best]
    uri = v.get("model_uri")
    if not uri:
        raise StageError(f"{paths.run_info(best)} has no model_uri; retrain variant {best!r}")
    name = cfg.registry.model_name
    tags = {
        "variant": best,
        "test_accuracy": f"{v['test']['accuracy']:.6f}",
        "val_accuracy": f"{v['val']['accuracy']:.6f}",
        "train_accuracy": f"{v['train']['accuracy']:.6f}",
        "gap_accuracy": f"{v['gap']['accuracy']:.6f}",
        "verdict": v["verdict"],
        "model_verdict": v["model_verdict"],
        "validation_success": "true" if validation.get("success") else "false",
        "data_version": tracking.data_version(paths),
        "repro_id": tracking.repro_id(paths, cfg),
    }
    try:
        version = mlflow.register_model(uri, name, tags=tags)
    except MlflowException as exc:
        raise StageError(f"could not register {uri} as {name!r}: {exc.message}") from None
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    log.info("registered %s version %s (%s) as %s", name, version.version, best, CHALLENGER)
    return {"model_name": name, "version": int(version.version), "alias": CHALLENGER, "tags": tags}


def log_evaluate_run(
    paths: Paths, cfg: Config, evaluation: dict[str, Any], validation: Mapping[str, Any]
) -> None:
    """The evaluate stage's own run: comparison, figures, and the registration."""
    import mlflow

    from pipeline import tracking

    with tracking.stage_run(
        paths, cfg, "evaluate", extra_tags={"best_variant": evaluation["best_variant"]}
    ) as run:
        metrics = {}
        for name, v in evaluation["variants"].items():
            metrics[f"{name}.val_accuracy"] = v["val"]["accuracy"]
            metrics[f"{name}.test_accuracy"] = v["test"]["accuracy"]
            metrics[f"{name}.gap_accuracy"] = v["gap"]["accuracy"]
        mlflow.log_metrics(metrics)
        for name, v in evaluation["variants"].items():
            mlflow.set_tag(f"verdict.{name}", v["verdict"])
        evaluation["registered"] = register_best(paths, cfg, evaluation, validation)
        evaluation["evaluate_run_id"] = run.info.run_id
        mlflow.log_artifact(str(paths.comparison_csv), "comparison")
        mlflow.log_artifact(str(paths.comparison_md), "comparison")
        mlflow.log_text(json.dumps(evaluation, indent=2, default=str), "evaluation.json")
        mlflow.log_artifacts(str(paths.figures_dir), "figures")


# --------------------------------------------------------------------------- stage


def run_evaluate(paths: Paths, cfg: Config) -> dict[str, Any]:
    """Everything the stage does; returns the evaluation payload it wrote."""
    from pipeline import tracking

    # MLflow first: nothing is computed or written unless the results can be logged.
    tracking.configure(paths)
    validation = load_validation(paths)
    artifacts = {name: load_variant_artifacts(paths, name) for name in cfg.variants}
    require_variant_runs(paths, {n: a.run_info.get("run_id") for n, a in artifacts.items()})
    data = load_prepared(paths.prepared_dir)
    probe_rows = probe_indices(data.y("val"), cfg.evaluate.feature_map_images)
    probe = np.asarray(data.x("val")[probe_rows])
    probe_labels = [data.classes[int(c)] for c in data.y("val")[probe_rows]]
    indices = evaluation_indices(data)
    evaluations = {}
    for name, art in artifacts.items():
        log.info("evaluating %s", name)
        evaluations[name] = evaluate_variant(
            art, data, indices, probe, cfg.evaluate.feature_map_layers
        )
    seed_records = {name: load_seed_records(paths, name) for name in artifacts}
    evaluation = build_evaluation(
        cfg,
        data.classes,
        artifacts,
        evaluations,
        validation,
        n_train=len(data.y("train")),
        chance={split: majority_share(data.y(split)) for split in SPLITS},
        seed_records=seed_records,
    )
    curve_variant = cfg.learning_curve.variant
    curve_points = learning_curve_points(
        paths,
        cfg,
        n_train=len(data.y("train")),
        full_scores=evaluations[curve_variant].scores,
        full_run_id=artifacts[curve_variant].run_info.get("run_id"),
        data_version=str(data.meta.get("manifest_hash", "none")),
    )
    add_learning_curve(evaluation, curve_points, curve_variant)
    histories = {name: art.history for name, art in artifacts.items()}

    log.info("writing figures to %s", paths.figures_dir)
    write_figures(paths.figures_dir, evaluation, histories, evaluations, probe, probe_labels)
    comparison = with_seed_columns(comparison_frame(evaluation), evaluation)
    write_text_atomic(paths.comparison_csv, comparison.to_csv(index=False))
    write_text_atomic(
        paths.comparison_md,
        comparison_markdown(comparison, evaluation["best_variant"], evaluation["reference_variant"])
        + seeds_markdown(evaluation),
    )
    curves = curves_frame(histories)
    write_text_atomic(paths.curves_csv, curves.to_csv(index=False))
    write_json_atomic(paths.evaluation_metrics, flat_metrics(evaluation))

    log.info("logging to MLflow and registering %s", evaluation["best_variant"])
    log_to_variant_runs(paths, evaluation, paths.figures_dir)
    log_seeds_to_variant_runs(evaluation)
    log_evaluate_run(paths, cfg, evaluation, validation)
    write_json_atomic(paths.evaluation_json, evaluation)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate", description=__doc__.split("\n")[0]
    )
    parser.parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    evaluation = run_evaluate(paths, cfg)
    verdicts = ", ".join(f"{n}={v['verdict']}" for n, v in evaluation["variants"].items())
    reg = evaluation["registered"]
    print(
        f"evaluated {len(evaluation['variants'])} variants ({verdicts}); best: "
        f"{evaluation['best_variant']} -> {reg['model_name']} v{reg['version']} @{reg['alias']}; "
        f"see {paths.evaluation_json} and {paths.comparison_md}"
    )
    return 0


if __name__ == "__main__":
    run_stage(main)
