"""pipeline.outcome: the record of one retrain and where it is kept."""

from __future__ import annotations

import json

from pipeline import tracking
from pipeline.config import load_config
from pipeline.gates import GateResult, ModelFacts
from pipeline.outcome import EXIT_CODES, Outcome, record_outcome


def test_the_record_carries_the_exit_code_and_every_fact():
    outcome = Outcome(
        decision="rejected",
        reasons=["gap: too large"],
        challenger=ModelFacts(version="4", test_accuracy=0.9),
        gates=[GateResult("gap", False, "too large", 0.3, 0.1)],
    )
    record = outcome.to_dict()
    assert record["exit_code"] == outcome.exit_code == EXIT_CODES["rejected"] == 4
    assert record["challenger"]["version"] == "4" and record["champion"] is None
    assert record["gates"][0] == {
        "name": "gap",
        "passed": False,
        "reason": "too large",
        "observed": 0.3,
        "limit": 0.1,
        "applied": True,
    }


def test_nothing_to_do_writes_only_the_report(project, monkeypatch):
    runs = []
    monkeypatch.setattr(tracking, "stage_run", lambda *args, **kwargs: runs.append(args))
    cfg = load_config(project.paths.params)
    record_outcome(project.paths, cfg, Outcome(decision="up_to_date", reasons=["nothing"]))
    assert runs == []  # an hourly no-op leaves no MLflow run
    record = json.loads(project.paths.retrain_json.read_text())
    assert record["decision"] == "up_to_date" and record["exit_code"] == 0
    assert record["mlflow_run_id"] is None


def test_mlflow_down_still_writes_the_decision(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    cfg = load_config(project.paths.params)
    outcome = Outcome(decision="failed", reasons=["dvc repro exited 1"], reproduced=True)
    record_outcome(project.paths, cfg, outcome)
    record = json.loads(project.paths.retrain_json.read_text())
    assert record["decision"] == "failed" and record["reasons"] == ["dvc repro exited 1"]
    assert record["mlflow_run_id"] is None
