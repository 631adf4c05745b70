"""pipeline.evaluate: scoring, outputs, MLflow, registry, and known-truth verdicts.

The known-truth tests train real Keras models on tiny real data (scikit-learn
digits) and let the whole evaluate stage diagnose them:

- a large model on 21 training images for many epochs -> overfitting;
- a tiny model stopped after one epoch -> underfitting;
- a reasonable model on the full digits training split -> good_fit.

The models are saved exactly as the train stage's contract says
(models/<variant>/model.keras, history.csv, metrics.json, run.json with a
model logged to MLflow through the Keras 3 flavour, mlflow.keras).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from pipeline import evaluate as ev
from pipeline import tracking
from pipeline.cli import StageError
from pipeline.config import load_config
from pipeline.diagnosis import GOOD_FIT, OVERFITTING, UNDERFITTING

from .conftest import REPO, digits_arrays, make_prepared, small_params

VALIDATION_OK = {
    "success": True,
    "checks": [
        {"name": "label_set", "success": True, "severity": "error", "observed": {}, "examples": []},
        {
            "name": "class_balance",
            "success": True,
            "severity": "warning",
            "observed": {},
            "examples": [],
        },
    ],
    "warnings": [],
    "errors": [],
}


def write_validation(project, payload=VALIDATION_OK) -> None:
    project.paths.validation_json.parent.mkdir(parents=True, exist_ok=True)
    project.paths.validation_json.write_text(json.dumps(payload))


# --------------------------------------------------------------------------- training fixture


def train_variant(
    project,
    cfg,
    variant: str,
    epochs: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    patience: int | None = None,
) -> None:
    """Train one variant like the train stage would and save its contract files."""
    import keras
    import mlflow

    from pipeline.models import build_model
    from pipeline.prepared import load_prepared

    data = load_prepared(project.paths.prepared_dir)
    x_train = np.asarray(data.x("train"), dtype=np.float32)
    x_val = np.asarray(data.x("val"), dtype=np.float32)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.variant(variant).model, data.image_shape, len(data.classes), seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = []
    if patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
        )
    start = time.perf_counter()
    fit = model.fit(
        x_train,
        data.y("train"),
        validation_data=(x_val, data.y("val")),
        epochs=epochs,
        batch_size=batch_size,
        validation_batch_size=512,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    hist = pd.DataFrame(
        {k: fit.history[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    )
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
    hist["learning_rate"] = learning_rate
    hist["epoch_seconds"] = seconds / len(hist)
    best = int(hist["val_loss"].idxmin()) + 1 if patience else len(hist)

    out = project.paths.variant_dir(variant)
    out.mkdir(parents=True, exist_ok=True)
    model.save(project.paths.model_file(variant))
    hist.to_csv(project.paths.history_csv(variant), index=False)
    with tracking.stage_run(project.paths, cfg, "train", variant=variant) as run:
        for row in hist.itertuples(index=False):
            mlflow.log_metrics(
                {
                    "loss": row.loss,
                    "val_loss": row.val_loss,
                    "accuracy": row.accuracy,
                    "val_accuracy": row.val_accuracy,
                },
                step=int(row.epoch),
            )
        info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
    project.paths.train_metrics(variant).write_text(
        json.dumps(
            {
                "variant": variant,
                "best_epoch": best,
                "stopped_epoch": len(hist),
                "epochs_run": len(hist),
                "train_seconds": seconds,
                "images_per_second": len(x_train) * len(hist) / seconds,
                "best_val_loss": float(hist["val_loss"].min()),
                "best_val_accuracy": float(hist.loc[best - 1, "val_accuracy"]),
                "params": int(model.count_params()),
            }
        )
    )
    project.paths.run_info(variant).write_text(
        json.dumps(
            {
                "run_id": run.info.run_id,
                "experiment_id": run.info.experiment_id,
                "model_uri": info.model_uri,
                "variant": variant,
            }
        )
    )
    keras.backend.clear_session()


def digits_project(project, variants: dict, train_size: float = 0.7):
    """Prepared real digits (8x8) and params with `variants`; returns the Config."""
    x, y = digits_arrays()
    if train_size < 0.7:
        # A tiny training split with normal-sized val/test splits.
        make_prepared(
            project.paths.prepared_dir,
            x,
            y,
            [str(c) for c in range(10)],
            fractions=(train_size, 0.5 * (1 - train_size)),
        )
    else:
        make_prepared(project.paths.prepared_dir, x, y, [str(c) for c in range(10)])
    cfg = project.write_params(small_params(data={"image_size": [8, 8]}, variants=variants))
    write_validation(project)
    return cfg


# --------------------------------------------------------------------------- known truth


@pytest.mark.slow
def test_known_truth_large_model_on_tiny_data_overfits(project):
    cfg = digits_project(
        project,
        {"large": {"model": {"conv_filters": [32, 64], "dense_units": 256}}},
        train_size=0.012,  # 21 images, about 2 per class
    )
    # 30 epochs: val loss bottoms out near epoch 14; the smoothed GL rule needs the rise
    # to last more than a smoothing window (at 20 epochs max GL was 9.7 < 10).
    train_variant(project, cfg, "large", epochs=30, batch_size=8, learning_rate=3e-3)
    evaluation = ev.run_evaluate(project.paths, load_config(project.paths.params))
    large = evaluation["variants"]["large"]
    assert large["verdict"] == OVERFITTING, large["evidence"]
    assert large["train"]["accuracy"] == 1.0
    assert large["gap"]["relative"] >= cfg.evaluate.overfit_relative_gap
    assert any("relative gap" in e for e in large["evidence"])
    # Val loss turned up while train loss kept falling: the GL rule and an onset.
    assert large["rules"]["generalization_loss"], large["evidence"]
    assert large["onset_epoch"] is not None
    # The only variant is best by the fallback rule, and the result says why.
    assert evaluation["best_variant"] == "large"
    assert "no variant was diagnosed good_fit" in evaluation["best_variant_reason"]


@pytest.mark.slow
def test_known_truth_good_fit_and_underfit_end_to_end(project):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = digits_project(
        project,
        {
            "baseline": {"model": {"conv_filters": [16], "dense_units": 64}},
            "tiny": {"model": {"conv_filters": [1], "dense_units": 2}},
        },
    )
    train_variant(project, cfg, "baseline", epochs=12, batch_size=32, patience=3)
    train_variant(project, cfg, "tiny", epochs=1, batch_size=64, learning_rate=1e-4)

    # A champion from an earlier run that evaluate must leave alone.
    tracking.configure(project.paths)
    name = cfg.registry.model_name
    tiny_uri = json.loads(project.paths.run_info("tiny").read_text())["model_uri"]
    champion = mlflow.register_model(tiny_uri, name)
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", champion.version)

    assert ev.main([]) == 0
    paths = project.paths
    evaluation = json.loads(paths.evaluation_json.read_text())

    base, tiny = evaluation["variants"]["baseline"], evaluation["variants"]["tiny"]
    assert base["verdict"] == GOOD_FIT, base["evidence"]
    assert tiny["verdict"] == UNDERFITTING, tiny["evidence"]
    assert base["val"]["accuracy"] > 0.85
    assert evaluation["best_variant"] == "baseline"

    # The evaluation.json contract.
    for split in ("train", "val", "test"):
        assert set(base[split]) >= {"accuracy", "loss", "precision", "recall", "f1"}
    for key in (
        "gap",
        "best_epoch",
        "epochs_run",
        "onset_epoch",
        "verdict",
        "evidence",
        "mlflow_run_id",
        "per_class",
        "confusion",
    ):
        assert key in base
    assert len(base["per_class"]) == 10 and "accuracy_gap" in base["per_class"][0]
    assert base["training_behaviour"] == {"dropout": False, "augmentation": False, "l2": False}
    assert np.asarray(base["confusion"]["test"]).sum() == base["test"]["n"]
    assert evaluation["effects"]["tiny"]["delta_val_accuracy"] < 0
    assert any(
        "`tiny`" in r["action"] and "capacity" in r["action"] for r in evaluation["recommendations"]
    )

    # Comparison, curves and DVC metrics.
    comparison = pd.read_csv(paths.comparison_csv)
    assert comparison["variant"].tolist() == ["baseline", "tiny"]
    assert comparison.set_index("variant").loc["tiny", "verdict"] == UNDERFITTING
    assert "| tiny | underfitting |" in paths.comparison_md.read_text()
    curves = pd.read_csv(paths.curves_csv)
    assert list(curves.columns) == ev.CURVES_COLUMNS
    assert len(curves) == base["epochs_run"] + 1
    metrics = json.loads(paths.evaluation_metrics.read_text())
    assert set(metrics["baseline"]) >= {"test_accuracy", "val_accuracy", "gap"}

    figures = {p.name for p in paths.figures_dir.iterdir()}
    assert {
        "curves_baseline.png",
        "curves_tiny.png",
        "val_curves_all.png",
        "gap_all.png",
        "confusion_baseline.png",
        "feature_maps_baseline.png",
    } <= figures

    # MLflow: each variant's own run got the verdict, metrics and evidence.
    for variant, verdict in (("baseline", GOOD_FIT), ("tiny", UNDERFITTING)):
        run = client.get_run(evaluation["variants"][variant]["mlflow_run_id"])
        assert run.data.tags["verdict"] == verdict
        assert run.data.tags["stage"] == "train"  # not overwritten by evaluate
        assert "eval_val_accuracy" in run.data.metrics
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/diagnosis.json" in arts
    eval_run = client.get_run(evaluation["evaluate_run_id"])
    assert eval_run.data.tags["stage"] == "evaluate"
    assert eval_run.data.tags["best_variant"] == "baseline"

    # Registry: a new version with alias challenger and the tags; champion untouched.
    reg = evaluation["registered"]
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert int(challenger.version) == reg["version"] == int(champion.version) + 1
    assert challenger.tags["variant"] == "baseline"
    assert challenger.tags["validation_success"] == "true"
    assert set(challenger.tags) >= {
        "test_accuracy",
        "val_accuracy",
        "train_accuracy",
        "gap_accuracy",
        "verdict",
        "data_version",
        "repro_id",
    }
    assert client.get_model_version_by_alias(name, "champion").version == champion.version


# --------------------------------------------------------------------------- negative paths


def test_variant_without_trained_model_is_named(digits_prepared):
    write_validation(digits_prepared)
    cfg = load_config(digits_prepared.paths.params)
    with pytest.raises(StageError, match=r"variant 'baseline' has no trained model.*model\.keras"):
        ev.run_evaluate(digits_prepared.paths, cfg)


def test_missing_validation_json_is_a_stage_error(digits_prepared):
    cfg = load_config(digits_prepared.paths.params)
    with pytest.raises(StageError, match=r"validation\.json is missing"):
        ev.run_evaluate(digits_prepared.paths, cfg)


def test_unknown_mlflow_run_is_a_stage_error(project):
    tracking.configure(project.paths)
    with pytest.raises(StageError, match="not in the tracking backend"):
        ev.require_variant_runs(project.paths, {"baseline": "0" * 32})
    with pytest.raises(StageError, match="has no run_id"):
        ev.require_variant_runs(project.paths, {"baseline": None})


def fake_trained_variants(project, run_id: str) -> None:
    """Contract files for every params variant, with a model that must never be loaded."""
    paths = project.paths
    history = "epoch,loss,accuracy,val_loss,val_accuracy\n1,1.0,0.5,1.1,0.4\n2,0.8,0.6,0.9,0.5\n"
    for variant in load_config(paths.params).variants:
        paths.variant_dir(variant).mkdir(parents=True)
        paths.model_file(variant).write_bytes(b"never loaded: the stage stops before inference")
        paths.history_csv(variant).write_text(history)
        paths.train_metrics(variant).write_text(json.dumps({"best_epoch": 2}))
        paths.run_info(variant).write_text(json.dumps({"run_id": run_id, "model_uri": "x"}))


def report_files(project) -> set[str]:
    reports = project.paths.reports_dir
    return {str(p.relative_to(reports)) for p in reports.rglob("*")}


def test_unreachable_mlflow_exits_2_before_any_write(digits_prepared, monkeypatch, capsys):
    from pipeline.cli import EXIT_USER_ERROR, run_stage

    write_validation(digits_prepared)
    fake_trained_variants(digits_prepared, "0" * 32)
    before = report_files(digits_prepared)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        run_stage(ev.main, [])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert time.perf_counter() - start < 15
    assert "http://127.0.0.1:9" in capsys.readouterr().err
    assert report_files(digits_prepared) == before == {"validation.json"}


def test_stale_run_json_stops_evaluate_before_any_write(digits_prepared):
    write_validation(digits_prepared)
    fake_trained_variants(digits_prepared, "f" * 32)
    with pytest.raises(StageError, match=r"variant 'baseline': MLflow run f{32} .*not in the"):
        ev.run_evaluate(digits_prepared.paths, load_config(digits_prepared.paths.params))
    assert report_files(digits_prepared) == {"validation.json"}


# --------------------------------------------------------------------------- pure pieces


def test_split_scores_on_known_probabilities():
    y = np.array([0, 0, 1, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    s = ev.split_scores(y, proba, 3)
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.8, 0.8])))
    assert s["_confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert s["_per_class"]["recall"] == [0.5, 1.0, 1.0]
    assert s["recall"] == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="shape"):
        ev.split_scores(y, proba[:, :2], 3)


def test_predict_proba_batches_memmap_as_float32(tmp_path):
    x = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    seen = []

    class Model:
        def predict_on_batch(self, batch):
            seen.append((batch.dtype, len(batch)))
            return np.tile([0.25, 0.75], (len(batch), 1))

    proba = ev.predict_proba(Model(), mm, batch_size=4)
    assert proba.shape == (10, 2)
    assert seen == [(np.float32, 4), (np.float32, 4), (np.float32, 2)]
    with pytest.raises(StageError, match="empty"):
        ev.predict_proba(Model(), mm[:0])


def test_per_class_gap_is_train_minus_val_recall():
    def scores(recalls):
        return {
            "_per_class": {
                "precision": recalls,
                "recall": recalls,
                "f1": recalls,
                "support": [5, 5],
            }
        }

    rows = ev.per_class_table(
        {"train": scores([1.0, 0.9]), "val": scores([0.6, 0.9]), "test": scores([0.5, 0.8])},
        ["cat", "dog"],
    )
    assert rows[0]["class"] == "cat" and rows[0]["accuracy_gap"] == pytest.approx(0.4)
    assert rows[1]["accuracy_gap"] == pytest.approx(0.0)


def test_curves_frame_is_long_format():
    h = pd.DataFrame(
        {
            "epoch": [1, 2],
            "loss": [1.0, 0.5],
            "val_loss": [1.1, 0.7],
            "accuracy": [0.5, 0.9],
            "val_accuracy": [0.4, 0.7],
        }
    )
    frame = ev.curves_frame({"a": h, "b": h})
    assert list(frame.columns) == ev.CURVES_COLUMNS
    assert frame["variant"].tolist() == ["a", "a", "b", "b"]
    assert frame["gap"].tolist() == pytest.approx([0.1, 0.2, 0.1, 0.2])


def test_dvc_renders_the_variants_template(tmp_path):
    """`dvc plots show` fills .dvc/plots/variants.json and colours by variant."""
    template = REPO / ".dvc" / "plots" / "variants.json"
    dvc = shutil.which("dvc", path=str(REPO / ".venv" / "bin")) or shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc not installed")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".dvc" / "plots").mkdir()
    shutil.copy(template, tmp_path / ".dvc" / "plots" / "variants.json")
    h = pd.DataFrame(
        {
            "epoch": [1, 2],
            "loss": [1.0, 0.5],
            "val_loss": [1.1, 0.7],
            "accuracy": [0.5, 0.9],
            "val_accuracy": [0.4, 0.7],
        }
    )
    (tmp_path / "reports").mkdir()
    ev.curves_frame({"a": h, "b": h}).to_csv(tmp_path / "reports" / "curves.csv", index=False)
    (tmp_path / "dvc.yaml").write_text(
        "plots:\n  - gap_all_variants:\n      template: variants\n      x: epoch\n"
        "      y:\n        reports/curves.csv: gap\n"
    )
    out = subprocess.run(
        [dvc, "plots", "show", "--json"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    spec = json.loads(out)["data"]["gap_all_variants"][0]["content"]
    assert spec["encoding"]["color"]["field"] == "variant"
    assert spec["encoding"]["y"]["field"] == "gap"
    assert {row["variant"] for row in spec["data"]["values"]} == {"a", "b"}


def test_probe_images_are_one_per_class_and_fixed():
    labels = np.repeat(np.arange(4), 5)  # sorted by class, like the prepared val split
    idx = ev.probe_indices(labels, 3)
    assert labels[idx].tolist() == [0, 1, 2]
    assert np.array_equal(idx, ev.probe_indices(labels, 3))
    # More images than classes: cycle over the classes, never repeat a row.
    more = ev.probe_indices(labels, 6)
    assert labels[more].tolist() == [0, 1, 2, 3, 0, 1] and len(set(more)) == 6
    assert len(ev.probe_indices(labels[:2], 5)) == 2  # capped at the split's size
    assert len(ev.probe_indices(labels, 0)) == 0
    assert len(ev.probe_indices(np.zeros(0, dtype=int), 3)) == 0


def test_training_behaviour_reads_the_model_layers():
    import keras

    from pipeline.config import parse_config
    from pipeline.models import build_model

    cfg = parse_config(
        small_params(
            variants={
                "plain": {},
                "all": {"model": {"dropout": 0.5, "l2": 0.001, "augmentation": {"enabled": True}}},
            }
        )
    )
    plain = build_model(cfg.variant("plain").model, (8, 8, 1), 3, seed=0)
    assert ev.training_behaviour(plain) == {"dropout": False, "augmentation": False, "l2": False}
    full = build_model(cfg.variant("all").model, (8, 8, 1), 3, seed=0)
    assert ev.training_behaviour(full) == {"dropout": True, "augmentation": True, "l2": True}
    keras.backend.clear_session()


def test_loss_axes_are_log_scale_and_epochs_are_marked():
    import matplotlib.pyplot as plt

    from pipeline import plots

    h = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "loss": [1.0, 0.3, 0.05, 0.01],
            "val_loss": [1.1, 0.4, 0.3, 0.5],
            "accuracy": [0.5, 0.8, 0.95, 0.99],
            "val_accuracy": [0.4, 0.7, 0.75, 0.72],
        }
    )
    fig = plots.learning_curves(h, "a", best_epoch=3, onset_epoch=4)
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_acc.get_yscale() == "linear"
    labels = ax_loss.get_legend_handles_labels()[1]
    assert "best epoch 3" in labels and "onset 4" in labels
    plt.close(fig)

    fig = plots.all_val_curves({"a": h, "b": h}, {"a": (3, 4), "b": (2, None)})
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_yscale() == "log"
    # Per variant: the curve, a best-epoch point, and (for `a` only) an onset point.
    points = [ln for ln in ax_loss.lines if len(ln.get_xdata()) == 1]
    assert sorted((float(ln.get_xdata()[0]), ln.get_marker()) for ln in points) == [
        (2.0, "o"),
        (3.0, "o"),
        (4.0, "X"),
    ]
    assert {"best epoch", "overfitting onset"} <= set(ax_acc.get_legend_handles_labels()[1])
    plt.close(fig)
    # Without marks: only the curves, on the same log axis.
    fig = plots.all_val_curves({"a": h})
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 1
    plt.close(fig)


def test_train_is_scored_on_a_fixed_sample_as_large_as_val(digits_prepared):
    from pipeline.prepared import load_prepared

    data = load_prepared(digits_prepared.paths.prepared_dir)
    idx = ev.evaluation_indices(data)
    cap = max(len(data.y("val")), len(data.y("test")))
    assert len(idx["train"]) == cap < len(data.y("train"))
    assert np.all(np.diff(idx["train"]) > 0)  # sorted, no repeats
    assert np.array_equal(idx["train"], ev.evaluation_indices(data)["train"])
    assert np.array_equal(idx["val"], np.arange(len(data.y("val"))))


def test_empty_history_is_a_stage_error_naming_the_variant(project):
    paths = project.paths
    paths.variant_dir("baseline").mkdir(parents=True)
    paths.model_file("baseline").write_bytes(b"not used")
    paths.history_csv("baseline").write_text("epoch,loss,accuracy,val_loss,val_accuracy\n")
    paths.train_metrics("baseline").write_text("{}")
    paths.run_info("baseline").write_text("{}")
    with pytest.raises(StageError, match="variant 'baseline': unreadable.*history is empty"):
        ev.load_variant_artifacts(paths, "baseline")


# --------------------------------------------------------------------------- learning curve


def _fraction_result(paths, fraction: float, n_train: int, val_acc: float, **over) -> None:
    result = {
        "variant": "baseline",
        "fraction": fraction,
        "n_train": n_train,
        "data_version": "v1",
        "train": {"accuracy": 1.0, "loss": 0.01, "n": n_train},
        "val": {"accuracy": val_acc, "loss": 0.2, "n": 270},
        "mlflow_run_id": f"run-{fraction}",
        **over,
    }
    ev.write_json_atomic(paths.fraction_result(fraction), result)


def test_learning_curve_adds_the_full_data_point_and_recommends_more_data(project):
    cfg = load_config(project.paths.params)  # fractions 0.25, 0.5 of variant baseline
    full = {"train": {"accuracy": 0.99, "n": 270}, "val": {"accuracy": 0.97, "n": 270}}

    def points():
        return ev.learning_curve_points(project.paths, cfg, 1200, full, "run-full", "v1")

    assert points() is None  # the stages have not run: no curve, no error
    _fraction_result(project.paths, 0.25, 300, 0.90)
    with pytest.raises(StageError, match=r"learning_curve@0\.5"):
        points()  # only some fractions: stale, rerun
    _fraction_result(project.paths, 0.5, 600, 0.93)
    got = points()
    assert [(p.n_train, p.val_accuracy, p.mlflow_run_id) for p in got] == [
        (300, 0.90, "run-0.25"),
        (600, 0.93, "run-0.5"),
        (1200, 0.97, "run-full"),
    ]
    assert got[-1].n_train_scored == 270
    evaluation = {"recommendations": [{"action": "x", "reason": "y", "source": "diagnosis"}]}
    ev.add_learning_curve(evaluation, got, "baseline")
    assert evaluation["learning_curve"]["still_rising"]
    assert evaluation["recommendations"][0]["action"] == "x"  # appended, not reordered
    assert evaluation["recommendations"][-1]["source"] == "learning_curve"
    # A flat curve adds the block but no advice.
    flat = {"train": {"accuracy": 1.0, "n": 270}, "val": {"accuracy": 0.931, "n": 270}}
    evaluation = {"recommendations": []}
    ev.add_learning_curve(
        evaluation,
        ev.learning_curve_points(project.paths, cfg, 1200, flat, "run-full", "v1"),
        "baseline",
    )
    assert not evaluation["learning_curve"]["still_rising"]
    assert evaluation["recommendations"] == []
    # Outputs from other data are refused, naming the stage to rerun.
    _fraction_result(project.paths, 0.5, 600, 0.93, data_version="old")
    with pytest.raises(StageError, match=r"run dvc repro learning_curve@0\.5"):
        points()
