"""What one scheduled retrain decided, and where that is kept.

`Outcome` is the record of one run: its decision (``up_to_date``, ``failed``,
``promoted``, ``rejected``), the reasons, both models' facts, every gate, the
test set and the dvc changes. `record_outcome` writes it to
reports/retrain.json always, and to an MLflow run (stage ``retrain``) unless
the run found nothing to do, so an hourly schedule does not fill the
experiment with empty runs.

Inputs: an `Outcome`. Outputs: reports/retrain.json, an MLflow run.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import tracking
from pipeline.config import Config
from pipeline.gates import GateResult, ModelFacts
from pipeline.io import write_json_atomic
from pipeline.paths import Paths

log = logging.getLogger(__name__)

# Distinct, so a scheduler can tell outcomes apart (2 is pipeline.cli's user error).
EXIT_UP_TO_DATE = 0
EXIT_FAILED = 1
EXIT_PROMOTED = 3
EXIT_REJECTED = 4
EXIT_LOCKED = 75  # EX_TEMPFAIL: another retrain holds the lock

EXIT_CODES = {
    "up_to_date": EXIT_UP_TO_DATE,
    "failed": EXIT_FAILED,
    "promoted": EXIT_PROMOTED,
    "rejected": EXIT_REJECTED,
}


class RetrainError(RuntimeError):
    """A step of the retrain failed; the champion is left as it was."""


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
    test_set_size: int | None = None  # the test images both models were scored on
    test_images_excluded: int | None = None  # in a model's train or val split: not used
    data_version: str | None = None
    mlflow_run_id: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["exit_code"] = self.exit_code
        return record


def now() -> str:
    """The current UTC time, to the second, as ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record_outcome(paths: Paths, cfg: Config, outcome: Outcome) -> None:
    """reports/retrain.json always; an MLflow run unless there was nothing to do."""
    if outcome.decision == "up_to_date" and not outcome.reproduced:
        write_json_atomic(paths.retrain_json, outcome.to_dict())
        return
    try:
        _log_run(paths, cfg, outcome)
    except Exception as exc:  # MLflow down must not hide the decision
        if str(exc) not in outcome.reasons:  # else the failure already says so, once
            log.warning("could not record the retrain in MLflow: %s", exc)
        outcome.mlflow_run_id = None
        write_json_atomic(paths.retrain_json, outcome.to_dict())


def _log_run(paths: Paths, cfg: Config, outcome: Outcome) -> None:
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
        tracking.log_metrics_and_record(
            tracking.sectioned(tracking.SECTION_RETRAIN, metrics), record, "retrain.json"
        )
