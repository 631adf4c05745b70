"""pipeline.tracking: run grouping, parent runs, and a real MLflow tracking server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.config import parse_config

from .conftest import Project, small_params


def test_repro_id_prefers_the_explicit_id_then_the_mlflow_run(project: Project, monkeypatch):
    cfg = parse_config(small_params())
    derived = tracking.repro_id(project.paths, cfg)
    assert derived == tracking.repro_id(project.paths, cfg)  # stable under a bare dvc repro
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")
    assert tracking.repro_id(project.paths, cfg) == "mlflow-run-abc123"
    monkeypatch.setenv("PIPELINE_REPRO_ID", "nightly-7")
    assert tracking.repro_id(project.paths, cfg) == "nightly-7"


def test_mlflow_run_id_becomes_the_parent_and_is_restored(project: Project, monkeypatch):
    from mlflow import MlflowClient

    cfg = project.write_params(small_params())
    tracking.configure(project.paths)
    parent_exp = tracking.ensure_experiment(project.paths, cfg.mlflow.experiment)
    client = MlflowClient(project.tracking_uri)
    parent = client.create_run(parent_exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    with tracking.stage_run(project.paths, cfg, stage="train", variant="baseline") as run:
        assert run.info.run_id != parent  # never logs into the injected run
        assert "MLFLOW_RUN_ID" not in os.environ
    assert os.environ["MLFLOW_RUN_ID"] == parent
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["repro_id"] == f"mlflow-run-{parent}"
    assert tags["stage"] == "train" and tags["variant"] == "baseline"


def test_a_failing_stage_marks_its_run_failed(project: Project):
    from mlflow import MlflowClient

    cfg = project.write_params(small_params())
    with (
        pytest.raises(RuntimeError),
        tracking.stage_run(project.paths, cfg, stage="validate") as run,
    ):
        raise RuntimeError("boom")
    assert MlflowClient(project.tracking_uri).get_run(run.info.run_id).info.status == "FAILED"


@pytest.mark.parametrize("enabled", [True, False])
def test_training_runs_sample_cpu_and_memory_unless_switched_off(
    project: Project, monkeypatch, enabled: bool
):
    import mlflow
    from mlflow import MlflowClient

    params = small_params()
    params["mlflow"]["system_metrics"] = enabled
    cfg = project.write_params(params)
    mlflow.set_system_metrics_sampling_interval(0.2)
    try:
        with tracking.stage_run(project.paths, cfg, "train", "baseline", system_metrics=True) as r:
            time.sleep(1.5)  # several samples
        with tracking.stage_run(project.paths, cfg, "validate") as other:
            time.sleep(1.0)  # a stage that does not ask for them gets none
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
    client = MlflowClient(project.tracking_uri)
    sampled = {k for k in client.get_run(r.info.run_id).data.metrics if k.startswith("system/")}
    if enabled:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= (
            sampled
        )
    else:
        assert not sampled
    assert not [k for k in client.get_run(other.info.run_id).data.metrics if "system/" in k]


def test_dvc_lock_and_outputs_do_not_make_the_commit_dirty(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    (root / "dvc.lock").write_text("a\n")
    (root / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    clean = tracking.git_commit(root)
    assert len(clean) == 40
    (root / "dvc.lock").write_text("b\n")  # what `dvc repro` does between stages
    assert tracking.git_commit(root) == clean
    (root / "code.py").write_text("x = 2\n")
    assert tracking.git_commit(root) == clean + "-dirty"


def test_unreachable_server_is_reported_quickly(monkeypatch):
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.check_reachable("http://127.0.0.1:9", timeout=2)
    assert time.monotonic() - start < 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path: Path):
    """A real `mlflow server` on loopback with its own sqlite store and artifacts."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                tracking.check_reachable(uri, timeout=1)
                break
            except tracking.TrackingError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_train_logs_to_a_tracking_server(digits_prepared: Project, tracking_server, monkeypatch):
    """The same stage against MLFLOW_TRACKING_URI=http://...: runs, curves and model land there."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from pipeline import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    assert train.main(["--variant", "baseline"]) == 0
    run_info = json.loads(digits_prepared.paths.run_info("baseline").read_text())
    client = MlflowClient(tracking_server)
    run = client.get_run(run_info["run_id"])
    assert run.data.tags["variant"] == "baseline" and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "curves/val_loss")]
    assert steps == [1, 2, 3]
    assert not (digits_prepared.root / "mlflow.db").exists()  # nothing went to the local default
    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(run_info["model_uri"])
    images = np.load(digits_prepared.paths.prepared_dir / "test_x.npy")[:4].astype("float32")
    assert model.predict(images).shape == (4, 10)


# --------------------------------------------------------------------------- evaluate's section


def test_log_to_run_annotates_a_finished_run(project: Project, tmp_path: Path):
    from mlflow import MlflowClient

    cfg = project.write_params(small_params())
    with tracking.stage_run(project.paths, cfg, stage="train", variant="baseline") as run:
        run_id = run.info.run_id
    assert tracking.run_exists(run_id)
    assert not tracking.run_exists("0" * 32)
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"a")
    (tmp_path / "table.csv").write_text("x\n1\n")
    tracking.log_to_run(
        run_id,
        metrics={"m": 2},
        tags={"t": "v"},
        texts={"notes/n.json": "{}"},
        artifacts={"figures": [folder], "tables": [tmp_path / "table.csv"]},
    )
    client = MlflowClient(project.tracking_uri)
    data = client.get_run(run_id).data
    assert data.metrics["m"] == 2.0 and data.tags["t"] == "v"
    assert [(m.value, m.step) for m in client.get_metric_history(run_id, "m")] == [(2.0, 0)]
    # A folder's contents go under the artifact dir, a file under its own.
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/a.png"]
    assert [a.path for a in client.list_artifacts(run_id, "tables")] == ["tables/table.csv"]
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/n.json"]


def test_registering_a_missing_model_is_a_tracking_error(project: Project):
    tracking.configure(project.paths)
    with pytest.raises(tracking.TrackingError, match=r"could not register runs:/0+/model as 'm'"):
        tracking.register_model_version(f"runs:/{'0' * 32}/model", "m", {}, "challenger")


# --- retrain: registry helpers ---


def test_registry_aliases_tags_and_a_missing_model(project: Project):
    import mlflow

    tracking.configure(project.paths)
    assert tracking.registered_aliases("no-such-model") == {}
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    version = client.create_model_version("m", source=str(project.root / "model")).version
    tracking.set_registered_alias("m", tracking.CHAMPION, version)
    assert tracking.registered_aliases("m") == {tracking.CHAMPION: str(version)}
    tracking.set_model_version_tags("m", version, {"retrain_decision": "promoted"})
    assert tracking.model_version("m", version).tags == {"retrain_decision": "promoted"}


def test_model_input_shape_without_a_signature_is_unknown():
    class Unsigned:
        metadata = None

    assert tracking.model_input_shape(Unsigned()) is None
    assert tracking.model_input_shape(object()) is None


# --------------------------------------------------------------------------- get-or-create races

RACER = """
import sys, time
from pathlib import Path
from pipeline import tracking
from pipeline.paths import Paths
paths = Paths(Path(sys.argv[1]))
tracking.configure(paths)
Path(sys.argv[2]).touch()  # ready: mlflow imported and configured
go = Path(sys.argv[3])
while not go.exists() or not go.read_text():
    time.sleep(0.001)
start = float(go.read_text())
while time.time() < start:  # start together, to the millisecond
    time.sleep(0.0005)
print(tracking.ensure_experiment(paths, "raced"))
"""


def test_two_processes_creating_the_experiment_at_once_get_the_same_one(project: Project):
    """The race of two trainers on a fresh store, for real: several processes ask for a
    new experiment at the same instant; every one gets the same id, none crashes."""
    import mlflow

    tracking.configure(project.paths)
    mlflow.search_experiments()  # the store's schema exists first: only the experiment races
    go = project.root / "go"
    ready = [project.root / f"ready{i}" for i in range(4)]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(project.root), str(flag), str(go)],
            env={**os.environ, "MLFLOW_TRACKING_URI": project.tracking_uri},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.time() + 120
    while not all(flag.exists() for flag in ready) and time.time() < deadline:
        assert all(r.poll() is None for r in racers), [r.communicate() for r in racers]
        time.sleep(0.01)
    staged = go.with_suffix(".tmp")
    staged.write_text(str(time.time() + 0.3))
    staged.rename(go)
    outputs = [r.communicate(timeout=120) for r in racers]
    assert [r.returncode for r in racers] == [0] * 4, [err[-2000:] for _, err in outputs]
    ids = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert ids == {mlflow.get_experiment_by_name("raced").experiment_id}


def test_losing_the_experiment_race_reads_back_the_winners(project: Project, monkeypatch):
    """Deterministic form of the race: between our lookup and our create, another process
    creates the experiment (simulated by making the first lookup miss)."""
    import mlflow

    tracking.configure(project.paths)
    winner = mlflow.create_experiment("contended")
    real_lookup = mlflow.get_experiment_by_name
    calls = []

    def lookup_missing_once(name):
        calls.append(name)
        return None if len(calls) == 1 else real_lookup(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup_missing_once)
    assert tracking.ensure_experiment(project.paths, "contended") == winner
    assert len(calls) == 2  # looked up, create refused, looked up again
    assert real_lookup("contended").tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND


def test_another_create_failure_is_not_mistaken_for_the_race(project: Project, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.configure(project.paths)

    def refuse(*args, **kwargs):
        raise MlflowException("permission denied", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(mlflow, "create_experiment", refuse)
    with pytest.raises(MlflowException, match="permission denied"):
        tracking.ensure_experiment(project.paths, "never-made")


@pytest.mark.parametrize("rival_first", [True, False])
def test_two_stages_creating_one_repros_parent_run_keep_one(
    project: Project, monkeypatch, rival_first: bool
):
    """Runs have no unique key: when another stage creates the same repro's parent run
    between our lookup and our create, both keep the older one and the newer is deleted."""
    from mlflow import MlflowClient

    cfg = project.write_params(small_params())
    tracking.configure(project.paths)
    experiment = tracking.ensure_experiment(project.paths, cfg.mlflow.experiment)
    rid = tracking.repro_id(project.paths, cfg)
    real_create = MlflowClient.create_run
    made = {}

    def create_with_rival(self, experiment_id, *args, **kwargs):
        if rival_first:  # the other stage's run is older than ours
            made["rival"] = real_create(self, experiment_id, *args, **kwargs).info.run_id
            time.sleep(0.01)
        run = real_create(self, experiment_id, *args, **kwargs)
        made["mine"] = run.info.run_id
        if not rival_first:
            time.sleep(0.01)
            made["rival"] = real_create(self, experiment_id, *args, **kwargs).info.run_id
        return run

    monkeypatch.setattr(MlflowClient, "create_run", create_with_rival)
    kept = tracking.pipeline_run(project.paths, cfg, experiment)
    monkeypatch.setattr(MlflowClient, "create_run", real_create)
    client = MlflowClient(project.tracking_uri)
    assert kept == (made["rival"] if rival_first else made["mine"])
    query = f"tags.repro_id = '{rid}' and tags.pipeline_run = 'true'"
    live = [r.info.run_id for r in client.search_runs([experiment], query)]
    if rival_first:
        assert live == [made["rival"]]  # ours was deleted by us
        assert client.get_run(made["mine"]).info.lifecycle_stage == "deleted"
    else:
        # The rival (newer) deletes its own when it reads back; ours is the one all keep.
        assert set(live) == {made["mine"], made["rival"]}
    # A later stage of the same repro finds the kept parent.
    assert tracking.pipeline_run(project.paths, cfg, experiment) == kept
