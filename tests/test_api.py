"""pipeline.api: `from pipeline import diagnose` on histories trained outside the pipeline.

The recorded known-truth runs (tests/data/known_truth) are replayed through the
public API and through the pipeline's own path; both must give the same
diagnosis, and the truths the runs were built to show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import pipeline
from pipeline import api, assessment, diagnosis
from pipeline.config import ConfigError, load_config

from . import known_truth as kt

REPO = Path(__file__).resolve().parents[1]


def recorded_runs() -> list[tuple[str, str, Path]]:
    runs = []
    for path in kt.recordings():
        meta = json.loads((path / "case.json").read_text())
        runs += [(meta["case"], variant, path) for variant in meta["params"]["variants"]]
    return runs


def load_run(path: Path, variant: str) -> tuple[dict, dict, pd.DataFrame]:
    meta = json.loads((path / "case.json").read_text())
    record = json.loads((path / variant / "record.json").read_text())
    return meta, record, pd.read_csv(path / variant / "history.csv")


def api_arguments(meta: dict, record: dict) -> dict:
    scores, metrics = record["scores"], record["train_metrics"]
    return {
        "n_train": meta["n_train"],
        "n_val": scores["val"]["n"],
        "n_classes": len(meta["classes"]),
        "best_epoch": metrics["best_epoch"],
        "stopped_early": metrics["stopped_epoch"] > 0,
    }


@pytest.mark.parametrize(("case", "variant", "path"), recorded_runs(), ids=str)
def test_the_api_gives_the_pipelines_diagnosis_of_every_recorded_run(case, variant, path):
    meta, record, history = load_run(path, variant)
    scores = record["scores"]
    ours = pipeline.diagnose(
        history,
        train_scores=scores["train"],
        val_scores=scores["val"],
        name=variant,
        **api_arguments(meta, record),
    )
    # What a user knows: the whole train split scored (evaluate scores a sample of it),
    # and chance as 1 / n_classes (evaluate knows each split's most common class).
    train, val = scores["train"], scores["val"]
    theirs = diagnosis.diagnose(
        variant,
        history,
        diagnosis.SplitScores(train["accuracy"], train["loss"], meta["n_train"]),
        diagnosis.SplitScores(val["accuracy"], val["loss"], val["n"]),
        len(meta["classes"]),
        load_config(REPO / "params.yaml").evaluate,
        run=assessment.run_facts(history, record["train_metrics"], meta["n_train"]),
    )
    # Outside the pipeline the model judged is the one the user kept, not model.keras.
    theirs = api.kept_model_words(theirs, [])
    for field in ("label", "verdict", "grade", "summary", "onset_epoch", "best_epoch", "gap"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.evidence == theirs.evidence
    assert ours.training == theirs.training


@pytest.mark.parametrize("path", kt.recordings("shuffled_labels"), ids=lambda p: p.name)
def test_shuffled_labels_read_as_overfitting_from_the_history_alone(path):
    """Labels carry no signal, so any train accuracy above chance is memorization: the
    curves alone (what a user's own fit has) must say so."""
    meta, record, history = load_run(path, "baseline")
    result = pipeline.diagnose(history, **api_arguments(meta, record))
    assert result.verdict == diagnosis.OVERFITTING
    assert result.onset_epoch is not None


@pytest.mark.parametrize("path", kt.recordings("fashion_300_per_class"), ids=lambda p: p.name)
def test_a_diverging_run_has_its_onset_from_the_curves_alone(path):
    """30 epochs on 300 images per class without early stopping diverge (the case's
    truth); dropout on the same budget does not."""
    meta, record, history = load_run(path, "baseline")
    result = pipeline.diagnose(history, **api_arguments(meta, record))
    assert result.training["diverged"] and result.onset_epoch is not None
    meta, record, history = load_run(path, "dropout")
    assert not pipeline.diagnose(history, **api_arguments(meta, record)).training["diverged"]


def test_history_scores_are_flagged_as_the_historys():
    meta, record, history = load_run(kt.recordings("little_data")[0], "baseline")
    result = pipeline.diagnose(history, **api_arguments(meta, record))
    assert "train_scores=model.evaluate" in result.evidence[-1]
    scored = pipeline.diagnose(
        history, train_scores=record["scores"]["train"], val_scores=record["scores"]["val"],
        **api_arguments(meta, record),
    )  # fmt: skip
    assert not any("train_scores=" in line for line in scored.evidence)


def keras_style(frame: pd.DataFrame) -> dict[str, list[float]]:
    """A history as Keras 2 named it (acc, val_acc), with the learning rate as `lr`."""
    return {
        "loss": list(frame["loss"]),
        "acc": list(frame["accuracy"]),
        "val_loss": list(frame["val_loss"]),
        "val_acc": list(frame["val_accuracy"]),
        "lr": list(frame["learning_rate"]),
    }


def test_every_history_form_gives_one_diagnosis(tmp_path):
    meta, record, history = load_run(kt.recordings("fashion_300_per_class")[0], "baseline")
    kwargs = api_arguments(meta, record)
    expected = pipeline.diagnose(history, **kwargs)
    csv_logger = history.assign(epoch=history["epoch"] - 1)  # CSVLogger counts from 0
    mlflow_names = history.rename(columns={c: f"curves/{c}" for c in history.columns[1:]})
    rows = history.to_dict("records")
    for form in (keras_style(history), csv_logger, mlflow_names, rows):
        got = pipeline.diagnose(form, **kwargs)
        assert (got.label, got.onset_epoch, got.evidence) == (
            expected.label, expected.onset_epoch, expected.evidence,
        )  # fmt: skip


def test_evaluate_results_are_accepted_as_list_or_dict():
    meta, record, history = load_run(kt.recordings("little_data")[0], "baseline")
    train, val = record["scores"]["train"], record["scores"]["val"]
    kwargs = api_arguments(meta, record)
    as_dict = pipeline.diagnose(history, train_scores=train, val_scores=val, **kwargs)
    as_list = pipeline.diagnose(
        history,
        train_scores=[train["loss"], train["accuracy"]],  # model.evaluate's order
        val_scores=[val["loss"], val["accuracy"]],
        **kwargs,
    )
    assert as_list.gap == as_dict.gap


def test_repr_is_the_answer():
    meta, record, history = load_run(kt.recordings("little_data")[0], "baseline")
    result = pipeline.diagnose(history, name="my_cnn", **api_arguments(meta, record))
    assert (
        repr(result)
        == f"<Diagnosis {result.label}: {result.summary}>"
        == f"<Diagnosis {result.answer}>"
    )
    assert "my_cnn" in result.summary
    assert json.loads(json.dumps(result.to_dict()))["verdict"] == result.verdict


def test_restore_best_weights_keeps_the_lowest_val_loss_epoch():
    meta, record, history = load_run(kt.recordings("fashion_300_per_class")[0], "baseline")
    kwargs = {k: v for k, v in api_arguments(meta, record).items() if k != "best_epoch"}
    last = pipeline.diagnose(history, **kwargs)
    best = pipeline.diagnose(history, restore_best_weights=True, **kwargs)
    assert last.best_epoch == int(history["epoch"].max())
    assert best.best_epoch == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    # The diverged run's last epoch is further overfit than its best one.
    assert last.gap["accuracy"] > best.gap["accuracy"]


BASE = {"n_train": 100, "n_val": 50, "n_classes": 10}
CURVES = {
    "loss": [1.0, 0.5],
    "accuracy": [0.5, 0.8],
    "val_loss": [1.1, 0.9],
    "val_accuracy": [0.4, 0.6],
}


@pytest.mark.parametrize(
    ("history", "kwargs", "says"),
    [
        ({"loss": [1.0], "accuracy": [0.5]}, BASE, "validation_data="),
        ({"loss": [1.0], "val_loss": [1.1]}, BASE, "metrics=['accuracy']"),
        ({k: [] for k in CURVES}, BASE, "empty"),
        (CURVES, {**BASE, "n_val": 0}, "n_val must be the number of images"),
        (CURVES, {**BASE, "n_train": 12.5}, "n_train must be"),
        (CURVES, {"n_train": 100, "n_val": 50}, "n_classes is needed"),
        (CURVES, {**BASE, "best_epoch": 7}, "best_epoch 7 is not in the history"),
        (CURVES, {**BASE, "train_scores": [0.9]}, "train_scores must be"),
        (CURVES, {**BASE, "val_scores": {"accuracy": 0.5}}, "val_scores must be"),
    ],
    ids=["no-val", "no-accuracy", "empty", "n_val-0", "n_train-float", "no-classes",
         "best-epoch", "train-scores", "val-scores"],
)  # fmt: skip
def test_a_bad_argument_says_what_to_pass(history, kwargs, says):
    with pytest.raises(ValueError, match=None) as err:
        pipeline.diagnose(history, **kwargs)
    assert says in str(err.value)


def test_not_a_history_is_a_type_error():
    with pytest.raises(TypeError, match="Keras History"):
        pipeline.diagnose(42, **BASE)


def test_a_csv_path_is_read(tmp_path):
    meta, record, history = load_run(kt.recordings("little_data")[0], "baseline")
    history.to_csv(tmp_path / "log.csv", index=False)
    kwargs = api_arguments(meta, record)
    assert pipeline.diagnose(tmp_path / "log.csv", **kwargs).evidence == (
        pipeline.diagnose(history, **kwargs).evidence
    )
    with pytest.raises(ValueError, match="missing.csv: cannot read it as a CSV history"):
        pipeline.diagnose(tmp_path / "missing.csv", **kwargs)


def test_thresholds_come_from_the_shipped_params_or_a_given_file(tmp_path):
    shipped = api.evaluate_config()
    assert shipped == load_config(REPO / "params.yaml").evaluate
    strict = tmp_path / "params.yaml"
    strict.write_text((REPO / "params.yaml").read_text().replace("noise_z: 2.0", "noise_z: 9.0", 1))
    assert api.evaluate_config(strict).noise_z == 9.0
    broken = tmp_path / "broken.yaml"
    broken.write_text("evaluate:\n  noise_z: -1\n")
    with pytest.raises(ConfigError, match=r"evaluate.noise_z = -1"):
        api.evaluate_config(broken)
    with pytest.raises(ConfigError, match="no `evaluate` section"):
        (tmp_path / "empty.yaml").write_text("train: {}\n")
        api.evaluate_config(tmp_path / "empty.yaml")


def test_the_package_ships_the_projects_params():
    """pipeline/params.yaml is the project's own (a link in the source tree, a copy in a
    wheel): the API's thresholds are declared once."""
    assert api.DEFAULT_PARAMS.read_text() == (REPO / "params.yaml").read_text()


def test_importing_pipeline_stays_light():
    """Stages import the package; the public API must not load pandas-heavy modules
    until it is used."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline\n"
        "assert 'pipeline.api' not in sys.modules\n"
        "pipeline.diagnose\n"
        "assert 'pipeline.api' in sys.modules\n"
        "heavy = {'tensorflow', 'keras', 'mlflow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.parametrize(
    ("history", "kwargs", "says"),
    [
        ({**CURVES, "val_loss": [1.1]}, BASE, "differ in length (loss 2, accuracy 2, val_loss 1"),
        ({**CURVES, "accuracy": [50.0, 80.0]}, BASE, "between 0 and 1, got 50 at row 1 (percent?)"),
        ({**CURVES, "loss": [1.0, float("nan")]}, BASE, "NaN or infinite values at epoch(s) [2]"),
        ({**CURVES, "val_loss": [1.1, "abc"]}, BASE, "val_loss at row 2 is 'abc', not a number"),
        (CURVES, {**BASE, "n_classes": 10.5}, "n_classes must be the number of classes"),
        (CURVES, {**BASE, "train_scores": [0.1, 82.0]}, "train_scores: accuracy must be a"),
    ],
    ids=["ragged", "percent", "nan", "text", "classes-float", "scores-percent"],
)  # fmt: skip
def test_bad_values_say_where_and_what(history, kwargs, says):
    with pytest.raises(ValueError) as err:
        pipeline.diagnose(history, **kwargs)
    assert says in str(err.value)


def test_an_early_stopped_run_judged_at_its_last_epoch_says_how_to_judge_the_restored_one():
    meta, record, history = load_run(kt.recordings("little_data")[0], "baseline")
    kwargs = {k: v for k, v in api_arguments(meta, record).items() if k != "best_epoch"}
    result = pipeline.diagnose(history, **kwargs)
    assert any("restore_best_weights=True" in line for line in result.evidence)
    restored = pipeline.diagnose(history, restore_best_weights=True, **kwargs)
    assert not any("restore_best_weights=True" in line for line in restored.evidence)


def test_the_api_speaks_of_the_kept_model_not_a_saved_one():
    meta, record, history = load_run(kt.recordings("fashion_300_per_class")[0], "baseline")
    result = pipeline.diagnose(history, **api_arguments(meta, record))
    text = " ".join([result.summary, *result.evidence, result.training["summary"]])
    assert "saved model" not in text and "kept model" in text
