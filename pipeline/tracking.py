"""The one module that talks to MLflow.

Stages call `stage_run(...)` to get an MLflow run tagged with the stage, the
variant, the git commit, the data version (manifest hash), the params hash and
a `repro_id` shared by every run of one pipeline execution, so the MLflow UI
can put one `dvc repro`'s variants side by side.

Backend: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<root>/mlflow.db`
(MLflow 3's own default), artifacts in `<root>/mlartifacts`, where <root> is the
DVC repository's (also for a queued experiment running in DVC's temp copy). An unreachable
tracking server fails fast with `TrackingError` instead of hanging.

`mlflow run` injects `MLFLOW_RUN_ID` into the entry point's environment. We
never log into that run directly: it becomes the *parent* of the stage's own
run, so two variants can never write into one run and metric names never
collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.cli import DAMAGED_DB_TEXT, UserError, damaged_store_message
from pipeline.config import Config
from pipeline.paths import Paths
from pipeline.processes import pid_alive

log = logging.getLogger(__name__)

REPRO_ID_ENV = "PIPELINE_REPRO_ID"
PARENT_RUN_ENV = "MLFLOW_RUN_ID"
# Fail fast rather than retry for minutes against a dead server.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
REACHABILITY_TIMEOUT_S = 5.0
_REPRO_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


class TrackingError(UserError, RuntimeError):
    """MLflow is misconfigured or unreachable."""


def store_root(paths: Paths) -> Path:
    """Where the project's own MLflow store lives: the DVC repository's root.

    A queued experiment (`dvc exp run --queue`, `dvc queue start`) runs its stages
    in a temporary copy of the repo under .dvc/tmp/exps/, which DVC deletes
    afterwards; DVC then sets DVC_ROOT to the parent repository, so its runs land
    in the same mlflow.db as every other run instead of vanishing with the copy.
    """
    parent = os.environ.get("DVC_ROOT", "").strip()
    if parent and (Path(parent) / "dvc.yaml").is_file():
        return Path(parent)
    return paths.root


def project_store_uri(paths: Paths) -> str:
    """The project's own sqlite store."""
    return f"sqlite:///{(store_root(paths) / 'mlflow.db').resolve()}"


def tracking_uri(paths: Paths) -> str:
    """The tracking URI in force: the environment's, else the project's sqlite file."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return project_store_uri(paths)


# Where the project's sqlite store records absolute artifact locations. MLflow
# resolves a relative artifact location to an absolute one when it creates an
# experiment, so a moved or copied project still points at the old folder.
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
ARTIFACTS_DIR = "mlartifacts"
_STORES_CHECKED: set[Path] = set()  # project stores follow_project_move has looked at


def follow_project_move(root: Path) -> int:
    """Repoint the project's sqlite store at `root` after `mv` or `cp -r` of the project.

    The store's experiments keep `<old root>/mlartifacts` as their artifact
    location. When that is not `root`'s own (the project was moved or copied),
    every recorded location under the old root is rewritten to the same place
    under `root`, in one transaction, so models load from, and new artifacts go
    to, this project's mlartifacts/. Returns the number of rewritten values (0:
    nothing to do). Only the project's own store is touched, never a server's.
    """
    import sqlite3

    db = root / "mlflow.db"
    if not db.is_file():
        return 0
    new = str((root / ARTIFACTS_DIR).resolve())
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
            tables = {name for (name,) in conn.execute("select name from sqlite_master")}
            if "experiments" not in tables:
                return 0  # a new store that MLflow has not set up yet
            moved = [old for old in _recorded_artifacts_dirs(conn) if old != new]
            changed = sum(
                _rewrite_prefix(conn, table, column, old, new)
                for old in moved
                for table, column in _LOCATION_COLUMNS
                if table in tables
            )
    except sqlite3.DatabaseError as exc:
        if not any(text in str(exc) for text in DAMAGED_DB_TEXT):
            raise  # a full disk, a lock: reported as what it is
        raise TrackingError(damaged_store_message(exc)) from None
    if changed:
        log.info("project moved: %d artifact locations now point to %s", changed, new)
    return changed


def _rewrite_prefix(conn: Any, table: str, column: str, old: str, new: str) -> int:
    """Rewrite `old` to `new` at the start of `column`, as a file: URI or a path."""
    changed = 0
    new_uri = Path(new).as_uri()
    pairs = {  # a file: URI as MLflow writes it (percent-encoded), as text, and a path
        f"{Path(old).as_uri()}/": f"{new_uri}/",
        f"file://{old}/": f"{new_uri}/",
        f"{old}/": f"{new}/",
    }
    for before, after in pairs.items():
        changed += conn.execute(
            f"update {table} set {column} = ? || substr({column}, ?) "  # noqa: S608
            f"where substr({column}, 1, ?) = ?",
            (after, len(before) + 1, len(before), before),
        ).rowcount
    changed += conn.execute(
        f"update {table} set {column} = ? where {column} in (?, ?, ?)",  # noqa: S608
        (new_uri, Path(old).as_uri(), f"file://{old}", old),
    ).rowcount
    return changed


def _recorded_artifacts_dirs(conn: Any) -> list[str]:
    """The local mlartifacts folders the store's experiments were created with."""
    from urllib.parse import unquote, urlparse

    found = []
    for (location,) in conn.execute("select artifact_location from experiments"):
        parsed = urlparse(location or "")
        path = unquote(parsed.path) if parsed.scheme == "file" else ""
        if Path(path).name == ARTIFACTS_DIR and path not in found:
            found.append(path)
    return found


def check_reachable(uri: str, timeout: float = REACHABILITY_TIMEOUT_S) -> None:
    """Raise TrackingError unless an http(s) tracking server answers quickly."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable: "
            f"{type(exc).__name__}. Start the server, or unset MLFLOW_TRACKING_URI "
            "to use the local sqlite:///mlflow.db"
        ) from None
    if response.status_code >= 500:
        raise TrackingError(
            f"MLflow tracking server {uri} answered {url} with HTTP {response.status_code}"
        )


def configure(paths: Paths) -> str:
    """Point the mlflow client at the project's backend; returns the URI."""
    import mlflow

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(paths)
    check_reachable(uri)
    root = store_root(paths)
    if uri == project_store_uri(paths) and root not in _STORES_CHECKED:
        follow_project_move(root)  # once per process: configure runs per MLflow run
        _STORES_CHECKED.add(root)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_REGISTRY_URI"):
        mlflow.set_registry_uri(uri)
    return uri


# MLflow 3's UI opens an experiment on this kind's view: training runs, not GenAI traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PIPELINE_RUN_TAG = "pipeline_run"


def ensure_experiment(paths: Paths, name: str) -> str:
    """The experiment id of `name`, created on first use, tagged to open on training runs.

    Two stages starting together on a new store (two trainers on a fresh team
    server) both find no experiment and both create it; the store's unique name
    refuses the second, which then reads back the one the first made.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if tracking_uri(paths).startswith("sqlite:"):
            artifact_location = (store_root(paths) / "mlartifacts").resolve().as_uri()
        try:
            return mlflow.create_experiment(
                name,
                artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            log.info("experiment %r was created by another process; using it", name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"the MLflow experiment {name!r} (id {experiment.experiment_id}) was deleted; "
            f"restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}), or set mlflow.experiment in params.yaml to a new "
            "name. A deleted experiment's name stays taken until it is purged (mlflow gc)"
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment.experiment_id


def pipeline_run(paths: Paths, cfg: Config, experiment_id: str) -> str:
    """The parent run of one pipeline execution (one `repro_id`): found, or made by the
    first stage that logs. Each stage's run nests under it, so the UI shows one
    `dvc repro` as one expandable row.

    Runs have no unique key, so two stages starting together (the variants of
    `dvc queue start -j 2`, trainers on a team server) may both create one. Each
    creator then reads all of them back and keeps the oldest; the others are
    deleted by their own creators, so every stage nests under the same parent.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    rid = repro_id(paths, cfg)
    query = f"tags.repro_id = '{rid}' and tags.{PIPELINE_RUN_TAG} = 'true'"
    found = client.search_runs([experiment_id], query, max_results=1, order_by=_OLDEST_FIRST)
    if found:
        return found[0].info.run_id
    tags = {
        "repro_id": rid,
        PIPELINE_RUN_TAG: "true",
        "git_commit": git_commit(paths.root),
        "data_source": cfg.data.source,
        "params_hash": cfg.params_hash(),
    }
    mine = client.create_run(experiment_id, tags=tags, run_name=f"pipeline · {rid}").info.run_id
    winner = client.search_runs([experiment_id], query, max_results=1, order_by=_OLDEST_FIRST)
    keep = winner[0].info.run_id if winner else mine
    if keep != mine:
        log.info("pipeline run of %s was created by another stage too; nesting under %s", rid, keep)
        client.delete_run(mine)
    return keep


# Oldest first, the run id breaking a tie of equal start times: every racer picks the same.
_OLDEST_FIRST = ["attributes.start_time ASC", "attributes.run_id ASC"]


def _mark_pipeline_run(run_id: str, status: str) -> None:
    """RUNNING while a stage runs, then the stage's outcome: the parent's end time and
    status are those of the latest stage."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


_NOT_SOURCE = tuple(
    f":(exclude){p}" for p in ("dvc.lock", "reports", "models", "data", "mlflow.db", "retrain.log")
)


def git_commit(root: Path) -> str:
    """HEAD's commit, with '-dirty' when tracked files changed; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # dvc.lock and stage outputs change during a `dvc repro` itself; they
        # must not flip the commit tag between the stages of one run.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_SOURCE],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def data_version(paths: Paths) -> str:
    """The prepared manifest's content hash, the dataset's version."""
    try:
        meta = json.loads(paths.prepared_meta.read_text())
        return str(meta["manifest_hash"])
    except (OSError, ValueError, KeyError):
        pass
    if paths.manifest.exists():
        return hashlib.sha256(paths.manifest.read_bytes()).hexdigest()[:12]
    return "none"


def repro_id(paths: Paths, cfg: Config) -> str:
    """An id shared by all runs of one pipeline execution.

    Entry scripts (quickstart, retrain) set it in the environment; under
    `mlflow run` it is the entry point's run id (the parent of every stage
    run); under a bare `dvc repro` every stage derives the same value from the
    commit, data version and params, which only change between runs.
    """
    explicit = os.environ.get(REPRO_ID_ENV, "").strip()
    if explicit:
        if not _REPRO_ID_PATTERN.fullmatch(explicit):
            raise TrackingError(
                f"{REPRO_ID_ENV}={explicit!r}: use 1-64 letters, digits and . _ - : "
                "(it is matched in MLflow search filters, where quotes and spaces break)"
            )
        return explicit
    parent = os.environ.get(PARENT_RUN_ENV, "").strip()
    if parent:
        return f"mlflow-run-{parent}"
    key = f"{git_commit(paths.root)}|{data_version(paths)}|{cfg.params_hash()}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def common_tags(paths: Paths, cfg: Config, stage: str, variant: str | None) -> dict[str, str]:
    tags = {
        "stage": stage,
        "git_commit": git_commit(paths.root),
        "data_version": data_version(paths),
        "params_hash": cfg.params_hash(),
        "repro_id": repro_id(paths, cfg),
        "data_source": cfg.data.source,
    }
    if variant is not None:
        tags["variant"] = variant
        tags["variant_params_hash"] = cfg.variant(variant).params_hash()
    return tags


PID_TAG, HOST_TAG = "pipeline_pid", "pipeline_host"


def end_dead_runs(experiment_id: str, keep: str | None = None) -> list[str]:
    """Mark KILLED every run of the experiment still RUNNING whose stage process, on
    this host, is gone (kill -9, a full disk, a power cut): the UI then shows what
    happened to it. `keep`: a run about to be resumed. Returns the runs marked."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.{HOST_TAG} = '{host}'"
    ended = []
    for run in client.search_runs([experiment_id], query, max_results=200):
        pid = run.data.tags.get(PID_TAG, "")
        if run.info.run_id == keep or not pid.isdigit() or pid_alive(int(pid)):
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        ended.append(run.info.run_id)
    if ended:
        log.info("marked %d run(s) of dead stage processes KILLED", len(ended))
    return ended


@contextlib.contextmanager
def stage_run(
    paths: Paths,
    cfg: Config,
    stage: str,
    variant: str | None = None,
    resume_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    system_metrics: bool = False,
) -> Iterator[Any]:
    """An MLflow run for one stage (and variant), ended FAILED on an exception.

    Args:
        resume_run_id: continue this run instead of starting one (a resumed
            training after a kill keeps its run and its epoch history).
        parent_run_id: the active run to nest this one under (a variant's
            extra training seeds are children of its train run).
        run_name: instead of `<stage> · <variant>`.
        system_metrics: sample CPU and memory into the run (`system/` metrics) while
            it is open; `mlflow.system_metrics` in params.yaml switches it off.
    """
    import mlflow

    configure(paths)
    experiment_id = ensure_experiment(paths, cfg.mlflow.experiment)
    tags = common_tags(paths, cfg, stage, variant)  # before the pop: repro_id reads it
    tags.update({PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    end_dead_runs(experiment_id, keep=resume_run_id)
    parent = os.environ.pop(PARENT_RUN_ENV, None)
    # Under `mlflow run` its run is the parent; else the pipeline run of this repro_id.
    grouping = None if (parent_run_id or parent) else pipeline_run(paths, cfg, experiment_id)
    tags["mlflow.parentRunId"] = parent_run_id or parent or grouping
    tags.update(extra_tags or {})
    run_name = run_name or (f"{stage} · {variant}" if variant else stage)
    nested = parent_run_id is not None
    if grouping:
        _mark_pipeline_run(grouping, "RUNNING")
    system = system_metrics and cfg.mlflow.system_metrics
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id, nested=nested, log_system_metrics=system)
        mlflow.set_tags(tags)
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags=tags,
            nested=nested,
            log_system_metrics=system,
        )
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)
        if grouping:
            _mark_pipeline_run(grouping, status)
        if parent:
            os.environ[PARENT_RUN_ENV] = parent


# --- validate: tags, metrics and files of the active run ---


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active run, for tags known only once the stage's work is done."""
    import mlflow

    mlflow.set_tags(tags)


def log_artifact(file: Path, folder: str | None = None) -> None:
    """Copy one file into the active run's artifacts, under `folder` when given."""
    import mlflow

    mlflow.log_artifact(str(file), artifact_path=folder)


# --- train: run logging, resume checks and the Keras model (pipeline.train, fitting) ---


def log_params(params: dict[str, Any]) -> None:
    """Parameters of the active run."""
    import mlflow

    mlflow.log_params(params)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Metrics of the active run (at `step`, e.g. a 1-based epoch)."""
    import mlflow

    mlflow.log_metrics(metrics, step=step)


# MLflow's chart view files a metric named "<section>/<name>" under a collapsible
# section of its own; unprefixed names go to "Model metrics". MLflow 3.17 lists the
# named sections alphabetically, then "Model metrics" and "System metrics" last, so
# the per-epoch curves a user came to compare (val_loss, val_accuracy, gap_accuracy,
# ...) are `curves/...`, which sorts first, and every summary number goes into a
# section of its own below them.
SECTION_CURVES = "curves"  # per epoch, step = the 1-based epoch (history.EPOCH_METRICS)
SECTION_TRAINING = "training"  # a train run's summary: best epoch, stopping, speed, size
SECTION_EVAL = "eval"  # evaluate's scores and diagnosis of the saved model
SECTION_SEEDS = "seeds"  # across-seed spread of a variant
SECTION_SUBSET = "subset"  # a learning-curve point's scores on its subset
SECTION_VALIDATE = "validate"  # the data checks' numbers
SECTION_PIPELINE = "pipeline"  # evaluate's answer for the whole pipeline
SECTION_RETRAIN = "retrain"  # the retrain gate


def sectioned(section: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """`metrics` named `<section>/<name>`, so the MLflow UI groups them under `section`."""
    return {f"{section}/{key}": float(value) for key, value in metrics.items()}


def log_epoch(metrics: Mapping[str, float], epoch: int) -> None:
    """One epoch's curves (`curves/<name>`, step = the 1-based epoch) into the active run."""
    log_metrics(sectioned(SECTION_CURVES, metrics), step=epoch)


def logged_epochs(run_id: str) -> set[int]:
    """The epochs whose curves run `run_id` holds."""
    return metric_steps(run_id, f"{SECTION_CURVES}/val_loss")


def log_text(text: str, artifact_file: str) -> None:
    """A text artifact of the active run."""
    import mlflow

    mlflow.log_text(text, artifact_file)


def run_exists(run_id: str | None) -> bool:
    """Whether the tracking backend has a run with this id."""
    if not run_id:
        return False
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def end_run_as_killed(run_id: str) -> bool:
    """End run `run_id` as KILLED if it is still RUNNING; True when it was.

    A training killed hard (SIGKILL, OOM) never ends its run. When its resume
    state is then discarded, nothing will continue that run, and the UI would
    show it live forever. A missing run, a finished one and the active one are
    left alone.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    active = mlflow.active_run()
    if run.info.status != "RUNNING" or (active and active.info.run_id == run_id):
        return False
    client.set_terminated(run_id, status="KILLED")
    return True


def metric_steps(run_id: str, key: str) -> set[int]:
    """The steps at which `key` was logged in the run."""
    from mlflow.tracking import MlflowClient

    return {m.step for m in MlflowClient().get_metric_history(run_id, key)}


def log_keras_model(model: Any, input_example: Any) -> str:
    """Log the model with MLflow's Keras 3 flavour (signature + input example).

    Returns the logged model's URI (registrable with mlflow.register_model).
    """
    import io

    import numpy as np
    from mlflow.models import Model, infer_signature

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    # MLflow checks the input example by predicting; keep Keras's progress bar
    # out of the stage's output.
    with contextlib.redirect_stdout(io.StringIO()):
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_KerasFlavorWithExample(),
            model=model,
            signature=signature,
            input_example=example,
            pip_requirements=model_requirements(),
            # MLflow would reload the saved model to predict on the example; the
            # signature above already came from predicting on it.
            validate_serving_input=False,
        )
    return info.model_uri


def model_requirements() -> list[str]:
    """keras plus the installed TensorFlow backend, pinned.

    Given explicitly because inferring them would reload the model in a
    subprocess, and MLflow's Keras default lists keras alone.
    """
    from importlib import metadata

    import mlflow.keras

    requirements = list(mlflow.keras.get_default_pip_requirements())
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            requirements.append(f"{dist}=={metadata.version(dist)}")
            break
        except metadata.PackageNotFoundError:
            continue
    return requirements


class _KerasFlavorWithExample:
    """mlflow.keras, except that save_model creates its target directory first.

    mlflow.keras.save_model writes input_example.json before creating the model
    directory, so `mlflow.keras.log_model(..., input_example=...)` fails with
    FileNotFoundError (mlflow/mlflow#16183, still open in MLflow 3.17).
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path, **kwargs):
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        kwargs.pop("validate_serving_input", None)  # Model.log's option, not save_model's
        return mlflow.keras.save_model(path=path, **kwargs)


# --- evaluate: runs other than the active one, and the model registry ---


def log_to_run(
    run_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    texts: Mapping[str, str] | None = None,
    artifacts: Mapping[str, Sequence[Path]] | None = None,
) -> None:
    """Log into a run by id, active or finished (evaluate annotates the train runs).

    Args:
        metrics: logged at step 0 in one batch.
        texts: artifact file name -> its text.
        artifacts: artifact directory ("" = the root) -> local files, or directories whose
            contents go there.
    """
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    for directory, local_paths in (artifacts or {}).items():
        for path in local_paths:
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), directory or None)
            else:
                client.log_artifact(run_id, str(path), directory or None)


def register_model_version(model_uri: str, name: str, tags: Mapping[str, str], alias: str) -> int:
    """Register `model_uri` as a new version of `name` with `tags`, point `alias` at it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow.register_model(model_uri, name, tags=dict(tags))
    except MlflowException as exc:
        raise TrackingError(f"could not register {model_uri} as {name!r}: {exc.message}") from None
    set_registered_alias(name, alias, version.version)
    return int(version.version)


# --- retrain: registry aliases, model-version tags, models by URI, run metrics ---

CHAMPION = "champion"  # the version that serves; only the retrain gate moves it
CHALLENGER = "challenger"  # the newest best variant; evaluate moves it


def registered_aliases(name: str) -> dict[str, str]:
    """alias -> version of registered model `name`; {} when the model does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def model_version(name: str, version: str) -> Any:
    """The registry's ModelVersion (`.version`, `.tags`, `.run_id`) of `name`."""
    import mlflow

    return mlflow.MlflowClient().get_model_version(name, version)


def set_registered_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` of registered model `name` at `version`."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def set_model_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    """Set each of `tags` on version `version` of registered model `name`."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def load_model(model_uri: str) -> Any:
    """An MLflow model (pyfunc flavour, `.predict`) by URI, e.g. ``models:/name/3``."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri)


def model_input_shape(model: Any) -> tuple[int, ...] | None:
    """The per-image input shape from a loaded model's MLflow signature, when it has one."""
    try:
        schema = model.metadata.get_input_schema()
        spec = schema.inputs[0]
        shape = tuple(int(d) for d in spec.shape)
    except (AttributeError, IndexError, TypeError):
        return None
    return shape[1:] if len(shape) > 1 else None


def read_artifact_bytes(artifact_uri: str) -> bytes:
    """The bytes of one artifact file (runs:/<run id>/<path>), downloaded to a temp dir."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp)
        return Path(local).read_bytes()


def model_output_width(model: Any) -> int | None:
    """The number of outputs (classes) from a loaded model's MLflow signature, if any."""
    try:
        width = int(model.metadata.get_output_schema().inputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return width if width > 0 else None


def log_metrics_and_record(metrics: dict[str, float], record: Any, artifact_file: str) -> None:
    """Log `metrics` (when any) and `record` as JSON artifact `artifact_file` to the active run."""
    import mlflow

    if metrics:
        log_metrics(metrics)
    mlflow.log_dict(record, artifact_file)


# --- overfit diagnose --mlflow-run: any run's curves, sizes and model (pipeline.overfit) ---


def read_run(run_id: str, wanted: Any) -> dict[str, Any]:
    """What a diagnosis needs from any MLflow run, this project's or autolog's.

    Args:
        wanted: a predicate on metric names; only those metrics' full histories are read.

    Returns:
        {"histories": {metric: {step: value}}, "params": {...}, "tags": {...},
        "dataset_rows": {context: rows} (autolog's train / eval datasets),
        "output_width": the logged model's output width (classes) or None}

    Raises:
        TrackingError: no such run.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_reachable(_shown_uri())
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(
            f"no MLflow run {run_id!r} in {_shown_uri()}: {exc.message.splitlines()[0]}"
        ) from None
    histories = {
        key: {int(m.step): float(m.value) for m in client.get_metric_history(run_id, key)}
        for key in run.data.metrics
        if wanted(key)
    }
    return {
        "histories": histories,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "dataset_rows": _dataset_rows(run),
        "output_width": _logged_model_width(run),
    }


def _shown_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _dataset_rows(run: Any) -> dict[str, int]:
    """Rows of the datasets a run logged as inputs (mlflow.data), by their context tag."""
    rows: dict[str, int] = {}
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
        try:
            profile = json.loads(item.dataset.profile or "{}")
        except ValueError:
            continue
        shape = profile.get("features_shape") or profile.get("targets_shape")
        count = profile.get("num_rows", shape[0] if isinstance(shape, list) and shape else None)
        if isinstance(count, int) and count > 0 and context:
            rows[context] = count
    return rows


def _logged_model_width(run: Any) -> int | None:
    """The output width of the first model the run logged (MLflow 3 logged models)."""
    import mlflow

    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    for output in outputs:
        try:
            info = mlflow.models.get_model_info(f"models:/{output.model_id}")
            width = int(info.signature.outputs.inputs[0].shape[-1])
        except Exception:  # noqa: BLE001 - no signature, no shape: the width stays unknown
            continue
        if width > 0:
            return width
    return None


NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI


def verdict_tags(diagnosis: Mapping[str, Any]) -> dict[str, str]:
    """A diagnosis (an evaluation.json variant entry, or Diagnosis.to_dict()) as the run
    tags the UI shows beside the run: the verdicts, the grade, the label."""
    return {
        "verdict": diagnosis["verdict"],
        "model_verdict": diagnosis["model_verdict"],
        # The verdict as the report shows it: "overfitting (mild)", "cannot tell yet".
        "verdict_grade": diagnosis["grade"],
        "verdict_label": diagnosis["label"],
    }


def verdict_note(diagnosis: Mapping[str, Any]) -> str:
    """The run's description: the answer, then its evidence (Markdown)."""
    evidence = [f"- {line}" for line in diagnosis["evidence"]]
    return "\n".join([f"**{diagnosis['summary']}**", "", *evidence])


def write_diagnosis(run_id: str, record: Mapping[str, Any], page: Path | None) -> None:
    """A diagnosis onto an existing run: verdict tags (the names evaluate gives this
    project's runs), diagnosis.json, the HTML page; the run's description only when it
    has none (a user's own note stays)."""
    from mlflow.tracking import MlflowClient

    tags = {**verdict_tags(record), "verdict_summary": record["summary"][:4000]}
    if not MlflowClient().get_run(run_id).data.tags.get(NOTE_TAG):
        tags[NOTE_TAG] = verdict_note(record)
    log_to_run(
        run_id,
        tags=tags,
        texts={"diagnosis.json": json.dumps(record, indent=2, default=str)},
        artifacts={"": [page]} if page is not None else None,
    )


def active_or_new_run(name: str, resume: str | None = None) -> tuple[str, bool]:
    """(the active run's id, False), or run `resume` reopened, or a new run named `name`
    started now ((id, True) for both); for the Keras callback inside a user's own fit."""
    import mlflow

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id, False
    check_reachable(_shown_uri())
    if resume:
        return mlflow.start_run(run_id=resume).info.run_id, True
    return mlflow.start_run(run_name=name).info.run_id, True


def local_store_exists() -> bool:
    """Whether the tracking store MLflow would use is set explicitly or already exists
    (MLflow would otherwise create an empty ./mlflow.db just to find nothing in it)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    return Path("mlflow.db").is_file()


def end_active_run() -> None:
    """End the active run (one `active_or_new_run` started)."""
    import mlflow

    mlflow.end_run()


def log_missing_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Parameters of run `run_id` that it does not hold yet (MLflow refuses to change one)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    held = client.get_run(run_id).data.params
    for key, value in params.items():
        if key not in held:
            client.log_param(run_id, key, value)
