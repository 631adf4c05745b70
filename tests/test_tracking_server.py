"""The team tracking server (scripts/tracking-server.sh) on a real PostgreSQL, for real.

The script creates a PostgreSQL cluster and database in a temp folder and
starts `mlflow server` on loopback with proxied artifacts; the pipeline's
stages then run unchanged with MLFLOW_TRACKING_URI pointing at it. Checked:
runs, per-epoch metrics, artifacts and registry aliases all land; two training
processes logging at once lose nothing; after a restart of server and
database, the champion still loads by alias through the server.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import BIN, REPO, Project, write_validation

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        reason="PostgreSQL is not installed (Debian: apt-get install postgresql)",
    ),
]

SCRIPT = REPO / "scripts" / "tracking-server.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(folder, port: int, pg_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        TRACKING_SERVER_DIR=str(folder),
        MLFLOW_SERVER_PORT=str(port),
        PG_PORT=str(pg_port),
        MLFLOW_BIN=str(BIN / "mlflow"),
    )
    return env


def script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """The script's server and PostgreSQL in a temp folder, shared by the module's tests
    (each leaves it running); stopped and purged afterwards."""
    tmp_path = tmp_path_factory.mktemp("team")
    env = server_env(tmp_path / "server", free_port(), free_port())
    started = script("start", env)
    try:
        yield f"http://127.0.0.1:{env['MLFLOW_SERVER_PORT']}", env, started.stdout
    finally:
        purged = subprocess.run(
            ["bash", str(SCRIPT), "purge"], env=env, capture_output=True, text=True, timeout=120
        )
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (tmp_path / "server").exists()


def credentials(env: dict[str, str]) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME / _PASSWORD as the script wrote them (auth/admin.env)."""
    text = (Path(env["TRACKING_SERVER_DIR"]) / "auth" / "admin.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def stage(project: Project, uri: str, *args: str, login: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    env.update(login)
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def test_the_pipeline_runs_unchanged_against_the_team_server(
    digits_prepared, team_server, monkeypatch
):
    import mlflow
    from mlflow import MlflowClient

    project = digits_prepared
    uri, env, started = team_server
    assert "postgresql+psycopg://" in started and f"MLFLOW_TRACKING_URI={uri}" in started
    assert "admin.env" in started  # how to get the credentials
    login = credentials(env)
    for key, value in login.items():  # the test's own client logs in too
        monkeypatch.setenv(key, value)
    write_validation(project)

    # Two training processes log to the server at once.
    both = [
        stage(project, uri, "pipeline.train", "--variant", v, login=login)
        for v in ("baseline", "dropout")
    ]
    for proc in both:
        finish(proc)
    finish(stage(project, uri, "pipeline.evaluate", login=login))

    # registry_uri too: an earlier test in this process may have set another one
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("cnn-overfitting")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    for variant in ("baseline", "dropout"):
        info = json.loads(project.paths.run_info(variant).read_text())
        run = client.get_run(info["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["variant"] == variant
        epochs = len(project.paths.history_csv(variant).read_text().splitlines()) - 1
        for key in ("curves/val_loss", "curves/accuracy", "curves/gap_accuracy"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (variant, key)  # none lost
        assert run.data.params["train.epochs"] == "3"
        assert "eval/test_accuracy" in run.data.metrics and run.data.tags["verdict"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "model_summary.txt" in artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
            "evaluation/diagnosis.json"
        }
    # Nothing of the runs landed on the client's disk: artifacts went through the server.
    assert not (project.root / "mlartifacts").exists()
    assert not (project.root / "mlflow.db").exists()

    evaluation = json.loads(project.paths.evaluation_json.read_text())
    name = evaluation["registered"]["model_name"]
    version = str(evaluation["registered"]["version"])
    assert client.get_model_version_by_alias(name, "challenger").version == version
    client.set_registered_model_alias(name, "champion", version)  # as the retrain gate does

    # Restart server and database: the champion still loads by alias, through the server.
    script("stop", env)
    stopped = subprocess.run(
        ["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True
    )
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "mlflow server: stopped" in stopped.stdout and "PostgreSQL: stopped" in stopped.stdout
    script("start", env)
    assert "PostgreSQL: running" in script("status", env).stdout
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    x = np.zeros((2, 8, 8, 1), dtype=np.float32)
    assert np.asarray(champion.predict(x)).shape == (2, 10)
    after = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(name, "champion")
    assert after.version == version


def test_the_server_wants_a_login_and_keeps_its_credentials_private(team_server):
    import requests

    uri, env, _ = team_server
    auth = Path(env["TRACKING_SERVER_DIR"]) / "auth"
    assert oct(auth.stat().st_mode & 0o777) == "0o700"
    for name in ("admin.env", "secret_key", "basic_auth.ini"):
        assert oct((auth / name).stat().st_mode & 0o777) == "0o600", name
    assert "PASSWORD" not in (auth / "basic_auth.ini").read_text().upper()
    login = credentials(env)
    create = f"{uri}/api/2.0/mlflow/experiments/create"
    # Anyone without the password, e.g. another local user: 401, nothing created.
    assert requests.post(create, json={"name": "intruder"}, timeout=30).status_code == 401
    wrong = ("admin", "not-the-password")
    assert requests.post(create, json={"name": "x"}, auth=wrong, timeout=30).status_code == 401
    search = f"{uri}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=30).status_code == 401
    nobody = subprocess.run(["id", "nobody"], capture_output=True).returncode == 0
    if nobody and Path("/usr/bin/python3").exists():  # the venv may be out of its reach
        other_user = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c",
             "import sys, urllib.request, urllib.error\n"
             "try:\n urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b'{}',"
             " headers={'Content-Type': 'application/json'}))\n"
             "except urllib.error.HTTPError as e: print(e.code)", create],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert other_user.stdout.strip() == "401", other_user.stdout + other_user.stderr
    me = (login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"])
    assert requests.get(search, auth=me, timeout=30).status_code == 200
    assert requests.get(f"{uri}/health", timeout=30).status_code == 200  # open: liveness only


def test_the_database_wants_its_password_and_a_taken_port_is_refused(team_server, tmp_path):
    uri, env, _ = team_server
    pgpass = Path(env["TRACKING_SERVER_DIR"]) / "pgpass"
    assert oct(pgpass.stat().st_mode & 0o777) == "0o600"
    psql = glob.glob("/usr/lib/postgresql/*/bin/psql")[0]
    no_password = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", env["PG_PORT"], "-U", "postgres", "-d", "mlflow", "-w",
         "-c", "select 1"],
        env={**env, "PGPASSFILE": "/dev/null"}, capture_output=True, text=True,
    )  # fmt: skip
    assert no_password.returncode != 0 and "password" in no_password.stderr
    # A second server on the same port: refused, naming the port; the first keeps running.
    other = {**env, "TRACKING_SERVER_DIR": str(tmp_path / "other"), "PG_PORT": str(free_port())}
    taken = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=other, capture_output=True, text=True
    )
    assert taken.returncode == 2 and f"port {env['MLFLOW_SERVER_PORT']} is already in use" in (
        taken.stderr
    )
    assert not (tmp_path / "other" / "pgdata").exists()
    assert script("status", env).stdout.startswith("mlflow server: running")


def test_the_script_refuses_an_unknown_command_and_a_missing_mlflow(tmp_path):
    env = server_env(tmp_path / "server", free_port(), free_port())
    unknown = subprocess.run(
        ["bash", str(SCRIPT), "launch"], env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "usage:" in unknown.stderr
    env["MLFLOW_BIN"] = str(tmp_path / "no-such-mlflow")
    missing = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "bootstrap.sh" in missing.stderr
    assert not (tmp_path / "server" / "pgdata").exists()  # refused before creating anything
    env["MLFLOW_BIN"] = str(BIN / "mlflow")
    for host in ("0.0.0.0", "10.1.2.3"):  # the network, without a login: refused
        open_to_all = subprocess.run(
            ["bash", str(SCRIPT), "start"],
            env={**env, "MLFLOW_SERVER_HOST": host, "MLFLOW_SERVER_AUTH": "off"},
            capture_output=True,
            text=True,
        )
        assert open_to_all.returncode == 2 and f"MLFLOW_SERVER_HOST={host}" in open_to_all.stderr
    assert not (tmp_path / "server" / "pgdata").exists()
