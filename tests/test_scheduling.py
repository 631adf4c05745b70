"""The scheduling examples in deploy/ and the MLproject entry points work as written.

systemd units pass `systemd-analyze verify`, the crontab line runs the real
retrain module through /bin/sh, the CI workflow parses with a schedule, and
`mlflow run . -e retrain` lands its runs in the project's experiment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from crontab import CronTab

from pipeline import lock, retrain

from .conftest import REPO, STAMP_STAGE, copy_project_tree, register, save_mlflow_model

DEPLOY = REPO / "deploy"
PLACEHOLDER = "/srv/cnn-overfitting"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def cron_jobs(text: str) -> list[tuple[list[str], str]]:
    """(five schedule fields, command) per job, parsed by python-crontab.

    A line cron would not run (a malformed or out-of-range field, too few
    fields) is no job at all, so "exactly one job" catches it.
    """
    return [(str(job.slices).split(), job.command) for job in CronTab(tab=text)]


def deployed_project(tmp_path: Path) -> Path:
    """A project copy with .venv linked, to run deploy/ commands with the placeholder replaced."""
    root = copy_project_tree(tmp_path / "srv")
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


# --------------------------------------------------------------------------- cron


def test_crontab_has_one_valid_job_calling_retrain():
    jobs = cron_jobs((DEPLOY / "crontab").read_text())
    assert len(jobs) == 1
    fields, command = jobs[0]
    assert f"cd {PLACEHOLDER} &&" in command
    assert ".venv/bin/python -m pipeline.retrain" in command
    module = re.search(r"-m (\S+)", command).group(1)
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()


def test_cron_and_systemd_stop_a_hung_run_after_the_same_time():
    """retrain never overlaps a live run, so each scheduler must end a hung one."""
    command = cron_jobs((DEPLOY / "crontab").read_text())[0][1]
    cron_limit = re.search(r"\btimeout (?:-k \S+ )?(\S+) \.venv/bin/python", command)
    service = (DEPLOY / "cnn-retrain.service").read_text()
    service_limit = re.search(r"^TimeoutStartSec=(\S+)$", service, re.M)
    assert cron_limit and service_limit
    assert cron_limit.group(1) == service_limit.group(1)


def test_the_crontab_check_rejects_lines_cron_would_not_run():
    """Negative control: a line cron would not run is no job, so "exactly one job" fails."""
    for broken in ("17 * * *", "17 25 * * * true", "17 x * * * true", "61 * * * * true"):
        assert cron_jobs(broken) == [], broken
    assert len(cron_jobs("17 3 * * * true")) == 1


def test_crontab_command_runs_retrain_through_sh(tmp_path):
    """The exact cron command, placeholder replaced; a held lock makes it exit fast."""
    root = deployed_project(tmp_path)
    command = cron_jobs((DEPLOY / "crontab").read_text())[0][1].replace(PLACEHOLDER, str(root))
    handle = lock.acquire_lock(root / "retrain.lock", stale_seconds=3600)
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command], env={"PATH": "/usr/bin:/bin"}, timeout=300
        )
    finally:
        lock.release_lock(handle)
    assert done.returncode == retrain.EXIT_LOCKED
    assert "another retrain is running" in (root / "retrain.log").read_text()


# --------------------------------------------------------------------------- systemd


def install_units(tmp_path: Path, root: Path) -> list[Path]:
    units = []
    for name in ("cnn-retrain.service", "cnn-retrain.timer"):
        text = (DEPLOY / name).read_text().replace(PLACEHOLDER, str(root))
        units.append(tmp_path / name)
        units[-1].write_text(text)
    return units


def verify(units: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units)],
        capture_output=True,
        text=True,
        cwd=units[0].parent,
        timeout=60,
    )


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    units = install_units(tmp_path, deployed_project(tmp_path))
    done = verify(units)
    assert done.returncode == 0, done.stderr
    assert "Unknown" not in done.stderr and "ignoring" not in done.stderr, done.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_verify_catches_a_wrong_working_copy(tmp_path):
    units = install_units(tmp_path, tmp_path / "no-such-checkout")
    done = verify(units)
    assert done.returncode != 0
    assert "not executable" in done.stderr


def test_service_treats_decisions_as_success_and_documents_placeholder():
    text = (DEPLOY / "cnn-retrain.service").read_text()
    assert f"WorkingDirectory={PLACEHOLDER}" in text
    assert f"ExecStart={PLACEHOLDER}/.venv/bin/python -m pipeline.retrain" in text
    assert f"Replace {PLACEHOLDER}" in text
    success = re.search(r"^SuccessExitStatus=(.*)$", text, re.M).group(1).split()
    expected = {retrain.EXIT_PROMOTED, retrain.EXIT_REJECTED, retrain.EXIT_LOCKED}
    assert {int(code) for code in success} == expected
    assert "Type=oneshot" in text


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_timer_calendar_parses():
    timer = (DEPLOY / "cnn-retrain.timer").read_text()
    calendar = re.search(r"^OnCalendar=(.*)$", timer, re.M).group(1)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", calendar], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Unit=cnn-retrain.service" in timer


# --------------------------------------------------------------------------- CI workflow


def test_ci_workflow_parses_with_schedule_and_retrain_step():
    workflow = yaml.safe_load((DEPLOY / "retrain-workflow.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert crons and all(cron_jobs(f"{cron} true") for cron in crons)
    steps = workflow["jobs"]["retrain"]["steps"]
    script = next(s["run"] for s in steps if "pipeline.retrain" in s.get("run", ""))
    # The step accepts exactly the decisions as success.
    assert "0|3|4) exit 0" in script and "75)" in script
    assert workflow["concurrency"]["cancel-in-progress"] is False


# --------------------------------------------------------------------------- MLproject


def mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def test_mlproject_entry_points_match_dvc_stages():
    project = mlproject()
    assert (REPO / project["conda_env"]).is_file()
    entries = project["entry_points"]
    assert entries["main"]["command"] == "dvc repro"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("prepare", "validate", "evaluate", "report"):
        assert entries[name]["command"] == f"python -m pipeline.{name}"
        if name in stages:
            assert stages[name]["cmd"] == entries[name]["command"]
    assert entries["train"]["command"] == "python -m pipeline.train --variant {variant}"
    assert stages["train"]["do"]["cmd"] == "python -m pipeline.train --variant ${key}"
    assert entries["learning_curve"]["command"] == (
        "python -m pipeline.train --variant {variant} --fraction {fraction}"
    )
    assert stages["learning_curve"]["do"]["cmd"] == (
        "python -m pipeline.train --variant ${learning_curve.variant} --fraction ${item}"
    )
    assert entries["retrain"]["command"].startswith("python -m pipeline.retrain")
    for entry in entries.values():
        module = re.search(r"python -m (\S+)", entry["command"])
        if module:
            assert (REPO / (module.group(1).replace(".", "/") + ".py")).is_file()


def test_mlproject_has_no_hyperparameter_defaults():
    """Only `variant` (a selector) is a parameter; its default is a params.yaml variant."""
    entries = mlproject()["entry_points"]
    parameters = {name: set(e.get("parameters", {})) for name, e in entries.items()}
    assert {n: p for n, p in parameters.items() if p} == {
        "train": {"variant"},
        "learning_curve": {"variant", "fraction"},
    }
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert entries["train"]["parameters"]["variant"]["default"] in params["variants"]
    curve = entries["learning_curve"]["parameters"]
    assert curve["variant"]["default"] == params["learning_curve"]["variant"]
    assert "default" not in curve["fraction"]


@pytest.mark.slow
def test_mlflow_run_retrain_lands_in_project_experiment(project, tmp_path):
    """A real `mlflow run . -e retrain`: its run and retrain's run share the experiment."""
    import keras
    import mlflow

    from .conftest import digits_arrays, make_prepared

    root = project.root
    copy_project_tree(root)
    for name in ("MLproject", "conda.yaml"):
        shutil.copy2(REPO / name, root / name)
    project.write_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    x, y = digits_arrays()
    make_prepared(project.paths.prepared_dir, x, y, [str(c) for c in range(10)])
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q", "-f"], cwd=root, check=True
    )
    (root / "dvc.yaml").write_text(STAMP_STAGE)  # stands in for the real pipeline
    (project.paths.validation_json).parent.mkdir(exist_ok=True)
    project.paths.validation_json.write_text('{"success": true, "checks": []}')
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    version = register(project, save_mlflow_model(model, tmp_path / "m"), alias="challenger")
    experiment = yaml.safe_load(project.paths.params.read_text())["mlflow"]["experiment"]

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            ".",
            "-e",
            "retrain",
            "--env-manager",
            "local",
            "--experiment-name",
            experiment,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
    runs = mlflow.search_runs([exp_id], output_format="list")
    entry = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "retrain"]
    stage = [r for r in runs if r.data.tags.get("stage") == "retrain"]
    assert len(entry) == 1 and len(stage) == 1
    assert stage[0].data.tags["mlflow.parentRunId"] == entry[0].info.run_id
    assert entry[0].info.status == "FINISHED"
    assert stage[0].data.tags["decision"] == "promoted"
    client = mlflow.MlflowClient()
    name = yaml.safe_load(project.paths.params.read_text())["registry"]["model_name"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == version
