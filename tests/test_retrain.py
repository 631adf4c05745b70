"""pipeline.retrain: gates, lock, dvc status/repro, promotion in a real registry.

The orchestration tests use the real dvc (a one-stage dvc.yaml standing in for
the pipeline, which is tested end to end elsewhere), a real MLflow sqlite
registry and real Keras models trained on scikit-learn's digits. Only the
fault tests point retrain at a fake dvc, to make `dvc repro` fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import dvc_runner, judgement, lock, outcome, retrain, scoring, tracking
from pipeline.config import RetrainConfig, load_config
from pipeline.gates import GateResult, ModelFacts, ValidationFacts, decide, gates, version_facts

from .conftest import REPO, digits_arrays

CFG = RetrainConfig(
    require_validation_success=True, reject_overfitting=True, accuracy_tolerance=0.01, max_gap=0.1
)
GOOD = ModelFacts(
    version="2", variant="dropout", test_accuracy=0.90, gap_accuracy=0.03, verdict="good_fit"
)
CHAMP = ModelFacts(
    version="1", variant="baseline", test_accuracy=0.88, gap_accuracy=0.05, verdict="good_fit"
)
VALID = ValidationFacts(success=True)


def by_name(results: list[GateResult]) -> dict[str, GateResult]:
    return {r.name: r for r in results}


# --------------------------------------------------------------------------- pure gates


def test_all_gates_pass_and_decide_promotes():
    results = gates(CFG, GOOD, CHAMP, VALID)
    assert [r.name for r in results] == [
        "validation",
        "not_overfitting",
        "accuracy_vs_champion",
        "gap",
    ]
    assert all(r.passed for r in results)
    assert decide(results) == ("promoted", [])


def test_no_champion_promotes_on_non_comparative_gates():
    results = by_name(gates(CFG, GOOD, None, VALID))
    assert results["accuracy_vs_champion"].passed
    assert not results["accuracy_vs_champion"].applied
    assert decide(list(results.values()))[0] == "promoted"


def test_validation_failure_blocks_and_names_checks():
    validation = ValidationFacts(success=False, errors=("split_leakage",), warnings=("duplicates",))
    decision, reasons = decide(gates(CFG, GOOD, CHAMP, validation))
    assert decision == "rejected"
    assert len(reasons) == 1
    assert reasons[0] == (
        "validation: data validation failed (errors: split_leakage; warnings: duplicates)"
    )


def test_missing_validation_report_blocks():
    gate = by_name(gates(CFG, GOOD, None, ValidationFacts(success=None)))["validation"]
    assert not gate.passed and "missing" in gate.reason


def test_validation_gate_off_lets_failed_validation_through():
    cfg = CFG.model_copy(update={"require_validation_success": False})
    gate = by_name(gates(cfg, GOOD, None, ValidationFacts(success=False)))["validation"]
    assert gate.passed and not gate.applied


def test_overfitting_verdict_blocks():
    challenger = ModelFacts(**{**GOOD.__dict__, "verdict": "overfitting"})
    decision, reasons = decide(gates(CFG, challenger, CHAMP, VALID))
    assert decision == "rejected"
    assert reasons == [
        "not_overfitting: challenger v2 (dropout): its saved model is diagnosed as overfitting"
    ]


def test_unknown_verdict_blocks_but_switch_off_allows_overfitting():
    unknown = ModelFacts(**{**GOOD.__dict__, "verdict": None})
    assert not by_name(gates(CFG, unknown, None, VALID))["not_overfitting"].passed
    overfit = ModelFacts(**{**GOOD.__dict__, "verdict": "overfitting"})
    cfg = CFG.model_copy(update={"reject_overfitting": False})
    assert by_name(gates(cfg, overfit, None, VALID))["not_overfitting"].passed


def test_accuracy_below_champion_minus_tolerance_blocks_with_numbers():
    challenger = ModelFacts(**{**GOOD.__dict__, "test_accuracy": 0.8699})
    gate = by_name(gates(CFG, challenger, CHAMP, VALID))["accuracy_vs_champion"]
    assert not gate.passed
    assert gate.limit == pytest.approx(0.87)
    assert "0.8699" in gate.reason and "0.8800" in gate.reason and "0.01" in gate.reason


def test_accuracy_within_tolerance_passes():
    challenger = ModelFacts(**{**GOOD.__dict__, "test_accuracy": 0.875})
    assert by_name(gates(CFG, challenger, CHAMP, VALID))["accuracy_vs_champion"].passed


def test_champion_that_cannot_read_the_data_is_not_compared():
    champion = ModelFacts(version="1", test_accuracy=None, note="expects (16, 16, 1)")
    gate = by_name(gates(CFG, GOOD, champion, VALID))["accuracy_vs_champion"]
    assert gate.passed and not gate.applied and "(16, 16, 1)" in gate.reason


def test_gap_too_large_or_unknown_blocks():
    wide = ModelFacts(**{**GOOD.__dict__, "gap_accuracy": 0.25})
    gate = by_name(gates(CFG, wide, CHAMP, VALID))["gap"]
    assert not gate.passed and "0.2500" in gate.reason and "0.1" in gate.reason
    unknown = ModelFacts(**{**GOOD.__dict__, "gap_accuracy": None})
    assert not by_name(gates(CFG, unknown, CHAMP, VALID))["gap"].passed


def test_every_failed_gate_is_reported():
    bad = ModelFacts(
        version="3", variant="large", test_accuracy=0.5, gap_accuracy=0.4, verdict="overfitting"
    )
    decision, reasons = decide(gates(CFG, bad, CHAMP, ValidationFacts(False)))
    assert decision == "rejected"
    assert [r.split(":")[0] for r in reasons] == [
        "validation",
        "not_overfitting",
        "accuracy_vs_champion",
        "gap",
    ]


def test_version_facts_prefers_tags_and_falls_back_to_evaluation():
    class Version:
        version, run_id = 5, "r1"
        tags = {"variant": "l2", "verdict": "good_fit"}

    evaluation = {"variants": {"l2": {"verdict": "overfitting", "gap": {"accuracy": 0.07}}}}
    facts = version_facts(Version(), evaluation)
    assert (facts.version, facts.verdict, facts.gap_accuracy) == ("5", "good_fit", 0.07)


def test_the_gate_judges_the_saved_model_not_the_run():
    """A run early stopping had to stop (verdict overfitting) with a sound saved model passes."""

    class Version:
        version, run_id = 6, "r2"
        tags = {"variant": "dropout", "verdict": "overfitting", "model_verdict": "good_fit"}

    facts = version_facts(Version(), None)
    assert facts.verdict == "good_fit"
    gate = gates(CFG, facts, CHAMP, VALID)[1]
    assert gate.name == "not_overfitting" and gate.passed
    Version.tags = {**Version.tags, "model_verdict": "overfitting"}
    assert not gates(CFG, version_facts(Version(), None), CHAMP, VALID)[1].passed


def test_accuracy_and_shape_errors():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert scoring.accuracy(probs, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="do not match"):
        scoring.accuracy(probs, np.array([0, 1]))


def test_parse_dvc_status():
    assert dvc_runner.parse_dvc_status("{}\n") == {}
    assert dvc_runner.parse_dvc_status("") == {}
    changed = dvc_runner.parse_dvc_status('warning: x\n{"train": [{"changed deps": {}}]}')
    assert list(changed) == ["train"]
    with pytest.raises(dvc_runner.DvcError, match="cannot parse"):
        dvc_runner.parse_dvc_status("ERROR: no")


def test_gates_fingerprint_follows_gates_not_the_lock():
    base = judgement.gates_fingerprint(CFG)
    assert judgement.gates_fingerprint(CFG.model_copy(update={"lock_stale_seconds": 5})) == base
    assert judgement.gates_fingerprint(CFG.model_copy(update={"max_gap": 0.2})) != base


def test_earlier_judgement_skips_only_a_matching_decision():
    fingerprint = judgement.gates_fingerprint(CFG)
    rejected = judgement.judgement_tags(
        "rejected", ["gap: too large", "validation: failed"], None, fingerprint, "r1"
    )
    reasons = judgement.earlier_judgement(rejected, None, fingerprint)
    assert "already rejected by retrain r1 (against no champion" in reasons[0]
    assert reasons[1:] == ["gap: too large", "validation: failed"]
    # Judged again: a champion appeared, the gates changed, or it was never judged.
    assert judgement.earlier_judgement(rejected, "4", fingerprint) is None
    assert judgement.earlier_judgement(rejected, None, "0" * 12) is None
    assert judgement.earlier_judgement({"variant": "baseline"}, None, fingerprint) is None
    failed = {**rejected, judgement.DECISION_TAG: "failed"}
    assert judgement.earlier_judgement(failed, None, fingerprint) is None
    against_4 = judgement.judgement_tags("rejected", [], "4", fingerprint, "r2")
    assert "against champion v4" in judgement.earlier_judgement(against_4, "4", fingerprint)[0]
    # Once promoted (also by a retrain older than these tags): a rollback is kept.
    promoted = judgement.judgement_tags("promoted", [], "1", fingerprint, "r3")
    assert "moved since" in judgement.earlier_judgement(promoted, "1", "other")[0]
    legacy = {"promoted_at": "2026-01-01T00:00:00+00:00", "promoted_by_repro_id": "r0"}
    assert "retrain r0" in judgement.earlier_judgement(legacy, "1", fingerprint)[0]


def test_exit_codes_are_distinct_and_in_help(capsys):
    codes = [
        outcome.EXIT_UP_TO_DATE,
        outcome.EXIT_FAILED,
        2,
        outcome.EXIT_PROMOTED,
        outcome.EXIT_REJECTED,
        outcome.EXIT_LOCKED,
    ]
    assert len(set(codes)) == len(codes)
    with pytest.raises(SystemExit):
        retrain.main(["--help"])
    out = capsys.readouterr().out
    for text in ("0 up to date", "1 failed", "3 promoted", "4 rejected", "75 locked"):
        assert text in out


# --------------------------------------------------------------------------- lock


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_holder(path: Path, pid: int, started_at: float, host: str | None = None) -> None:
    host = host or socket.gethostname()
    path.write_text(json.dumps({"pid": pid, "host": host, "started_at": started_at}))


def test_stale_reason():
    now = time.time()
    here = socket.gethostname()
    live = lock.LockHolder(os.getpid(), here, now - 5)
    assert lock.stale_reason(live, 60, now) is None
    assert lock.stale_reason(None, 60, now) is None
    # A live holder on this host is never stale, however old: it may just be slow.
    assert lock.stale_reason(live, 1, now) is None
    dead = lock.LockHolder(dead_pid(), here, now)
    assert "is gone" in lock.stale_reason(dead, 60, now)
    # Another host's pid cannot be checked: only age counts there.
    remote = lock.LockHolder(os.getpid(), "other-host", now - 120)
    assert lock.stale_reason(remote, 600, now) is None
    reason = lock.stale_reason(remote, 60, now)
    assert "older than retrain.lock_stale_seconds = 60" in reason
    assert "host cannot be checked" in reason


def test_lock_records_holder_and_blocks_a_second_taker(tmp_path):
    path = tmp_path / "retrain.lock"
    handle = lock.acquire_lock(path, stale_seconds=3600)
    try:
        holder = lock.read_holder(path)
        assert holder.pid == os.getpid()
        # flock conflicts between two open() calls even within one process.
        with pytest.raises(lock.LockHeldError, match=f"pid {os.getpid()}"):
            lock.acquire_lock(path, stale_seconds=3600)
    finally:
        lock.release_lock(handle)
    assert lock.read_holder(path) is None  # cleared on release
    lock.release_lock(lock.acquire_lock(path, stale_seconds=3600))


def test_lock_left_by_a_dead_process_is_taken(tmp_path):
    path = tmp_path / "retrain.lock"
    write_holder(path, dead_pid(), time.time() - 10)
    handle = lock.acquire_lock(path, stale_seconds=3600)
    try:
        assert lock.read_holder(path).pid == os.getpid()
    finally:
        lock.release_lock(handle)


def test_live_lock_older_than_stale_seconds_is_respected(tmp_path):
    path = tmp_path / "retrain.lock"
    held = lock.acquire_lock(path, stale_seconds=3600)
    try:
        write_holder(path, os.getpid(), time.time() - 120)  # live, maybe hung
        with pytest.raises(lock.LockHeldError) as caught:
            lock.acquire_lock(path, stale_seconds=60)
        assert f"if it is hung, stop it (kill {os.getpid()} on" in str(caught.value)
        assert lock.read_holder(path).started_at < time.time() - 100  # untouched
    finally:
        lock.release_lock(held)


def test_old_lock_of_another_host_is_taken_over(tmp_path):
    path = tmp_path / "retrain.lock"
    old = lock.acquire_lock(path, stale_seconds=3600)
    try:
        # The holder's pid is live here, but it names another host: age decides.
        write_holder(path, os.getpid(), time.time() - 120, host="other-host")
        with pytest.raises(lock.LockHeldError, match="other-host"):
            lock.acquire_lock(path, stale_seconds=600)
        new = lock.acquire_lock(path, stale_seconds=60)
        holder = lock.read_holder(path)
        assert holder.host == socket.gethostname()
        assert holder.started_at > time.time() - 60
        lock.release_lock(new)
    finally:
        lock.release_lock(old)


# --------------------------------------------------------------------------- real registry

STAMP_STAGE = textwrap.dedent(
    """\
    stages:
      stand_in:
        # Stands in for the pipeline; records the repro id it was given.
        cmd: >-
          python -c "import os; open('stamp.txt', 'w')
          .write(os.environ.get('PIPELINE_REPRO_ID', ''))"
        deps:
          - params.yaml
        outs:
          - stamp.txt:
              cache: false
    """
)
GOOD_TAGS = {
    "variant": "baseline",
    "verdict": "good_fit",
    "gap_accuracy": "0.02",
    "validation_success": "true",
}


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory) -> dict[str, Path]:
    """A trained ("good", ~95% on digits) and an untrained ("bad") tiny model, each
    saved once as an MLflow model that `register` registers at every call site."""
    import keras

    x, y = digits_arrays()
    out = tmp_path_factory.mktemp("models")
    paths = {}
    for name, epochs in (("good", 15), ("bad", 0)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input(shape=(8, 8, 1)),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        if epochs:
            model.fit(x.astype("float32"), y, epochs=epochs, batch_size=64, verbose=0)
        paths[name] = save_mlflow_model(model, out / name)
    return paths


@pytest.fixture(scope="module")
def empty_repo(tmp_path_factory) -> Path:
    """An initialised DVC dir and MLflow database, made once and copied per test:
    `dvc init` and MLflow's schema migrations are most of a test's setup time."""
    import mlflow

    root = tmp_path_factory.mktemp("empty_repo")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    return root


@pytest.fixture
def rproject(digits_prepared, empty_repo, monkeypatch):
    """digits_prepared + a real DVC repo whose one stage stands in for the pipeline."""
    root = digits_prepared.root
    shutil.copytree(empty_repo / ".dvc", root / ".dvc")
    shutil.copy2(empty_repo / "mlflow.db", root / "mlflow.db")
    (root / "dvc.yaml").write_text(STAMP_STAGE)
    write_validation(digits_prepared, success=True)
    monkeypatch.delenv(dvc_runner.DVC_ENV, raising=False)
    return digits_prepared


def write_validation(project, success: bool, errors=()) -> None:
    report = {"success": success, "checks": [], "warnings": [], "errors": list(errors)}
    project.paths.validation_json.parent.mkdir(parents=True, exist_ok=True)
    project.paths.validation_json.write_text(json.dumps(report))


def registry(project):
    import mlflow

    tracking.configure(project.paths)
    return mlflow.MlflowClient(), load_config(project.paths.params).registry.model_name


def save_mlflow_model(model, path: Path, sample=None) -> Path:
    """`model` saved as an MLflow model (signature from `sample`, default digits) at `path`."""
    import mlflow
    from mlflow.models import infer_signature

    if sample is None:
        sample = digits_arrays()[0][:4].astype("float32")
    mlflow.keras.save_model(
        model,
        str(path),  # mlflow's keras flavour takes a str path only
        pip_requirements=["keras"],
        signature=infer_signature(sample, model.predict(sample, verbose=0)),
    )
    return path


def register(project, model_uri: Path | str, alias: str | None = None, **tags) -> str:
    """Register the MLflow model at `model_uri` (saved once) as a new version, tag it."""
    import mlflow

    client, name = registry(project)
    version = mlflow.register_model(str(model_uri), name).version
    for key, value in {**GOOD_TAGS, **tags}.items():
        client.set_model_version_tag(name, version, key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


def alias_of(project, alias: str) -> str | None:
    _, name = registry(project)
    return tracking.registered_aliases(name).get(alias)


def report(project) -> dict:
    return json.loads(project.paths.retrain_json.read_text())


def test_first_run_without_champion_promotes_and_champion_loads(rproject, keras_models, capsys):
    import mlflow

    version = register(rproject, keras_models["good"], alias="challenger")
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    assert "promoted" in capsys.readouterr().out
    assert alias_of(rproject, "champion") == version

    record = report(rproject)
    assert record["decision"] == "promoted" and record["exit_code"] == 3
    assert record["champion"] is None and record["champion_version_after"] == version
    assert record["challenger"]["test_accuracy"] > 0.8
    assert record["test_set_size"] == len(np.load(rproject.paths.prepared_dir / "test_y.npy"))
    # The repro id reached the dvc stage and tags retrain's own MLflow run.
    assert (rproject.root / "stamp.txt").read_text() == record["repro_id"]
    run = mlflow.get_run(record["mlflow_run_id"])
    assert run.data.tags["stage"] == "retrain" and run.data.tags["decision"] == "promoted"
    assert run.data.tags["repro_id"] == record["repro_id"]
    assert run.data.metrics["challenger_test_accuracy"] == record["challenger"]["test_accuracy"]

    # What a serving job does (the README snippet): load the champion by alias.
    name = load_config(rproject.paths.params).registry.model_name
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    x = np.load(rproject.paths.prepared_dir / "test_x.npy")[:8].astype("float32")
    y = np.load(rproject.paths.prepared_dir / "test_y.npy")[:8]
    probabilities = champion.predict(x)
    assert probabilities.shape == (8, 10)
    assert (probabilities.argmax(axis=1) == y).mean() >= 0.75


def test_better_challenger_replaces_champion(rproject, keras_models):
    old = register(rproject, keras_models["bad"], alias="champion")
    new = register(rproject, keras_models["good"], alias="challenger")
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    assert alias_of(rproject, "champion") == new
    record = report(rproject)
    assert record["champion"]["version"] == old
    assert record["challenger"]["test_accuracy"] > record["champion"]["test_accuracy"]
    assert all(g["passed"] for g in record["gates"])


@pytest.mark.parametrize(
    ("fault", "gate"),
    [
        ("validation_failed", "validation"),
        ("overfitting", "not_overfitting"),
        ("worse_than_champion", "accuracy_vs_champion"),
        ("gap_too_large", "gap"),
    ],
)
def test_each_gate_refuses_promotion(rproject, keras_models, fault, gate):
    champion_model, challenger_model, tags = "bad", "good", {}
    if fault == "validation_failed":
        write_validation(rproject, success=False, errors=["split_leakage"])
    elif fault == "overfitting":
        tags = {"verdict": "overfitting"}
    elif fault == "worse_than_champion":
        champion_model, challenger_model = "good", "bad"
    else:
        tags = {"gap_accuracy": "0.35"}
    champion = register(rproject, keras_models[champion_model], alias="champion")
    register(rproject, keras_models[challenger_model], alias="challenger", **tags)

    assert retrain.main([]) == outcome.EXIT_REJECTED
    assert alias_of(rproject, "champion") == champion
    record = report(rproject)
    assert record["decision"] == "rejected"
    failed = [g["name"] for g in record["gates"] if not g["passed"]]
    assert failed == [gate]
    assert record["reasons"][0].startswith(f"{gate}:")
    if fault == "worse_than_champion":
        assert f"{record['champion']['test_accuracy']:.4f}" in record["reasons"][0]


def test_first_run_failing_a_gate_names_no_champion(rproject, keras_models):
    register(rproject, keras_models["good"], alias="challenger", verdict="overfitting")
    assert retrain.main(["--exit-zero"]) == 0  # 4 mapped to 0 for launchers
    assert alias_of(rproject, "champion") is None
    assert report(rproject)["decision"] == "rejected"


def test_nothing_changed_means_no_work(rproject, keras_models, capsys):
    import mlflow

    subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "-q"],
        cwd=rproject.root,
        check=True,
        env=dvc_runner.child_env("manual"),
    )
    champion = register(rproject, keras_models["good"], alias="champion")
    stamp = (rproject.root / "stamp.txt").stat().st_mtime_ns

    assert retrain.main([]) == outcome.EXIT_UP_TO_DATE
    assert "up to date" in capsys.readouterr().out
    assert (rproject.root / "stamp.txt").stat().st_mtime_ns == stamp  # no repro
    record = report(rproject)
    assert record["decision"] == "up_to_date" and record["reproduced"] is False
    assert record["champion_version_after"] == champion
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'retrain'")
    assert len(runs) == 0  # an hourly no-op leaves no MLflow run


def test_change_without_new_challenger_is_up_to_date(rproject, keras_models):
    version = register(rproject, keras_models["good"], alias="champion")
    client, name = registry(rproject)
    client.set_registered_model_alias(name, "challenger", version)
    assert retrain.main([]) == outcome.EXIT_UP_TO_DATE
    record = report(rproject)
    assert record["reproduced"] is True
    assert "already the champion" in record["reasons"][0]


def retrain_runs() -> int:
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'retrain'")
    return len(runs)


def test_rejected_first_challenger_is_not_judged_again(rproject, keras_models, capsys):
    """No champion, the challenger rejected, nothing changed: an hourly run is a no-op."""
    version = register(rproject, keras_models["good"], alias="challenger", verdict="overfitting")
    assert retrain.main([]) == outcome.EXIT_REJECTED
    first = report(rproject)
    client, name = registry(rproject)
    tags = client.get_model_version(name, version).tags
    assert tags[judgement.DECISION_TAG] == "rejected"
    assert tags[judgement.JUDGED_AGAINST_TAG] == judgement.NO_CHAMPION
    assert tags[judgement.DECIDED_BY_TAG] == first["repro_id"]
    assert retrain_runs() == 1
    stamp = (rproject.root / "stamp.txt").stat().st_mtime_ns
    capsys.readouterr()

    assert retrain.main([]) == outcome.EXIT_UP_TO_DATE
    assert "already rejected" in capsys.readouterr().out
    record = report(rproject)
    assert record["decision"] == "up_to_date" and record["reproduced"] is False
    assert record["challenger"] is None and record["champion_version_after"] is None
    assert f"already rejected by retrain {first['repro_id']}" in record["reasons"][0]
    assert record["reasons"][1:] == first["reasons"]  # why, still in reports/retrain.json
    assert retrain_runs() == 1  # no new MLflow run
    assert (rproject.root / "stamp.txt").stat().st_mtime_ns == stamp
    assert alias_of(rproject, "champion") is None


def test_rejected_challenger_is_judged_again_when_gates_change(rproject, keras_models):
    register(rproject, keras_models["good"], alias="challenger", verdict="overfitting")
    assert retrain.main([]) == outcome.EXIT_REJECTED
    params = yaml.safe_load(rproject.paths.params.read_text())
    params["retrain"]["reject_overfitting"] = False
    rproject.write_params(params)
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    assert retrain_runs() == 2


def test_undecided_challenger_is_gated_when_nothing_changed(rproject, keras_models):
    """A challenger from a manual `dvc repro` is judged by the next retrain, without a repro."""
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "-q"],
        cwd=rproject.root,
        check=True,
        env=dvc_runner.child_env("manual"),
    )
    stamp = (rproject.root / "stamp.txt").stat().st_mtime_ns
    register(rproject, keras_models["bad"], alias="champion")
    new = register(rproject, keras_models["good"], alias="challenger")
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    assert alias_of(rproject, "champion") == new
    assert report(rproject)["reproduced"] is False
    assert (rproject.root / "stamp.txt").stat().st_mtime_ns == stamp


def test_rollback_of_a_promoted_challenger_is_kept(rproject, keras_models):
    old = register(rproject, keras_models["bad"], alias="champion")
    register(rproject, keras_models["good"], alias="challenger")
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    client, name = registry(rproject)
    client.set_registered_model_alias(name, "champion", old)  # a human rolls back
    assert retrain.main([]) == outcome.EXIT_UP_TO_DATE
    assert alias_of(rproject, "champion") == old
    assert "moved since (a rollback?); that choice is kept" in report(rproject)["reasons"][0]


def test_champion_that_cannot_read_new_image_size_is_not_compared(rproject, keras_models, tmp_path):
    import keras

    old = keras.Sequential(
        [
            keras.Input(shape=(16, 16, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    sample = np.zeros((2, 16, 16, 1), dtype="float32")
    register(rproject, save_mlflow_model(old, tmp_path / "old", sample), alias="champion")
    new = register(rproject, keras_models["good"], alias="challenger")

    assert retrain.main([]) == outcome.EXIT_PROMOTED
    assert alias_of(rproject, "champion") == new
    record = report(rproject)
    assert record["champion"]["test_accuracy"] is None
    assert "(16, 16, 1)" in record["champion"]["note"]
    gate = next(g for g in record["gates"] if g["name"] == "accuracy_vs_champion")
    assert gate["passed"] and not gate["applied"]


FAKE_DVC = textwrap.dedent(
    """\
    import sys
    if sys.argv[1] == "status":
        print('{"train@baseline": [{"changed deps": {"data/prepared": "modified"}}]}')
        sys.exit(0)
    print("simulated stage failure", file=sys.stderr)
    sys.exit(1)
    """
)


def test_failed_repro_leaves_champion_untouched(rproject, keras_models, monkeypatch):
    champion = register(rproject, keras_models["bad"], alias="champion")
    register(rproject, keras_models["good"], alias="challenger")
    fake = rproject.root / "fake_dvc.py"
    fake.write_text(FAKE_DVC)
    monkeypatch.setenv(dvc_runner.DVC_ENV, f"{sys.executable} {fake}")

    assert retrain.main([]) == outcome.EXIT_FAILED
    assert alias_of(rproject, "champion") == champion
    record = report(rproject)
    assert record["decision"] == "failed"
    assert "repro exited 1" in record["reasons"][0]
    assert record["mlflow_run_id"]  # the failure is visible in MLflow too


def test_unloadable_challenger_fails_without_promoting(rproject, keras_models):
    champion = register(rproject, keras_models["good"], alias="champion")
    client, name = registry(rproject)
    broken = client.create_model_version(name, source=str(rproject.root / "no-such-model"))
    client.set_registered_model_alias(name, "challenger", broken.version)

    assert retrain.main([]) == outcome.EXIT_FAILED
    assert alias_of(rproject, "champion") == champion
    assert "cannot load" in report(rproject)["reasons"][0]


def test_missing_challenger_fails(rproject):
    assert retrain.main([]) == outcome.EXIT_FAILED
    assert "no 'challenger' alias" in report(rproject)["reasons"][0]


def test_concurrent_run_exits_locked(rproject):
    handle = lock.acquire_lock(rproject.paths.retrain_lock, stale_seconds=3600)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.retrain"],
            cwd=rproject.root,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
    finally:
        lock.release_lock(handle)
    assert done.returncode == outcome.EXIT_LOCKED, done.stderr
    assert f"another retrain is running (pid {os.getpid()}" in done.stderr
    assert not rproject.paths.retrain_json.exists()  # the running job owns the report


def test_hung_run_holding_an_old_lock_still_blocks(rproject, capsys):
    """A live holder past retrain.lock_stale_seconds is not overlapped (cron never kills it)."""
    handle = lock.acquire_lock(rproject.paths.retrain_lock, stale_seconds=3600)
    try:
        write_holder(rproject.paths.retrain_lock, os.getpid(), time.time() - 7 * 3600)
        assert retrain.main([]) == outcome.EXIT_LOCKED  # lock_stale_seconds is 6 h
    finally:
        lock.release_lock(handle)
    assert "if it is hung, stop it" in capsys.readouterr().err
    assert not rproject.paths.retrain_json.exists()


def test_stale_lock_from_dead_process_does_not_block(rproject, keras_models):
    write_holder(rproject.paths.retrain_lock, dead_pid(), time.time() - 60)
    register(rproject, keras_models["good"], alias="challenger")
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    assert lock.read_holder(rproject.paths.retrain_lock) is None


@pytest.mark.slow
def test_real_pipeline_promote_then_up_to_date_then_gate(tmp_path, monkeypatch):
    """The real stages under retrain: first promotion, a no-op, then a real change."""
    import mlflow

    from .conftest import small_params
    from .test_pipeline_e2e import init_repo

    root = tmp_path / "repo"
    params = small_params(
        data={"image_size": [8, 8]},
        retrain={"reject_overfitting": False, "max_gap": 1.0, "accuracy_tolerance": 1.0},
    )
    params["train"]["epochs"] = 2
    init_repo(root, params)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "PIPELINE_REPRO_ID", dvc_runner.DVC_ENV):
        monkeypatch.delenv(name, raising=False)
    name = params["registry"]["model_name"]

    assert retrain.main([]) == outcome.EXIT_PROMOTED
    first = json.loads((root / "reports/retrain.json").read_text())
    assert first["champion"] is None and first["champion_version_after"] == "1"
    # Every run of that retrain's dvc repro carries its repro id.
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    stages = {
        r.data.tags.get("stage") for r in runs if r.data.tags.get("repro_id") == first["repro_id"]
    }
    assert {"validate", "train", "evaluate", "retrain"} <= stages

    assert retrain.main([]) == outcome.EXIT_UP_TO_DATE

    params["variants"]["dropout"] = {"model": {"dropout": 0.3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert retrain.main([]) == outcome.EXIT_PROMOTED  # tolerance 1.0: accuracy cannot block
    third = json.loads((root / "reports/retrain.json").read_text())
    assert third["champion"]["version"] == "1" and third["challenger"]["version"] == "2"
    assert third["champion"]["test_accuracy"] is not None
    champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "2"
