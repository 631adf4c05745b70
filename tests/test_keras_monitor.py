"""pipeline.keras.OverfittingMonitor inside a user's own `model.fit`, and the project
installed as a library (`pip install`) in a fresh venv, with no params.yaml and no DVC.

Real training on the digits: 100 train images, a wide MLP and 40 epochs without
early stopping memorize them (train accuracy 100%) far beyond what 500
validation digits reach; that outcome, not a rule, is the truth checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import pipeline

REPO = Path(__file__).resolve().parents[1]


def digits(n_train: int = 100, n_val: int = 500):
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.images[..., None] / 16.0, data.target
    return (x[:n_train], y[:n_train]), (x[1000 : 1000 + n_val], y[1000 : 1000 + n_val])


def wide_mlp():
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="wide_mlp",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.slow
def test_the_monitor_diagnoses_a_plain_fit_and_logs_it(store, capsys):
    from pipeline.keras import OverfittingMonitor

    (x, y), (xv, yv) = digits()
    monitor = OverfittingMonitor(n_train=len(x), n_val=len(xv), mlflow=True)
    model = wide_mlp()
    history = model.fit(
        x, y, validation_data=(xv, yv), epochs=40, batch_size=16, verbose=0, callbacks=[monitor]
    )
    result = monitor.diagnosis
    assert history.history["accuracy"][-1] == 1.0  # the truth: it memorized its 100 images
    assert result.verdict == "overfitting"
    # The same verdict as the API gives the History fit returned.
    again = pipeline.diagnose(history, n_train=len(x), n_val=len(xv), name="wide_mlp")
    assert (again.label, again.summary, again.evidence) == (
        result.label,
        result.summary,
        result.evidence,
    )
    assert result.answer in capsys.readouterr().out
    assert monitor.page.is_file() and monitor.page.parent.name == "overfit_reports"
    client = MlflowClient()
    run = client.get_run(monitor.run_id)
    assert run.info.status == "FINISHED"  # the monitor started it, so it ended it
    assert run.data.tags["verdict_label"] == result.label
    steps = [m.step for m in client.get_metric_history(monitor.run_id, "curves/val_loss")]
    assert steps == list(range(1, 41))
    assert "curves/gap_accuracy" in run.data.metrics
    assert {"diagnosis.json", monitor.page.name} <= {
        a.path for a in client.list_artifacts(monitor.run_id)
    }


@pytest.mark.slow
def test_the_monitor_logs_into_the_users_own_run(store):
    from pipeline.keras import OverfittingMonitor

    (x, y), (xv, yv) = digits()
    with mlflow.start_run(run_name="mine") as run:
        monitor = OverfittingMonitor(100, 500, mlflow=True, report=store / "mine.html")
        wide_mlp().fit(x, y, validation_data=(xv, yv), epochs=3, verbose=0, callbacks=[monitor])
        assert mlflow.active_run().info.run_id == run.info.run_id  # still the user's
    assert monitor.run_id == run.info.run_id
    assert (store / "mine.html").is_file()
    assert MlflowClient().get_run(run.info.run_id).data.tags["verdict"]


def test_the_monitor_checks_its_sizes_before_training():
    from pipeline.keras import OverfittingMonitor

    with pytest.raises(ValueError, match="n_val must be the number of images"):
        OverfittingMonitor(n_train=100, n_val=0)


def fresh_venv(where: Path) -> Path:
    """A new venv that sees this one's dependencies (a .pth line) but not its editable
    install of the project, which a .pth line does not activate."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_installed_as_a_library_the_example_runs_without_the_project(tmp_path):
    """`pip install .` (a wheel), then the README's own-fit example from a folder with
    no params.yaml and no DVC: the callback diagnoses, the `overfit` command reads the
    run back."""
    # Built from a copy: setuptools leaves build/ and *.egg-info in the source folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=skip)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(wheels), str(source)],
        check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    python = fresh_venv(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--quiet", str(next(wheels.glob("*.whl")))],
        check=True, timeout=300,
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    where = subprocess.run(
        [str(python), "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=work, capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    assert str(tmp_path / "venv") in where, where  # the installed copy, not the checkout
    done = subprocess.run(
        [str(python), str(REPO / "examples" / "own_fit.py")],
        cwd=work, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = done.stdout.strip().splitlines()[-1]
    assert "(page: overfit_reports/" in verdict
    assert not (work / "params.yaml").exists() and not (work / ".dvc").exists()
    runs = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_runs(["0"])
    assert len(runs) == 1 and runs[0].data.tags["verdict_label"] in verdict
    overfit = tmp_path / "venv" / "bin" / "overfit"
    shown = subprocess.run(
        [str(overfit), "diagnose", "--mlflow-run", runs[0].info.run_id, "--no-write-back"],
        cwd=work, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.splitlines()[0] == verdict.split(" (page:")[0]


@pytest.mark.slow
def test_a_diagnosis_that_cannot_be_made_never_breaks_the_users_fit(store, capsys):
    """A NaN loss at the end, or no validation data: fit returns, the script goes on,
    the monitor says why in one line and its run is ended."""
    import keras

    from pipeline.keras import OverfittingMonitor

    (x, y), (xv, yv) = digits()

    class PoisonAfter2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                head = self.model.layers[-1]
                head.kernel.assign(np.full(head.kernel.shape, np.nan, "float32"))

    monitor = OverfittingMonitor(len(x), len(xv), mlflow=True)
    wide_mlp().fit(
        x, y, validation_data=(xv, yv), epochs=4, verbose=0, callbacks=[PoisonAfter2(), monitor]
    )
    assert monitor.diagnosis is None
    assert "could not diagnose this run: history has NaN" in capsys.readouterr().out
    assert MlflowClient().get_run(monitor.run_id).info.status == "FINISHED"
    bare = OverfittingMonitor(len(x), len(xv), report=False)
    wide_mlp().fit(x, y, epochs=2, verbose=0, callbacks=[bare])
    assert "no epoch has val_loss: pass validation_data=" in capsys.readouterr().out


@pytest.mark.slow
def test_validation_every_other_epoch_and_a_second_fit_continue_one_history(store):
    """validation_freq=2 is judged on the validated epochs; a second fit from
    initial_epoch=k (fine-tuning after a first stage) continues the same history and
    the same MLflow run."""
    from pipeline.keras import OverfittingMonitor

    (x, y), (xv, yv) = digits()
    monitor = OverfittingMonitor(len(x), len(xv), mlflow=True, report=False)
    model = wide_mlp()
    model.fit(
        x, y, validation_data=(xv, yv), validation_freq=2, epochs=6, verbose=0,
        callbacks=[monitor],
    )  # fmt: skip
    assert monitor.diagnosis.epochs_run == 3  # epochs 2, 4, 6
    first_run = monitor.run_id
    model.fit(
        x, y, validation_data=(xv, yv), initial_epoch=6, epochs=10, verbose=0,
        callbacks=[monitor],
    )  # fmt: skip
    assert [r["epoch"] for r in monitor.rows] == list(range(1, 11))
    assert monitor.run_id == first_run
    steps = [m.step for m in MlflowClient().get_metric_history(first_run, "curves/loss")]
    assert steps == list(range(1, 11))
