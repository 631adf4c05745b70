"""Scheduled retraining: lock -> dvc status -> dvc repro -> gate -> promote.

Run from the project root by cron, a systemd timer or CI as
``python -m pipeline.retrain`` (see deploy/). One run:

1. Takes ``retrain.lock`` (an fcntl lock that vanishes with its process; the
   file records pid, host and start time). A second run exits with
   ``EXIT_LOCKED``. A lock recorded on this host is taken over only when its
   process is gone: a live run is never overlapped, however long it takes (a
   hung one must be stopped; cron does not). Only a lock recorded by another
   host (a shared filesystem), whose process cannot be checked, is taken over
   by age: once older than ``retrain.lock_stale_seconds``.
2. Asks ``dvc status --json`` whether data, params or code changed.
3. Only when something changed, runs ``dvc repro`` (output streamed) with
   ``PIPELINE_REPRO_ID`` set to a fresh id, so every MLflow run of this retrain
   shares one ``repro_id`` tag. Then, with or without a repro, there may be
   nothing new to decide: the challenger is the champion, retrain already
   decided on this challenger version (see 5), or nothing changed and there is
   only a champion. That is ``EXIT_UP_TO_DATE``, with no MLflow run when there
   was no repro. A challenger nobody decided on yet (e.g. registered by a
   manual ``dvc repro``) is gated even when nothing changed.
4. Scores the challenger (alias ``challenger`` of ``registry.model_name``,
   registered by evaluate) and the champion (alias ``champion``) on the same,
   current test split of data/prepared/. The aliases are resolved once to
   version numbers and the versions loaded, so an alias moved mid-run cannot
   mix two models.
5. Promotes the challenger (moves alias ``champion``) only when every gate of
   params.yaml ``retrain`` passes (`gates`); otherwise keeps the champion and
   records every failed gate with its numbers. The decision is kept as tags
   on the challenger's model version (``retrain_decision``, ``retrain_champion``,
   ``retrain_gates``, ``retrain_reasons``, ``retrain_repro_id``): a rejected
   version is judged again only when the champion or the gate settings have
   changed; a version once promoted is never re-promoted over a manual rollback.
6. Writes reports/retrain.json and an MLflow run (stage ``retrain``) with the
   decision, reasons, gates, both accuracies and versions. A run that found
   nothing to do writes only reports/retrain.json, so an hourly schedule does
   not fill the experiment with empty runs.

Any failure after the lock (dvc fails, a model does not load, MLflow is down)
leaves the champion alias untouched and writes decision ``failed``.

Inputs: params.yaml (``retrain``, ``registry``, ``mlflow``), dvc.yaml and
dvc.lock, data/prepared/ (test split), reports/validation.json,
reports/evaluation.json, the registry aliases. Outputs: reports/retrain.json,
the ``champion`` alias and the challenger's decision tags, an MLflow run,
retrain.lock.

Exit codes (distinct, so a scheduler can tell outcomes apart):

    0   up to date: no new challenger, or one already decided on; nothing promoted
    1   failed: a step failed; champion untouched; see reports/retrain.json
    2   user error: invalid params.yaml or similar (pipeline.cli)
    3   promoted: the challenger is the new champion
    4   rejected: the challenger failed a gate; the champion (if any) stays
    75  locked (EX_TEMPFAIL): another retrain holds retrain.lock; try later

``--exit-zero`` maps 3 and 4 to 0 for launchers that treat any non-zero code
as a failed job (the MLproject entry point uses it). ``PIPELINE_DVC``
overrides the dvc command (default: this interpreter's ``python -m dvc``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline import tracking
from pipeline.cli import StageError, run_stage
from pipeline.config import Config, RetrainConfig, load_config
from pipeline.io import write_json_atomic
from pipeline.paths import Paths
from pipeline.prepared import predict_in_batches

log = logging.getLogger(__name__)

EXIT_UP_TO_DATE = 0
EXIT_FAILED = 1
EXIT_PROMOTED = 3
EXIT_REJECTED = 4
EXIT_LOCKED = 75

EXIT_CODES = {
    "up_to_date": EXIT_UP_TO_DATE,
    "failed": EXIT_FAILED,
    "promoted": EXIT_PROMOTED,
    "rejected": EXIT_REJECTED,
}
CHAMPION = "champion"
CHALLENGER = "challenger"
# Model-version tags holding a retrain's decision on that version (see `judgement_tags`).
DECISION_TAG = "retrain_decision"
JUDGED_AGAINST_TAG = "retrain_champion"  # champion version then, or NO_CHAMPION
GATES_TAG = "retrain_gates"  # gates_fingerprint of params.yaml `retrain` then
REASONS_TAG = "retrain_reasons"
DECIDED_BY_TAG = "retrain_repro_id"
NO_CHAMPION = "none"
DVC_ENV = "PIPELINE_DVC"


class RetrainError(RuntimeError):
    """A step of the retrain failed; the champion is left as it was."""


# --------------------------------------------------------------------------- lock


class LockHeldError(RuntimeError):
    """Another retrain holds the lock and may not be taken over."""


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the process that took it."""

    pid: int
    host: str
    started_at: float

    def describe(self) -> str:
        started = dt.datetime.fromtimestamp(self.started_at, dt.UTC).isoformat(timespec="seconds")
        return f"pid {self.pid} on {self.host}, started {started}"


def read_holder(path: Path) -> LockHolder | None:
    """The lock file's metadata, or None when absent, empty or unreadable."""
    try:
        raw = json.loads(path.read_text() or "null")
        return LockHolder(int(raw["pid"]), str(raw["host"]), float(raw["started_at"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(
    holder: LockHolder | None, stale_seconds: int, now: float, host: str | None = None
) -> str | None:
    """Why a *held* lock may be taken over, or None when it must be respected.

    On this host (`host`, default this machine's name) only a dead holder is
    taken over, however old its lock: cron does not stop a hung run, so taking
    over a live one by age would let two retrains run at once. Age decides only
    when the holder cannot be checked: it recorded another host (a lock file on
    a shared filesystem). A held lock without metadata belongs to a run that
    has just locked and not yet written its pid: respect it.
    """
    if holder is None:
        return None
    if holder.host == (host or socket.gethostname()):
        return None if pid_alive(holder.pid) else f"its process ({holder.describe()}) is gone"
    age = now - holder.started_at
    if age > stale_seconds:
        return (
            f"it is {age:.0f} s old ({holder.describe()}), older than "
            f"retrain.lock_stale_seconds = {stale_seconds}, and its host cannot be checked"
        )
    return None


def held_message(holder: LockHolder | None, path: Path, stale_seconds: int, now: float) -> str:
    """Why the lock is respected; names a possibly hung holder and how to end it."""
    if holder is None:
        return f"another retrain is running (a process that is starting); lock file {path}"
    message = f"another retrain is running ({holder.describe()}); lock file {path}"
    age = now - holder.started_at
    if age > stale_seconds:
        message += (
            f"; it has run {age:.0f} s, longer than retrain.lock_stale_seconds = "
            f"{stale_seconds}: if it is hung, stop it (kill {holder.pid} on {holder.host})"
        )
    return message


def acquire_lock(path: Path, stale_seconds: int, attempts: int = 3) -> IO[str]:
    """Lock `path` for this process and record pid, host and start time in it.

    Raises:
        LockHeldError: the holder lives on this host, or on another host and locked
            less than `stale_seconds` ago (see `stale_reason`).
    """
    for _ in range(attempts):
        handle = open(path, "a+")  # noqa: SIM115 - held until release_lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = read_holder(path)
            now = time.time()
            reason = stale_reason(holder, stale_seconds, now)
            if reason is None:
                raise LockHeldError(held_message(holder, path, stale_seconds, now)) from None
            # The old holder keeps its lock on the unlinked file; we lock a new one.
            log.warning("taking over %s: %s", path, reason)
            path.unlink(missing_ok=True)
            continue
        if not _is_current_file(handle, path):  # taken over between open and flock
            handle.close()
            continue
        leftover = read_holder(path)
        if leftover is not None:
            log.warning(
                "previous retrain (%s) ended without releasing %s", leftover.describe(), path
            )
        handle.seek(0)
        handle.truncate()
        json.dump(
            {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}, handle
        )
        handle.flush()
        os.fsync(handle.fileno())
        return handle
    raise LockHeldError(
        f"could not take {path} after {attempts} attempts; another retrain is racing"
    )


def _is_current_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def release_lock(handle: IO[str]) -> None:
    """Clear the metadata (a non-empty unlocked file then means a crashed run) and unlock."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def retrain_lock(path: Path, stale_seconds: int) -> Iterator[None]:
    handle = acquire_lock(path, stale_seconds)
    try:
        yield
    finally:
        release_lock(handle)


# --------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class ModelFacts:
    """What the gates need to know about one registered model version."""

    version: str
    variant: str | None = None
    test_accuracy: float | None = None  # on the current test split; None: cannot be scored
    gap_accuracy: float | None = None  # train - val accuracy, from evaluate
    verdict: str | None = None  # the saved model's: overfitting | underfitting | good_fit
    run_id: str | None = None
    note: str = ""  # why test_accuracy is None


@dataclass(frozen=True)
class ValidationFacts:
    """reports/validation.json, reduced to what the validation gate needs."""

    success: bool | None  # None: the report is missing or unreadable
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    reason: str
    observed: float | str | bool | None = None
    limit: float | str | bool | None = None
    applied: bool = True  # False: switched off in params.yaml or not applicable


def gates(
    cfg: RetrainConfig,
    challenger: ModelFacts,
    champion: ModelFacts | None,
    validation: ValidationFacts,
) -> list[GateResult]:
    """Every promotion gate of params.yaml `retrain`, in a fixed order.

    Unknown facts (no verdict, no gap, no validation report) fail their gate:
    a model is promoted on evidence, never on its absence.
    """
    return [
        _validation_gate(cfg, validation),
        _overfitting_gate(cfg, challenger),
        _accuracy_gate(cfg, challenger, champion),
        _gap_gate(cfg, challenger),
    ]


def _validation_gate(cfg: RetrainConfig, validation: ValidationFacts) -> GateResult:
    name = "validation"
    if not cfg.require_validation_success:
        return GateResult(
            name,
            True,
            "not required (retrain.require_validation_success: false)",
            validation.success,
            None,
            applied=False,
        )
    if validation.success is None:
        return GateResult(
            name, False, "reports/validation.json is missing or unreadable", None, True
        )
    if validation.success:
        return GateResult(name, True, "data validation passed", True, True)
    parts = [
        f"{kind}: {', '.join(names)}"
        for kind, names in (("errors", validation.errors), ("warnings", validation.warnings))
        if names
    ]
    detail = f" ({'; '.join(parts)})" if parts else ""
    return GateResult(name, False, f"data validation failed{detail}", False, True)


def _overfitting_gate(cfg: RetrainConfig, challenger: ModelFacts) -> GateResult:
    name = "not_overfitting"
    if not cfg.reject_overfitting:
        return GateResult(
            name,
            True,
            "not required (retrain.reject_overfitting: false)",
            challenger.verdict,
            None,
            applied=False,
        )
    if challenger.verdict is None:
        return GateResult(
            name,
            False,
            f"no verdict recorded for challenger v{challenger.version}",
            None,
            "not overfitting",
        )
    if challenger.verdict == "overfitting":
        return GateResult(
            name,
            False,
            f"challenger v{challenger.version} ({challenger.variant}): its saved model is "
            "diagnosed as overfitting",
            challenger.verdict,
            "not overfitting",
        )
    return GateResult(
        name, True, f"verdict {challenger.verdict}", challenger.verdict, "not overfitting"
    )


def _accuracy_gate(
    cfg: RetrainConfig, challenger: ModelFacts, champion: ModelFacts | None
) -> GateResult:
    name = "accuracy_vs_champion"
    tol = cfg.accuracy_tolerance
    if challenger.test_accuracy is None:
        return GateResult(
            name, False, f"challenger v{challenger.version} has no test accuracy", None, None
        )
    if champion is None:
        return GateResult(
            name,
            True,
            "no champion yet: nothing to compare against",
            challenger.test_accuracy,
            None,
            applied=False,
        )
    if champion.test_accuracy is None:
        # The champion cannot read today's data (e.g. data.image_size changed):
        # the comparison is impossible, not lost, so the other gates decide.
        return GateResult(
            name,
            True,
            f"champion v{champion.version} cannot be compared: {champion.note}",
            challenger.test_accuracy,
            None,
            applied=False,
        )
    limit = champion.test_accuracy - tol
    numbers = (
        f"challenger v{challenger.version} test accuracy {challenger.test_accuracy:.4f} "
        f"vs champion v{champion.version} {champion.test_accuracy:.4f} "
        f"- tolerance {tol:g} = {limit:.4f}"
    )
    if challenger.test_accuracy >= limit:
        return GateResult(name, True, numbers, challenger.test_accuracy, limit)
    return GateResult(
        name, False, f"accuracy below champion: {numbers}", challenger.test_accuracy, limit
    )


def _gap_gate(cfg: RetrainConfig, challenger: ModelFacts) -> GateResult:
    name = "gap"
    if challenger.gap_accuracy is None:
        return GateResult(
            name,
            False,
            f"no train-val accuracy gap recorded for challenger v{challenger.version}",
            None,
            cfg.max_gap,
        )
    numbers = (
        f"train-val accuracy gap {challenger.gap_accuracy:.4f} "
        f"(limit retrain.max_gap = {cfg.max_gap:g})"
    )
    if challenger.gap_accuracy <= cfg.max_gap:
        return GateResult(name, True, numbers, challenger.gap_accuracy, cfg.max_gap)
    return GateResult(
        name, False, f"gap too large: {numbers}", challenger.gap_accuracy, cfg.max_gap
    )


def decide(results: Sequence[GateResult]) -> tuple[str, list[str]]:
    """("promoted", []) when every gate passed, else ("rejected", failed gates' reasons)."""
    failed = [f"{r.name}: {r.reason}" for r in results if not r.passed]
    return ("rejected", failed) if failed else ("promoted", [])


# --------------------------------------------------------------------------- facts


def read_validation(path: Path) -> ValidationFacts:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return ValidationFacts(success=None)
    return ValidationFacts(
        success=bool(report.get("success")),
        errors=tuple(report.get("errors") or ()),
        warnings=tuple(report.get("warnings") or ()),
    )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def version_facts(version: Any, evaluation: dict[str, Any] | None) -> ModelFacts:
    """Facts of a registry ModelVersion; tags first, then evaluation.json's entry.

    The model-version tags belong to exactly this version; evaluation.json only
    describes the latest evaluate run, so it only fills what the tags lack.
    """
    tags = dict(version.tags or {})
    variant = tags.get("variant")
    entry = ((evaluation or {}).get("variants") or {}).get(variant or "", {}) or {}
    gap = _float(tags.get("gap_accuracy"))
    if gap is None:
        gap = _float((entry.get("gap") or {}).get("accuracy"))
    return ModelFacts(
        version=str(version.version),
        variant=variant,
        gap_accuracy=gap,
        # The gate judges the served weights: the saved model's own verdict
        # (older versions carry only the overall one).
        verdict=tags.get("model_verdict")
        or tags.get("verdict")
        or entry.get("model_verdict")
        or entry.get("verdict"),
        run_id=version.run_id,
    )


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest-probability class is the label."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            f"predictions of shape {probabilities.shape} do not match {len(labels)} labels"
        )
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


def expected_input_shape(model: Any) -> tuple[int, ...] | None:
    """The per-image input shape from the model's MLflow signature, when it has one."""
    try:
        schema = model.metadata.get_input_schema()
        spec = schema.inputs[0]
        shape = tuple(int(d) for d in spec.shape)
    except (AttributeError, IndexError, TypeError):
        return None
    return shape[1:] if len(shape) > 1 else None


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities for raw pixels, in chunks (x may be memory-mapped)."""
    return predict_in_batches(model.predict, x)


def score(model_uri: str, x: np.ndarray, y: np.ndarray) -> tuple[float | None, str]:
    """(test accuracy, note); accuracy None when the model's input shape differs from x's.

    Raises:
        RetrainError: the model does not load or predict.
    """
    import mlflow.pyfunc

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise RetrainError(f"cannot load {model_uri}: {type(exc).__name__}: {exc}") from exc
    wanted = expected_input_shape(model)
    if wanted is not None and all(d > 0 for d in wanted) and wanted != tuple(x.shape[1:]):
        return None, (
            f"{model_uri} expects images of shape {wanted}, the current test set "
            f"has {tuple(x.shape[1:])}"
        )
    try:
        return accuracy(predict(model, x), y), ""
    except Exception as exc:
        raise RetrainError(f"cannot score {model_uri}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- dvc


def dvc_command() -> list[str]:
    """The dvc command: $PIPELINE_DVC when set, else this interpreter's `python -m dvc`."""
    override = os.environ.get(DVC_ENV, "").strip()
    return shlex.split(override) if override else [sys.executable, "-m", "dvc"]


def child_env(repro_id: str) -> dict[str, str]:
    """The environment for dvc: the repro id, and this interpreter's bin dir first on
    PATH so the stages' `python -m pipeline.<stage>` find this environment's packages
    even under cron's bare PATH."""
    env = dict(os.environ)
    env[tracking.REPRO_ID_ENV] = repro_id
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")]) if env.get("PATH") else bindir
    return env


def parse_dvc_status(stdout: str) -> dict[str, Any]:
    """`dvc status --json` output -> {stage: changes}; {} means up to date."""
    text = stdout.strip()
    candidates = [text, *reversed(text.splitlines())]
    for candidate in candidates:
        try:
            parsed = json.loads(candidate or "{}")
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    raise RetrainError(f"cannot parse `dvc status --json` output: {text[:300]!r}")


def dvc_status(root: Path, dvc: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [*dvc, "status", "--json"]
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise RetrainError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise RetrainError(
            f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return parse_dvc_status(done.stdout)


def dvc_repro(root: Path, dvc: Sequence[str], env: dict[str, str]) -> None:
    """Run `dvc repro`, its output streaming to ours."""
    cmd = [*dvc, "repro"]
    log.info("running %s in %s", shlex.join(cmd), root)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        code = subprocess.run(cmd, cwd=root, env=env).returncode
    except OSError as exc:
        raise RetrainError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
    if code != 0:
        raise RetrainError(f"{shlex.join(cmd)} exited {code}; the champion was left as it was")


# --------------------------------------------------------------------------- registry


def aliases(client: Any, name: str) -> dict[str, str]:
    """alias -> version of registered model `name`; {} when the model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def gates_fingerprint(cfg: RetrainConfig) -> str:
    """Short hash of the gate settings: everything in params.yaml `retrain` but the lock's.

    params.yaml `retrain` is no DVC dependency, so `dvc status` cannot tell that a
    gate changed; this hash, kept with each decision, can.
    """
    settings = cfg.model_dump(mode="json", exclude={"lock_stale_seconds"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def judgement_tags(
    decision: str,
    reasons: Sequence[str],
    champion_version: str | None,
    fingerprint: str,
    repro_id: str,
) -> dict[str, str]:
    """The model-version tags that remember a retrain's decision on a challenger."""
    return {
        DECISION_TAG: decision,
        JUDGED_AGAINST_TAG: champion_version or NO_CHAMPION,
        GATES_TAG: fingerprint,
        REASONS_TAG: "\n".join(reasons)[:4000],
        DECIDED_BY_TAG: repro_id,
    }


def earlier_judgement(
    tags: Mapping[str, str], champion_version: str | None, fingerprint: str
) -> list[str] | None:
    """Why the challenger with these tags needs no new decision, or None when it does.

    A rejected version is judged again only when the champion or the gate
    settings differ from when it was rejected: the data, code and params it was
    scored on are the ones `dvc status` checks. A version once promoted is never
    judged again: it is not the champion now only because someone moved the
    alias (a rollback), and retrain must not undo that.
    """
    decision = tags.get(DECISION_TAG) or ("promoted" if "promoted_at" in tags else None)
    by = tags.get(DECIDED_BY_TAG) or tags.get("promoted_by_repro_id") or "?"
    if decision == "promoted":
        return [
            f"was promoted by retrain {by} and the champion alias has been moved "
            "since (a rollback?); that choice is kept"
        ]
    if decision != "rejected":
        return None
    if tags.get(JUDGED_AGAINST_TAG) != (champion_version or NO_CHAMPION):
        return None
    if tags.get(GATES_TAG) != fingerprint:
        return None
    against = f"champion v{champion_version}" if champion_version else "no champion"
    earlier = [r for r in (tags.get(REASONS_TAG) or "").split("\n") if r]
    return [
        f"was already rejected by retrain {by} (against {against}, same gates); "
        "it is judged again with another champion or other gates",
        *earlier,
    ]


def tag_version(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Best effort: the decision is already made; a missing tag costs one re-judgement."""
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    except Exception as exc:
        log.warning("could not tag %s v%s with the retrain decision: %s", name, version, exc)


# --------------------------------------------------------------------------- orchestration


@dataclass
class Outcome:
    """Everything reports/retrain.json and the MLflow run record."""

    decision: str
    reasons: list[str] = field(default_factory=list)
    model_name: str = ""
    repro_id: str = ""
    started_at: str = ""
    finished_at: str = ""
    dvc_changes: dict[str, Any] = field(default_factory=dict)
    reproduced: bool = False
    challenger: ModelFacts | None = None
    champion: ModelFacts | None = None  # the champion before this run
    champion_version_after: str | None = None
    gates: list[GateResult] = field(default_factory=list)
    test_set_size: int | None = None
    data_version: str | None = None
    mlflow_run_id: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["exit_code"] = self.exit_code
        return record


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_retrain(paths: Paths, cfg: Config, dvc: Sequence[str] | None = None) -> Outcome:
    """Steps 2-6 (the lock is the caller's). Never raises for a step failure:
    the outcome is then "failed" with the reason, and the champion is untouched."""
    repro_id = uuid.uuid4().hex[:12]
    outcome = Outcome(
        decision="failed", model_name=cfg.registry.model_name, repro_id=repro_id, started_at=_now()
    )
    os.environ[tracking.REPRO_ID_ENV] = repro_id  # our own MLflow run shares it
    try:
        _run_steps(paths, cfg, list(dvc or dvc_command()), outcome)
    except Exception as exc:  # any step: record it, never half-promote
        log.exception("retrain failed")
        outcome.decision = "failed"
        outcome.reasons = [
            str(exc) if isinstance(exc, RetrainError) else f"{type(exc).__name__}: {exc}"
        ]
    outcome.finished_at = _now()
    _record(paths, cfg, outcome)
    return outcome


def _run_steps(paths: Paths, cfg: Config, dvc: list[str], outcome: Outcome) -> None:
    import mlflow

    env = child_env(outcome.repro_id)
    outcome.dvc_changes = dvc_status(paths.root, dvc, env)
    tracking.configure(paths)
    client = mlflow.MlflowClient()
    name = cfg.registry.model_name
    current = aliases(client, name)
    champion_version = current.get(CHAMPION)
    outcome.champion_version_after = champion_version
    if outcome.dvc_changes:
        log.info("changed stages: %s", ", ".join(outcome.dvc_changes))
        dvc_repro(paths.root, dvc, env)
        outcome.reproduced = True
        current = aliases(client, name)
    unchanged = "" if outcome.reproduced else "data, params and code unchanged; "

    if CHALLENGER not in current:
        if not outcome.reproduced and champion_version is not None:
            outcome.decision = "up_to_date"
            outcome.reasons = [f"{unchanged}champion is v{champion_version}"]
            return
        hint = "" if outcome.reproduced else " (dvc status is clean: `dvc repro -f evaluate`)"
        raise RetrainError(
            f"registered model {name!r} has no {CHALLENGER!r} alias"
            f"{' after dvc repro' if outcome.reproduced else ''}; "
            f"the evaluate stage registers it{hint}"
        )
    if current[CHALLENGER] == champion_version:
        outcome.decision = "up_to_date"
        outcome.reasons = [
            f"{unchanged}champion is v{champion_version}"
            if unchanged
            else f"no new challenger: v{champion_version} is already the champion"
        ]
        return

    version = client.get_model_version(name, current[CHALLENGER])
    fingerprint = gates_fingerprint(cfg.retrain)
    earlier = earlier_judgement(dict(version.tags or {}), champion_version, fingerprint)
    if earlier is not None:
        # Scoring it again would only repeat the decision (and an MLflow run) every hour.
        outcome.decision = "up_to_date"
        outcome.reasons = [f"{unchanged}challenger v{version.version} {earlier[0]}", *earlier[1:]]
        return

    from pipeline.prepared import load_prepared

    prepared = load_prepared(paths.prepared_dir)
    x, y = prepared.x("test"), prepared.y("test")
    if len(y) == 0:
        raise RetrainError(f"the test split in {paths.prepared_dir} is empty")
    outcome.test_set_size = int(len(y))
    outcome.data_version = tracking.data_version(paths)
    _quiet_keras()

    evaluation = read_json(paths.evaluation_json)
    challenger = version_facts(version, evaluation)
    acc, note = score(f"models:/{name}/{challenger.version}", x, y)
    if acc is None:
        raise RetrainError(f"challenger cannot score the current test set: {note}")
    outcome.challenger = challenger = _with_accuracy(challenger, acc, note)
    champion = None
    if champion_version is not None:
        champion = version_facts(client.get_model_version(name, champion_version), evaluation)
        acc, note = score(f"models:/{name}/{champion_version}", x, y)
        outcome.champion = champion = _with_accuracy(champion, acc, note)

    outcome.gates = gates(cfg.retrain, challenger, champion, read_validation(paths.validation_json))
    outcome.decision, outcome.reasons = decide(outcome.gates)
    extra = {}
    if outcome.decision == "promoted":
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        outcome.champion_version_after = challenger.version
        previous = f" (was v{champion_version})" if champion_version else ""
        outcome.reasons = [f"every gate passed; v{challenger.version} is the champion{previous}"]
        extra = {"promoted_at": _now(), "promoted_by_repro_id": outcome.repro_id}
    # Remembered on the version itself (not in reports/retrain.json) so that a
    # fresh CI checkout sharing the registry knows it too.
    tag_version(
        client,
        name,
        challenger.version,
        {
            **judgement_tags(
                outcome.decision, outcome.reasons, champion_version, fingerprint, outcome.repro_id
            ),
            **extra,
        },
    )


def _with_accuracy(facts: ModelFacts, acc: float | None, note: str) -> ModelFacts:
    return ModelFacts(**{**asdict(facts), "test_accuracy": acc, "note": note})


def _quiet_keras() -> None:
    # Keras prints a progress bar per predict() call otherwise.
    with contextlib.suppress(ImportError):
        import keras

        keras.utils.disable_interactive_logging()


def _record(paths: Paths, cfg: Config, outcome: Outcome) -> None:
    """reports/retrain.json always; an MLflow run unless there was nothing to do."""
    if outcome.decision == "up_to_date" and not outcome.reproduced:
        write_json_atomic(paths.retrain_json, outcome.to_dict())
        return
    try:
        _log_run(paths, cfg, outcome)
    except Exception as exc:  # MLflow down must not hide the decision
        log.warning("could not record the retrain in MLflow: %s", exc)
        outcome.mlflow_run_id = None
        write_json_atomic(paths.retrain_json, outcome.to_dict())


def _log_run(paths: Paths, cfg: Config, outcome: Outcome) -> None:
    import mlflow

    tags = {
        "decision": outcome.decision,
        "challenger_version": outcome.challenger.version if outcome.challenger else "",
        "champion_version": outcome.champion.version if outcome.champion else "",
        "champion_version_after": outcome.champion_version_after or "",
    }
    with tracking.stage_run(paths, cfg, stage="retrain", extra_tags=tags) as run:
        outcome.mlflow_run_id = run.info.run_id
        record = outcome.to_dict()
        write_json_atomic(paths.retrain_json, record)
        metrics = {f"gate_{g.name}": float(g.passed) for g in outcome.gates}
        for role, facts in (("challenger", outcome.challenger), ("champion", outcome.champion)):
            if facts is not None and facts.test_accuracy is not None:
                metrics[f"{role}_test_accuracy"] = facts.test_accuracy
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(record, "retrain.json")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.retrain",
        description="Scheduled retraining: lock, dvc status, dvc repro, gate the challenger "
        "against the champion, promote or record why not (reports/retrain.json).",
        epilog="exit codes: 0 up to date | 1 failed (champion untouched) | 2 user error "
        "(params.yaml) | 3 promoted | 4 rejected (champion kept) | 75 locked (another retrain "
        f"is running). Environment: {DVC_ENV} overrides the dvc command.",
    )
    parser.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 instead of 3 (promoted) or 4 (rejected), for launchers that treat any "
        "non-zero code as a failed job; failures and lock contention keep their codes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    if not (paths.root / "dvc.yaml").exists():
        raise StageError(f"{paths.root / 'dvc.yaml'} not found; run retrain from the project root")
    try:
        with retrain_lock(paths.retrain_lock, cfg.retrain.lock_stale_seconds):
            outcome = run_retrain(paths, cfg)
    except LockHeldError as exc:
        print(f"retrain: locked, nothing done: {exc} (exit {EXIT_LOCKED})", file=sys.stderr)
        return EXIT_LOCKED
    summary = "; ".join(outcome.reasons) or outcome.decision
    print(
        f"retrain: {outcome.decision.replace('_', ' ')}: {summary} "
        f"-> {paths.retrain_json} (exit {outcome.exit_code})"
    )
    if args.exit_zero and outcome.exit_code in (EXIT_PROMOTED, EXIT_REJECTED):
        return 0
    return outcome.exit_code


if __name__ == "__main__":
    run_stage(main)
