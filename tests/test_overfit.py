"""The `overfit` console command: a history file, an MLflow run (this project's naming
or autolog's), the write-back, the latest report, and one-line errors.

The runs are real MLflow runs in a sqlite store in tmp_path; the slow test logs
one with `mlflow.keras.autolog` around a real `model.fit`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import diagnosis
from pipeline.cli import run_stage
from pipeline.overfit import main
from pipeline.report_context import code_spans

from . import known_truth as kt

OVERFIT = str(Path(sys.executable).parent / "overfit")  # the [project.scripts] entry point


def recorded(case: str = "fashion_300_per_class", variant: str = "baseline"):
    path = kt.recordings(case)[0]
    meta = json.loads((path / "case.json").read_text())
    record = json.loads((path / variant / "record.json").read_text())
    return meta, record, pd.read_csv(path / variant / "history.csv")


def size_flags(meta: dict, record: dict) -> list[str]:
    """--n-train/--n-val/--n-classes of a recorded run."""
    n_train, n_val = meta["n_train"], record["scores"]["val"]["n"]
    return ["--n-train", str(n_train), "--n-val", str(n_val), "--n-classes", "10"]


def overfit_console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console command, as a user runs it."""
    return subprocess.run(
        [OVERFIT, *args], cwd=cwd, capture_output=True, text=True, timeout=180, env=os.environ
    )


@pytest.fixture
def overfit(capsys):
    """`overfit ARGS` in this process (what the console command runs: cli.run_stage of
    main), for speed; test_the_console_command_is_installed runs the real one."""

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        assert Path.cwd() == cwd
        capsys.readouterr()
        try:
            run_stage(main, list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def log_run(history: pd.DataFrame, names: str, params: dict | None = None, **metrics) -> str:
    """A finished run holding `history` per epoch, under this project's `curves/` names
    (steps from 1) or autolog's plain ones (steps from 0)."""
    with mlflow.start_run() as run:
        for _, row in history.iterrows():
            epoch = int(row["epoch"])
            if names == "project":
                values = {
                    f"curves/{k}": row[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                }
                mlflow.log_metrics(values, step=epoch)
            else:
                values = {k: row[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
                mlflow.log_metrics(values, step=epoch - 1)
        mlflow.log_params(params or {})
        if metrics:
            mlflow.log_metrics(metrics)
    return run.info.run_id


def test_a_history_file_is_diagnosed_as_the_api_does(overfit, store):
    meta, record, history = recorded()
    history.to_csv(store / "run.csv", index=False)
    done = overfit("diagnose", "run.csv", *size_flags(meta, record), cwd=store)
    assert done.returncode == 0, done.stderr
    expected = diagnosis_of(history, meta, record)
    assert done.stdout.splitlines()[0] == expected.answer
    page = Path(done.stdout.split("page: ")[1].split()[0])
    html = (store / page).read_text()
    assert str(code_spans(expected.summary)) in html
    assert 'src="data:image/png;base64,' in html and "<script" not in html
    assert overfit("report", cwd=store).stdout.strip() == str((store / page).resolve())


def diagnosis_of(history, meta, record):
    import pipeline

    return pipeline.diagnose(
        history,
        n_train=meta["n_train"],
        n_val=record["scores"]["val"]["n"],
        n_classes=10,
        name="run",
    )


def test_a_project_run_is_read_with_its_sizes_and_written_back(overfit, store):
    meta, record, history = recorded()
    n_val = record["scores"]["val"]["n"]
    sizes = {"data.n_train": meta["n_train"], "data.n_val": n_val, "data.n_classes": 10}
    run_id = log_run(history, "project", sizes)
    done = overfit("diagnose", "--mlflow-run", run_id, "--json", cwd=store)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    import pipeline

    expected = pipeline.diagnose(history, n_train=meta["n_train"], n_val=n_val, n_classes=10)
    assert (got["label"], got["onset_epoch"]) == (expected.label, expected.onset_epoch)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["verdict"] == expected.verdict
    assert run.data.tags["verdict_label"] == expected.label
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert "diagnosis.json" in artifacts and any(a.endswith(".html") for a in artifacts)


def test_an_evaluated_project_run_is_judged_on_its_saved_models_scores(overfit, store):
    meta, record, history = recorded("fashion_300_per_class", "dropout")
    scores = record["scores"]
    evaluated = {
        f"eval/{s}_{m}": scores[s][m] for s in ("train", "val") for m in ("accuracy", "loss")
    }
    sizes = {
        "data.n_train": meta["n_train"],
        "data.n_val": scores["val"]["n"],
        "data.n_classes": 10,
    }
    run_id = log_run(history, "project", sizes, **evaluated)
    done = overfit("diagnose", "--mlflow-run", run_id, "--json", "--no-write-back", cwd=store)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    # Dropout hides the gap from the history's train accuracy; the saved model shows it.
    assert got["verdict"] == diagnosis.OVERFITTING
    assert not any("train_scores=" in line for line in got["evidence"])
    assert "verdict" not in MlflowClient().get_run(run_id).data.tags


def test_autolog_names_need_the_sizes_it_did_not_log(overfit, store):
    meta, record, history = recorded()
    run_id = log_run(history, "autolog", {"epochs": "30"})
    done = overfit("diagnose", "--mlflow-run", run_id, cwd=store)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: run {run_id} does not record n train: pass --n-train"
    ]
    done = overfit(
        "diagnose", "--mlflow-run", run_id, *size_flags(meta, record), "--json", cwd=store
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["epochs_run"] == len(history)  # steps from 0 read as epochs from 1
    assert got["training"]["stopped_by"] == "epoch_limit"  # 30 of 30 epochs


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("no-val", "has no per-epoch loss/accuracy curves with validation"),
        ("no-run", "no MLflow run 'feedbeef'"),
        ("no-file", "missing.csv: cannot read it as a CSV history"),
        ("no-sizes", "history.csv: a history file does not say its split sizes"),
        ("csv-no-val", "history.csv: the history has no val_loss"),
    ],
)
def test_a_mistake_is_one_line(overfit, store, setup, says):
    _, _, history = recorded()
    if setup == "no-val":
        with mlflow.start_run() as run:
            for epoch, loss in enumerate(history["loss"]):
                mlflow.log_metrics({"loss": loss, "accuracy": 0.5}, step=epoch)
        args = ["--mlflow-run", run.info.run_id]
    elif setup == "no-run":
        args = ["--mlflow-run", "feedbeef"]
    elif setup == "no-file":
        args = ["missing.csv", "--n-train", "1", "--n-val", "1", "--n-classes", "2"]
    else:
        frame = history if setup == "no-sizes" else history[["epoch", "loss", "accuracy"]]
        frame.to_csv(store / "history.csv", index=False)
        sizes = (
            [] if setup == "no-sizes" else ["--n-train", "9", "--n-val", "9", "--n-classes", "2"]
        )
        args = ["history.csv", *sizes]
    done = overfit("diagnose", *args, cwd=store)
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr


def test_report_without_one_says_how_to_make_one(overfit, store):
    done = overfit("report", cwd=store)
    assert done.returncode == 2
    assert "run `dvc repro`" in done.stderr and "overfit diagnose" in done.stderr


def test_the_console_command_is_installed(store):
    done = overfit_console("report", cwd=store)
    assert done.returncode == 2 and done.stderr.startswith("error: no report under")
    assert overfit_console("--help", cwd=store).stdout.startswith("usage: overfit")


def test_report_finds_the_pipelines_page(overfit, store):
    (store / "reports").mkdir()
    (store / "reports" / "report.html").write_text("<html></html>")
    done = overfit("report", cwd=store)
    assert done.stdout.strip() == str((store / "reports" / "report.html").resolve())


@pytest.mark.slow
def test_a_keras_autolog_run_is_diagnosed_and_tagged(overfit, store):
    """A real run logged by mlflow.keras.autolog: sizes from its logged datasets, the class
    count from its logged model's signature, no flags needed."""
    done = subprocess.run(
        [sys.executable, "-c", AUTOLOGGED],
        cwd=store,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.strip().splitlines()[-1]
    done = overfit("diagnose", "--mlflow-run", run_id, "--json", cwd=store)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    # 100 train images, 40 epochs, no early stopping: a wide MLP memorizes them (train
    # 100%), far above what 500 validation digits reach.
    assert got["verdict"] == diagnosis.OVERFITTING, got["summary"]
    assert got["epochs_run"] == 40
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["verdict"] == diagnosis.OVERFITTING
    assert tags["mlflow.note.content"].startswith("**")


AUTOLOGGED = """
import keras, mlflow
from sklearn.datasets import load_digits
mlflow.keras.autolog()
digits = load_digits()
x, y = digits.images[..., None] / 16.0, digits.target
keras.utils.set_random_seed(1)
model = keras.Sequential([
    keras.Input((8, 8, 1)), keras.layers.Flatten(),
    keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10, activation="softmax"),
])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
with mlflow.start_run() as run:
    model.fit(x[:100], y[:100], validation_data=(x[1000:1500], y[1000:1500]),
              epochs=40, batch_size=16, verbose=0)
print(run.info.run_id)
"""


def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readmes_own_model_examples_name_what_exists():
    """Every file, builder and command the "Bring your own model" section tells users to
    run exists; its Python snippets are valid Python with the API's real names."""
    import ast
    import re

    import pipeline
    from pipeline.keras import OverfittingMonitor

    section = readme_section("Bring your own model")
    repo = Path(__file__).resolve().parents[1]
    for path in set(re.findall(r"examples/[\w\-.]+\.(?:py|yaml)", section)):
        assert (repo / path).is_file(), path
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        ast.parse(block)
    assert "diagnose(history, n_train=" in section and callable(pipeline.diagnose)
    assert "OverfittingMonitor(n_train=" in section and OverfittingMonitor
    for sub in re.findall(r"^overfit (\w+)", section, re.M):
        assert sub in {"diagnose", "report"}


def test_a_project_history_reads_its_metrics_and_the_page_goes_into_a_folder(overfit, store):
    """models/<variant>/history.csv with metrics.json beside it: judged at the restored
    epoch as evaluate judges it; --html naming a folder puts the page inside it."""
    meta, record, history = recorded()
    folder = store / "models" / "baseline"
    folder.mkdir(parents=True)
    history.to_csv(folder / "history.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(record["train_metrics"]))
    (store / "pages").mkdir()
    done = overfit(
        "diagnose", "models/baseline/history.csv", *size_flags(meta, record),
        "--html", "pages", "--json", cwd=store,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["best_epoch"] == record["train_metrics"]["best_epoch"]
    assert got["variant"] == "baseline"
    assert len(list((store / "pages").glob("baseline-*.html"))) == 1


def test_train_scores_on_the_command_line_replace_the_historys(overfit, store):
    meta, record, history = recorded("fashion_300_per_class", "dropout")
    history.to_csv(store / "run.csv", index=False)
    train = record["scores"]["train"]
    args = ["diagnose", "run.csv", "--n-train", str(meta["n_train"]), "--n-val", "2000"]
    scored = ["--train-scores", str(train["loss"]), str(train["accuracy"])]
    done = overfit(*args, "--n-classes", "10", *scored, "--json", cwd=store)
    got = json.loads(done.stdout)
    last_val = history["val_accuracy"].iloc[-1]
    assert got["gap"]["accuracy"] == pytest.approx(train["accuracy"] - last_val)
    assert not any("history's at epoch" in line for line in got["evidence"])


def test_no_tracking_store_here_is_one_line_and_creates_none(overfit, store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    done = overfit("diagnose", "--mlflow-run", "feedbeef", cwd=store)
    assert done.returncode == 2
    assert "no tracking store here" in done.stderr
    assert not (store / "mlflow.db").exists()


def test_a_run_evaluate_already_judged_keeps_its_tags(overfit, store):
    """evaluate's verdict compares the variant with the others; a lone re-diagnosis must
    not overwrite it."""
    meta, record, history = recorded()
    sizes = {"data.n_train": meta["n_train"], "data.n_val": 2000, "data.n_classes": 10}
    run_id = log_run(history, "project", sizes)
    MlflowClient().set_tag(run_id, "evaluated", "true")
    MlflowClient().set_tag(run_id, "verdict", "underfitting")
    done = overfit("diagnose", "--mlflow-run", run_id, cwd=store)
    assert done.returncode == 0 and "left as the pipeline's evaluate tagged it" in done.stdout
    assert MlflowClient().get_run(run_id).data.tags["verdict"] == "underfitting"
