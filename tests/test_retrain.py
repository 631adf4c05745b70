"""pipeline.retrain (and promotion, outcome): the scheduled job in a real registry.

The pure parts have their own tests: test_gates, test_judgement, test_lock,
test_dvc_runner.

The orchestration tests use the real dvc (a one-stage dvc.yaml standing in for
the pipeline, which is tested end to end elsewhere), a real MLflow sqlite
registry and real Keras models trained on scikit-learn's digits. Only the
fault tests point retrain at a fake dvc, to make `dvc repro` fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import dvc_runner, judgement, lock, outcome, retrain, scoring, tracking
from pipeline.config import load_config
from pipeline.paths import Paths

from .conftest import (
    REPO,
    STAMP_STAGE,
    dead_pid,
    digits_arrays,
    register,
    registry,
    save_mlflow_model,
    write_holder,
    write_png_folder,
    write_validation,
)


def test_accuracy_and_shape_errors():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert scoring.accuracy(probs, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="do not match"):
        scoring.accuracy(probs, np.array([0, 1]))


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


# --------------------------------------------------------------------------- real registry


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
    challenger_accuracy = run.data.metrics["retrain/challenger_test_accuracy"]
    assert challenger_accuracy == record["challenger"]["test_accuracy"]

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


def test_a_champion_of_another_image_size_is_a_new_schema_refused_unless_accepted(
    rproject, keras_models, tmp_path
):
    """data.image_size changed: the champion cannot read today's images, so the two
    cannot be compared and its clients send the old size. Refused with the reason (it
    used to be promoted silently); --accept-new-schema promotes it on purpose."""
    import keras

    old = keras.Sequential(
        [
            keras.Input(shape=(16, 16, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    sample = np.zeros((2, 16, 16, 1), dtype="float32")
    saved = save_mlflow_model(old, tmp_path / "old", sample)
    champion = register(rproject, saved, alias="champion")
    new = register(rproject, keras_models["good"], alias="challenger")

    assert retrain.main([]) == outcome.EXIT_REJECTED
    assert alias_of(rproject, "champion") == champion
    record = report(rproject)
    assert record["champion"]["test_accuracy"] is None
    assert "(16, 16, 1)" in record["champion"]["note"]
    gate = next(g for g in record["gates"] if g["name"] == "accuracy_vs_champion")
    assert gate["passed"] and not gate["applied"]
    (reason,) = record["reasons"]
    assert reason.startswith("schema:") and "(16, 16, 1)" in reason
    assert "--accept-new-schema" in reason

    assert retrain.main(["--accept-new-schema"]) == outcome.EXIT_PROMOTED
    assert alias_of(rproject, "champion") == new
    schema = next(g for g in report(rproject)["gates"] if g["name"] == "schema")
    assert schema["passed"] and "accepted" in schema["reason"]


FAKE_DVC = textwrap.dedent(
    """\
    import sys
    if sys.argv[1:] == ["repro", "source"]:
        sys.exit(0)  # the always-changed fingerprint stage, rerun before status
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


def run_cli(project, **env: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.retrain` as cron runs it: in the project, output not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.retrain"],
        cwd=project.root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=300,
    )


def assert_plain_log(done: subprocess.CompletedProcess) -> None:
    """What cron and systemd keep: no traceback, no colour codes, no progress bars."""
    for stream in (done.stdout, done.stderr):
        assert "Traceback" not in stream, stream
        assert "\x1b[" not in stream, stream
        assert "\u2501" not in stream, stream  # the bar of Keras's progress bar


def test_cli_unreachable_tracking_server_is_one_line(rproject):
    done = run_cli(rproject, MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    assert done.returncode == outcome.EXIT_FAILED, done.stderr
    assert_plain_log(done)
    lines = [line for line in done.stderr.splitlines() if "is unreachable" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("retrain: failed: MLflow tracking server http://127.0.0.1:9")
    assert report(rproject)["decision"] == "failed"


def test_cli_missing_challenger_is_one_line(rproject):
    done = run_cli(rproject)
    assert done.returncode == outcome.EXIT_FAILED, done.stderr
    assert_plain_log(done)
    lines = [line for line in done.stderr.splitlines() if "no 'challenger' alias" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("retrain: failed:")


def test_cli_promotion_log_has_no_progress_bars(rproject, keras_models):
    version = register(rproject, keras_models["good"], alias="challenger")
    done = run_cli(rproject)
    assert done.returncode == outcome.EXIT_PROMOTED, done.stderr
    assert_plain_log(done)
    assert f"v{version} is the champion" in done.stdout


def test_unexpected_bug_keeps_its_traceback(rproject, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tracking, "registered_aliases", broken)
    assert retrain.main([]) == outcome.EXIT_FAILED
    assert report(rproject)["reasons"] == ["ZeroDivisionError: a bug"]
    assert any(r.exc_info for r in caplog.records if r.levelname == "ERROR")


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
def test_real_pipeline_promote_then_up_to_date_then_gate(own_repo, monkeypatch):
    """The real stages under retrain, in a copy of the suite's repro'd repo (whose
    evaluate registered a challenger and no champion): changed validate and evaluate knobs
    rerun those stages and report, and promote the challenger; then a no-op; then a
    changed variant retrains only it and is judged against the champion."""
    import mlflow

    root = own_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["retrain"].update(reject_overfitting=False, max_gap=1.0, accuracy_tolerance=1.0)
    # Rerun validate and evaluate, not train (it reads only validate's flags file).
    params["validate"]["max_examples"] = 10
    params["evaluate"]["feature_map_images"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "PIPELINE_REPRO_ID", dvc_runner.DVC_ENV):
        monkeypatch.delenv(name, raising=False)
    name = params["registry"]["model_name"]

    def stages_of(repro_id: str) -> set[str]:
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        return {r.data.tags.get("stage") for r in runs if r.data.tags.get("repro_id") == repro_id}

    tracking.configure(Paths(root))
    before = int(tracking.registered_aliases(name)[tracking.CHALLENGER])
    assert retrain.main([]) == outcome.EXIT_PROMOTED
    first = json.loads((root / "reports/retrain.json").read_text())
    assert first["reproduced"] and first["champion"] is None
    # The repro's evaluate registered the next version as challenger; it was promoted.
    assert first["champion_version_after"] == str(before + 1)
    # Every run of that retrain's dvc repro carries its repro id; train did not rerun.
    assert {"validate", "evaluate", "retrain"} <= stages_of(first["repro_id"])
    assert "train" not in stages_of(first["repro_id"])

    assert retrain.main([]) == outcome.EXIT_UP_TO_DATE

    params["variants"]["dropout"] = {"model": {"dropout": 0.3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert retrain.main([]) == outcome.EXIT_PROMOTED  # tolerance 1.0: accuracy cannot block
    third = json.loads((root / "reports/retrain.json").read_text())
    assert third["champion"]["version"] == str(before + 1)
    assert third["challenger"]["version"] == str(before + 2)
    assert third["champion"]["test_accuracy"] is not None
    assert {"train", "evaluate", "retrain"} <= stages_of(third["repro_id"])
    champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    assert champion.version == int(third["challenger"]["version"])
    # What it was trained on is on the version: the manifest hash and a record of
    # its train and val images, which the gate reads.
    assert champion.tags["data_version"] == tracking.data_version(Paths(root))
    assert champion.tags["trained_on"].startswith("runs:/")
    assert champion.tags["input_shape"] and champion.tags["n_classes"] == "10"

    # A re-split moves images the champion trained on into the test split: the gate
    # scores only on images neither model trained on, and with too few of them refuses.
    params["data"]["seed"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert retrain.main([]) == outcome.EXIT_REJECTED
    fourth = json.loads((root / "reports/retrain.json").read_text())
    total = len(np.load(root / "data/prepared/test_y.npy"))
    assert fourth["test_images_excluded"] > total / 2  # 85% of the images train or validate
    assert fourth["test_set_size"] + fourth["test_images_excluded"] == total
    gate = {g["name"]: g for g in fourth["gates"]}["clean_test_set"]
    assert not gate["passed"]
    assert f"{fourth['test_set_size']} of {total} test images" in gate["reason"]
    assert "min_clean_test_images = 100" in gate["reason"]
    after = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    assert after.version == champion.version  # the champion stays


def promote_the_repos_challenger(root: Path, monkeypatch) -> tuple[dict, str]:
    """The copied repo's store as the only MLflow backend, and its challenger (from the
    suite's repro) made champion by hand; (params, that version)."""
    import mlflow

    for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "PIPELINE_REPRO_ID", dvc_runner.DVC_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params = yaml.safe_load((root / "params.yaml").read_text())
    name = params["registry"]["model_name"]
    tracking.configure(Paths(root))
    version = tracking.registered_aliases(name)[tracking.CHALLENGER]
    mlflow.MlflowClient().set_registered_model_alias(name, tracking.CHAMPION, version)
    return params, version


def test_a_moved_project_keeps_its_champion_and_retrains(own_repo, tmp_path, monkeypatch):
    """mv of a project with a champion: its models load from the new place, new artifacts
    go there, and nothing is written under the old path (issue: absolute artifact
    locations in mlflow.db)."""
    import mlflow

    old = own_repo
    params, challenger = promote_the_repos_challenger(old, monkeypatch)

    new = tmp_path / "moved"
    shutil.move(old, new)
    monkeypatch.chdir(new)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{new / 'mlflow.db'}")
    # configure() above exported the old store as MLFLOW_REGISTRY_URI: a user's shell
    # after `mv` has no such leftover
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    params["retrain"].update(reject_overfitting=False, max_gap=1.0, accuracy_tolerance=1.0)
    params["evaluate"]["feature_map_images"] += 1  # evaluate reruns: a new challenger
    (new / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    code = retrain.main([])
    record = json.loads((new / "reports/retrain.json").read_text())
    assert code == outcome.EXIT_PROMOTED, record["reasons"]
    assert record["champion"]["version"] == challenger
    assert record["champion"]["test_accuracy"] is not None  # the old champion loaded
    assert not old.exists()  # nothing re-created under the old path
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and all(str(new) in r.info.artifact_uri for r in runs)


def test_an_incompatible_challenger_is_refused_unless_accepted(own_repo, monkeypatch):
    """The digits champion (10 classes, the repo's image size) against a challenger
    trained on a 3-class folder at another size: refused with the reason, and
    promoted only with --accept-new-schema."""
    root = own_repo
    monkeypatch.chdir(root)
    params, champion = promote_the_repos_challenger(root, monkeypatch)
    name = params["registry"]["model_name"]

    write_png_folder(root / "data" / "shapes", per_class=80, classes=("circle", "square", "star"))
    params["data"].update(source="data/shapes", image_size=[12, 12])
    params["retrain"].update(reject_overfitting=False, max_gap=1.0, accuracy_tolerance=1.0)
    params["retrain"]["min_clean_test_images"] = 1
    params["validate"]["severity"]["class_balance"] = "warning"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert retrain.main([]) == outcome.EXIT_REJECTED
    record = json.loads((root / "reports/retrain.json").read_text())
    (reason,) = [r for r in record["reasons"] if r.startswith("schema:")]
    assert "3 classes vs the champion's 10" in reason or "input shape" in reason
    assert "--accept-new-schema" in reason
    assert tracking.registered_aliases(name)[tracking.CHAMPION] == champion

    assert retrain.main(["--accept-new-schema"]) == outcome.EXIT_PROMOTED
    after = json.loads((root / "reports/retrain.json").read_text())
    assert not after["reproduced"]  # the same challenger, judged again with the flag
    assert tracking.registered_aliases(name)[tracking.CHAMPION] == after["challenger"]["version"]
