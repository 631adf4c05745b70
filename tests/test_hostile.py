"""Hostile input, round 3 (issue 26): each case a user or an attacker tried, and
what the project must do instead of merging classes, hanging, exhausting memory or
printing a traceback.

Earlier rounds' cases live where they belong (test_config, test_datasets,
test_prepare, test_faults, test_retrain, ...); docs/testing.md counts them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import plots, validate
from pipeline.config import ConfigError, load_config
from pipeline.datasets import class_clashes, class_label, class_sort_key, read_class_names
from pipeline.prepare import prepare_dataset
from pipeline.prepared import load_prepared

from .conftest import Project, shipped, small_params, write_png_folder

# ---------------------------------------------------------------- params.yaml


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):  # 10**12 strings if expanded
        name, previous = chr(97 + i), chr(96 + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "*a" in message
    assert "\n" not in message


def test_a_single_harmless_alias_is_refused_too_with_the_line(tmp_path: Path) -> None:
    params = (Path(__file__).parents[1] / "params.yaml").read_text()
    params = params.replace("  seed: 42\n", "  seed: &s 42\n", 1) + "extra_seed: *s\n"
    path = tmp_path / "params.yaml"
    path.write_text(params)
    with pytest.raises(ConfigError, match=r"alias \*s is not allowed"):
        load_config(path)


# ---------------------------------------------------------------- class identity


def _latin1(name: bytes) -> str:
    return os.fsdecode(name)


@pytest.mark.parametrize(
    ("folders", "why"),
    [
        ([_latin1(b"caf\xe9"), "caf\\xe9"], "same class"),  # bytes vs a literal backslash
        ([" cat", "cat"], "same class"),
        (["cat ", "cat"], "same class"),
        (["caf\u00e9", "cafe\u0301"], "same class"),  # NFC vs NFD
        (["dog", "d\u200bog"], "look identical"),  # a zero-width space
        ([_latin1(b"caf\xe9"), "caf\u00e9"], "look identical"),  # latin-1 vs UTF-8 bytes
    ],
)
def test_two_folders_that_give_one_class_or_look_alike_are_a_clash(
    folders: list[str], why: str
) -> None:
    clashes = class_clashes(sorted([*folders, "other"]))
    assert [c["why"] for c in clashes][:1] == [why]
    shown = clashes[0]["folders"]
    assert len(shown) == 2 and shown[0] != shown[1]  # the two are told apart on screen


def test_distinct_names_do_not_clash() -> None:
    assert class_clashes(["Cat", "cat", "cafe", "caf\u00e9", "1", "01"]) == []


def test_class_labels_are_nfc_and_stripped_and_never_empty() -> None:
    assert class_label("cafe\u0301") == "caf\u00e9"
    assert class_label("  cat\t") == "cat"
    assert class_label(" ") == " "
    assert class_label(_latin1(b"caf\xe9")) == "caf\\xe9"


def test_circled_digits_sort_as_names_not_numbers() -> None:
    names = ["\u2462", "10", "2", "\u2460"]
    assert sorted(names, key=class_sort_key) == ["2", "10", "\u2460", "\u2462"]


def _prepare_and_validate(project: Project, classes: tuple[str, ...]) -> dict:
    write_png_folder(project.root / "src", per_class=12, classes=classes)
    config = project.write_params(small_params(data={"source": "src", "image_size": [8, 8]}))
    prepare_dataset(config, project.paths, progress=False)
    return validate.validate_dataset(load_prepared(project.paths.prepared_dir), shipped("validate"))


def test_whitespace_twins_stop_validate_naming_both_folders(project: Project) -> None:
    report = _prepare_and_validate(project, ("cat", " cat", "dog"))
    assert "label_set" in report["errors"]
    entry = next(c for c in report["checks"] if c["name"] == "label_set")
    assert set(entry["examples"]) >= {"'cat'", "' cat'"}
    summary = validate.failure_summary(report, Path("validation.json"))
    assert "' cat', 'cat' give class 'cat'" in summary or "'cat', ' cat' give" in summary


def test_latin1_and_literal_escape_folders_stop_validate(project: Project) -> None:
    report = _prepare_and_validate(project, (_latin1(b"caf\xe9"), "caf\\xe9", "dog"))
    entry = next(c for c in report["checks"] if c["name"] == "label_set")
    assert not entry["success"] and entry["severity"] == "error"
    assert "b'caf\\xe9'" in entry["examples"] and "'caf\\\\xe9'" in entry["examples"]


def test_clean_folders_pass_label_set(project: Project) -> None:
    report = _prepare_and_validate(project, ("caf\u00e9", "dog"))
    entry = next(c for c in report["checks"] if c["name"] == "label_set")
    assert entry["success"] and entry["observed"]["class_clashes"] == []


def test_a_latin1_classes_txt_is_one_line_naming_the_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(b"T-shirt\ncaf\xe9\n")
    from pipeline.cli import StageError

    with pytest.raises(StageError) as info:
        read_class_names(path)
    assert str(path) in str(info.value) and "0xe9" in str(info.value)


def test_classes_txt_names_that_differ_only_by_normalization_are_repeats(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("caf\u00e9\ncafe\u0301 \n")
    from pipeline.cli import StageError

    with pytest.raises(StageError, match="repeated: 'caf\u00e9'"):
        read_class_names(path)


# ---------------------------------------------------------------- figures


@pytest.mark.parametrize("name", ["$5_to_$10", "$\\alpha$", "a$b", "100%", "x^2_{y}"])
def test_class_names_are_drawn_literally(name: str) -> None:
    fig = plots.confusion_figure(np.eye(2, dtype=int), [name, "other"], "confusion")
    fig.canvas.draw()  # mathtext would raise on "$5_to_$10" or draw an alpha
    ticks = {t.get_text(): t for t in fig.axes[0].get_yticklabels()}
    tick = ticks[plots.literal(name)]
    # what matplotlib draws: the name itself, not mathtext
    assert tick._preprocess_math(tick.get_text()) == (name, False)


# ---------------------------------------------------------------- IDX headers


def _idx_images(path: Path, dims: tuple[int, int, int], payload: bytes) -> Path:
    import struct

    path.write_bytes(struct.pack(">IIII", 0x803, *dims) + payload)
    return path


@pytest.mark.parametrize(
    "dims",
    [(2**32 - 1, 2**32 - 1, 2**32 - 1), (2**31, 2**31, 4), (1, 2**32 - 1, 2**32 - 1)],
)
def test_idx_dimensions_that_overflow_are_one_line(tmp_path: Path, dims) -> None:
    from pipeline.cli import StageError
    from pipeline.datasets import IDX_IMAGES_MAGIC, read_idx

    path = _idx_images(tmp_path / "train-images-idx3-ubyte", dims, bytes(64))
    with pytest.raises(StageError, match="header says") as info:
        read_idx(path, IDX_IMAGES_MAGIC)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("dims", [(5, 0, 0), (5, 0, 28), (5, 28, 0)])
def test_idx_images_of_no_pixels_are_refused(tmp_path: Path, dims) -> None:
    from pipeline.cli import StageError
    from pipeline.datasets import IDX_IMAGES_MAGIC, read_idx

    path = _idx_images(tmp_path / "train-images-idx3-ubyte", dims, b"")
    with pytest.raises(StageError, match="at least 1x1"):
        read_idx(path, IDX_IMAGES_MAGIC)


# ---------------------------------------------------------------- environment and params


def _stage_exit(module: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", module],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, out.stderr


def test_an_unknown_log_level_is_one_line(project: Project) -> None:
    code, err = _stage_exit("pipeline.prepare", {"PIPELINE_LOG_LEVEL": "verbose"}, project.root)
    assert code == 2 and "Traceback" not in err
    assert "PIPELINE_LOG_LEVEL='verbose'" in err and "DEBUG" in err


@pytest.mark.parametrize("value", ["bob's run", "a b", "x" * 65, 'say "hi"'])
def test_a_repro_id_that_breaks_mlflow_filters_is_refused(
    project: Project, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from pipeline import tracking
    from pipeline.config import load_config

    monkeypatch.setenv("PIPELINE_REPRO_ID", value)
    with pytest.raises(tracking.TrackingError, match="PIPELINE_REPRO_ID"):
        tracking.repro_id(project.paths, load_config(project.paths.params))


def test_a_plain_repro_id_is_kept(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import tracking
    from pipeline.config import load_config

    monkeypatch.setenv("PIPELINE_REPRO_ID", "nightly-2026.12.06:1")
    assert tracking.repro_id(project.paths, load_config(project.paths.params)) == (
        "nightly-2026.12.06:1"
    )


@pytest.mark.parametrize("key", ["train", "data"])
def test_a_seed_numpy_cannot_take_is_a_params_error(key: str) -> None:
    from pipeline.config import parse_config

    raw = small_params(**{key: {"seed": 4294967296}})
    with pytest.raises(ConfigError, match=rf"{key}.seed = 4294967296: .*less than or equal"):
        parse_config(raw)


@pytest.mark.parametrize(("written", "read"), [(True, "on"), (False, "off"), ("auto", "auto")])
def test_class_weight_on_as_dvc_writes_it_is_read_as_on(written, read) -> None:
    from pipeline.config import parse_config

    assert parse_config(small_params(train={"class_weight": written})).train.class_weight == read


# ---------------------------------------------------------------- one writer per variant


def test_a_second_trainer_of_a_variant_exits_naming_the_first(project: Project) -> None:
    from pipeline.lock import acquire_lock, release_lock

    lock = project.paths.train_lock("baseline")
    lock.parent.mkdir(parents=True)
    handle = acquire_lock(lock, 3600, what="training of baseline")  # the first trainer
    try:
        import subprocess
        import sys

        out = subprocess.run(
            [sys.executable, "-m", "pipeline.train", "--variant", "baseline"],
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        release_lock(handle)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"another training of baseline is running (pid {os.getpid()}" in out.stderr
    assert str(lock) in out.stderr
    assert not project.paths.variant_dir("baseline").exists()  # nothing written


# ---------------------------------------------------------------- links out of the source


def test_the_fingerprint_never_follows_a_link_out_of_the_source(tmp_path: Path) -> None:
    from pipeline.source import fingerprint, walk

    root = write_png_folder(tmp_path / "src", per_class=2, classes=("x",))
    (root / "x" / "proc").symlink_to("/proc")  # walking it would hang on /proc/kmsg
    (root / "x" / "usr").symlink_to("/usr/share")  # 50,000 outside files
    (root / "x" / "passwd.png").symlink_to("/etc/passwd")
    kinds = {e.rel: e.kind for e in walk(root)}
    assert kinds[b"x/proc"] == "outside:/proc"
    assert kinds[b"x/usr"] == "outside:/usr/share"
    assert kinds[b"x/passwd.png"] == "outside:/etc/passwd"
    assert not any(rel.startswith((b"x/proc/", b"x/usr/")) for rel in kinds)
    summary, _ = fingerprint(root, {})
    assert summary["files"] == 2 and summary["not_regular"] == 3


def test_retargeting_an_outside_link_changes_the_fingerprint(tmp_path: Path) -> None:
    from pipeline.source import fingerprint

    root = write_png_folder(tmp_path / "src", per_class=1, classes=("x",))
    (root / "x" / "ext").symlink_to("/usr/share")
    before, _ = fingerprint(root, {})
    (root / "x" / "ext").unlink()
    (root / "x" / "ext").symlink_to("/usr/lib")
    after, _ = fingerprint(root, {})
    assert before["sha256"] != after["sha256"]


def test_a_directory_in_place_of_retrain_lock_is_one_line(project: Project) -> None:
    (project.root / "dvc.yaml").write_text("stages: {}\n")
    project.paths.retrain_lock.mkdir()
    code, err = _stage_exit("pipeline.retrain", {}, project.root)
    assert code == 2 and "Traceback" not in err
    assert f"{project.paths.retrain_lock} is a directory" in err and "rmdir" in err


def test_the_report_sentence_names_the_clashing_folders(project: Project) -> None:
    from pipeline.check_sentences import label_set

    report = _prepare_and_validate(project, ("cat", " cat", "dog"))
    entry = next(c for c in report["checks"] if c["name"] == "label_set")
    sentence = label_set(entry["observed"], entry["limits"])
    assert "class folders clash" in sentence and "' cat'" in sentence


# ---------------------------------------------------------------- experiments and the registry


def test_an_experiment_registers_no_challenger_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.config import parse_config
    from pipeline.publishing import experiment_not_registered

    cfg = parse_config(small_params())
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert experiment_not_registered(cfg) is None  # dvc repro, retrain: registered
    monkeypatch.setenv("DVC_EXP_NAME", "drop03")
    why = experiment_not_registered(cfg)
    assert why is not None and "'drop03'" in why and "register_experiments" in why
    asked = parse_config(small_params(registry={"register_experiments": True}))
    assert experiment_not_registered(asked) is None


# ---------------------------------------------------------------- incompatible challengers


def _facts(version: str, shape, n, classes=None):
    from pipeline.gates import ModelFacts

    return ModelFacts(
        version=version,
        variant="baseline",
        test_accuracy=0.95 if version == "3" else None,
        gap_accuracy=0.01,
        verdict="good_fit",
        input_shape=shape,
        n_classes=n,
        classes=tuple(classes) if classes else None,
    )


DIGITS = _facts("2", (16, 16, 1), 10, [str(i) for i in range(10)])


@pytest.mark.parametrize(
    ("challenger", "words"),
    [
        (_facts("3", (32, 32, 3), 3, ["circle", "square", "star"]), ["(32, 32, 3)", "3 classes"]),
        (_facts("3", (32, 32, 1), 10, [str(i) for i in range(10)]), ["(32, 32, 1)"]),
        (_facts("3", (16, 16, 1), 10, [*"012345678", "nine"]), ["label 9: '9' -> 'nine'"]),
    ],
)
def test_an_incompatible_challenger_is_refused_with_the_reason(challenger, words) -> None:
    from pipeline.gates import ValidationFacts, decide, gates

    from .conftest import retrain_config

    results = gates(retrain_config(), challenger, DIGITS, ValidationFacts(success=True))
    decision, reasons = decide(results)
    assert decision == "rejected"
    (reason,) = [r for r in reasons if r.startswith("schema:")]
    assert all(w in reason for w in words) and "--accept-new-schema" in reason
    accepted = gates(
        retrain_config(), challenger, DIGITS, ValidationFacts(True), accept_new_schema=True
    )
    assert decide(accepted)[0] == "promoted"


def test_the_same_schema_passes_and_a_first_model_has_none_to_match() -> None:
    from pipeline.gates import ValidationFacts, decide, gates

    from .conftest import retrain_config

    same = _facts("3", (16, 16, 1), 10, [str(i) for i in range(10)])
    assert decide(gates(retrain_config(), same, DIGITS, ValidationFacts(True)))[0] == "promoted"
    first = gates(retrain_config(), same, None, ValidationFacts(True))
    assert decide(first)[0] == "promoted"


def test_schema_tags_round_trip_through_version_facts() -> None:
    from types import SimpleNamespace

    from pipeline.gates import version_facts

    tags = {"input_shape": "28x28x1", "n_classes": "10", "classes": '["T-shirt/top", "Trouser"]'}
    facts = version_facts(SimpleNamespace(tags=tags, version=4, run_id="r"), None)
    assert facts.input_shape == (28, 28, 1) and facts.n_classes == 10
    assert facts.classes == ("T-shirt/top", "Trouser")
    bad = version_facts(SimpleNamespace(tags={"input_shape": "a x b"}, version=4, run_id=""), None)
    assert bad.input_shape is None and bad.n_classes is None


# ---------------------------------------------------------------- the gate's test images


def _manifest(ids: list[str], splits: list[str], pixels: list[str]) -> pd.DataFrame:
    from pipeline.prepared import manifest_frame

    rows = []
    index = {"train": 0, "val": 0, "test": 0}
    for i, split, pixel in zip(ids, splits, pixels, strict=True):
        rows.append(
            {"id": i, "path": i, "label": "a", "label_index": 0, "split": split,
             "source_split": "", "width": 8, "height": 8, "mode": "L", "bytes": 64,
             "pixel_hash": pixel, "phash": "0" * 16, "pixel_mean": 1.0, "pixel_std": 1.0,
             "status": "ok", "error": "", "array_index": index[split]}
        )  # fmt: skip
        index[split] += 1
    return manifest_frame(rows)


def _hex(n: int) -> str:
    import hashlib

    return hashlib.sha256(str(n).encode()).hexdigest()


def test_a_resplit_excludes_the_images_a_model_trained_on() -> None:
    from pipeline import trained_on

    ids = [f"img/{i}.png" for i in range(10)]
    pixels = [_hex(i) for i in range(10)]
    old = _manifest(ids, ["train"] * 6 + ["val"] * 2 + ["test"] * 2, pixels)
    record = trained_on.from_bytes(trained_on.to_bytes(trained_on.record_of(old, "v-old")))
    assert len(record) == 8 and record.data_version == "v-old"
    new = _manifest(ids, ["test"] * 4 + ["train"] * 6, pixels)  # 4 of them trained on before
    rows = trained_on.rows_of_test_split(new)
    assert trained_on.unseen(rows, [record]).tolist() == [False] * 4
    assert trained_on.unseen(rows, []).tolist() == [True] * 4


def test_the_same_picture_under_a_new_name_or_size_is_still_excluded() -> None:
    from pipeline import trained_on

    old = _manifest(["a.png", "b.png"], ["train", "test"], [_hex(1), _hex(2)])
    record = trained_on.record_of(old, "v1")
    renamed = _manifest(["renamed.png", "c.png"], ["test", "test"], [_hex(1), _hex(3)])
    assert trained_on.unseen(renamed, [record]).tolist() == [False, True]  # by pixels
    resized = _manifest(["a.png", "c.png"], ["test", "test"], [_hex(9), _hex(3)])
    assert trained_on.unseen(resized, [record]).tolist() == [False, True]  # by id


def test_a_record_that_is_not_one_is_a_value_error() -> None:
    from pipeline import trained_on

    with pytest.raises(ValueError, match="not a trained-on record"):
        trained_on.from_bytes(b"garbage")


@pytest.mark.parametrize(
    ("clean", "unknown", "passed", "words"),
    [
        (86, (), False, ["86 of 269 test images", "min_clean_test_images = 100"]),
        (150, (), True, ["150 of 269", "119 excluded"]),
        (269, ("v1 has no record of its training images",), False, ["cannot tell"]),
    ],
)
def test_the_clean_test_set_gate(clean, unknown, passed, words) -> None:
    from pipeline.gates import TestSetFacts, ValidationFacts, gates

    from .conftest import retrain_config

    challenger = _facts("3", (16, 16, 1), 10)
    test_set = TestSetFacts(269, clean, 100, unknown)
    results = gates(retrain_config(), challenger, DIGITS, ValidationFacts(True), test_set=test_set)
    gate = results[0]
    assert gate.name == "clean_test_set" and gate.passed is passed
    assert all(w in gate.reason for w in words), gate.reason


# ---------------------------------------------------------------- a moved or copied project


def _store_with_an_artifact(root: Path) -> tuple[str, str]:
    """A project store like the pipeline's: experiment at root/mlartifacts, one run with
    a text artifact, one registered model version from it; (run id, version)."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(
        "cnn-overfitting", artifact_location=(root / "mlartifacts").resolve().as_uri()
    )
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "weights", "model/MLmodel")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("m")
    version = client.create_model_version(
        "m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    return run.info.run_id, version.version


@pytest.mark.parametrize("how", ["mv", "cp -r"])
def test_a_moved_or_copied_store_is_repointed_at_its_own_artifacts(tmp_path: Path, how) -> None:
    import shutil

    import mlflow

    from pipeline.tracking import follow_project_move

    old = tmp_path / "proj"
    old.mkdir()
    run_id, version = _store_with_an_artifact(old)
    new = tmp_path / "moved here"  # a space: file URIs percent-encode it
    (shutil.move if how == "mv" else shutil.copytree)(old, new)
    assert follow_project_move(new) >= 3  # experiment, run, model version
    assert follow_project_move(new) == 0  # once only

    uri = f"sqlite:///{new / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("cnn-overfitting")
    assert experiment.artifact_location == (new / "mlartifacts").resolve().as_uri()
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith((new / "mlartifacts").resolve().as_uri())
    assert str(new.resolve()) in client.get_model_version("m", version).source.replace("%20", " ")
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/model/MLmodel")
    assert text == "weights"
    if how == "cp -r":  # the original keeps its own locations
        original = f"sqlite:///{old / 'mlflow.db'}"
        kept = mlflow.MlflowClient(tracking_uri=original).get_experiment_by_name("cnn-overfitting")
        assert kept.artifact_location == (old / "mlartifacts").resolve().as_uri()


# ---------------------------------------------------------------- runs of killed stages


def test_runs_of_dead_stage_processes_are_marked_killed_on_the_next_start(
    project: Project,
) -> None:
    import socket

    import mlflow

    from pipeline import tracking

    from .conftest import dead_pid

    tracking.configure(project.paths)
    experiment = tracking.ensure_experiment(project.paths, "cnn-overfitting")
    client = mlflow.MlflowClient()
    host = socket.gethostname()

    def running(pid: int, on: str = host) -> str:
        tags = {tracking.PID_TAG: str(pid), tracking.HOST_TAG: on}
        return client.create_run(experiment, tags=tags).info.run_id

    killed, alive, elsewhere, resumed = (
        running(dead_pid()),
        running(os.getpid()),
        running(dead_pid(), "another-host"),
        running(dead_pid()),
    )
    assert tracking.end_dead_runs(experiment, keep=resumed) == [killed]
    status = {r: client.get_run(r).info.status for r in (killed, alive, elsewhere, resumed)}
    assert status == {killed: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", resumed: "RUNNING"}


def test_a_deleted_experiment_is_one_line_saying_how_to_restore_it(project: Project) -> None:
    import mlflow

    from pipeline import tracking

    tracking.configure(project.paths)
    experiment = tracking.ensure_experiment(project.paths, "cnn-overfitting")
    mlflow.MlflowClient().delete_experiment(experiment)
    with pytest.raises(tracking.TrackingError) as info:
        tracking.ensure_experiment(project.paths, "cnn-overfitting")
    message = str(info.value)
    assert "was deleted" in message and f"--experiment-id {experiment}" in message


DAMAGED = [b"not a database at all" * 50, b"SQLite format 3\x00" + b"\xff" * 4000]


@pytest.mark.parametrize("content", DAMAGED)
def test_a_damaged_mlflow_db_is_one_line(project: Project, content: bytes) -> None:
    from pipeline import tracking

    (project.root / "mlflow.db").write_bytes(content)
    with pytest.raises(tracking.TrackingError) as info:
        tracking.configure(project.paths)
    assert "is damaged" in str(info.value) and "mlflow.db.damaged" in str(info.value)


@pytest.mark.parametrize("code", [13, 1, 30])  # EACCES, EPERM, EROFS
def test_a_folder_that_cannot_be_written_is_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path, code: int
) -> None:
    # As root a chmod does not stop a write: the refusal is simulated.
    from pipeline.cli import run_stage

    target = tmp_path / "reports" / "validation.json"

    def main(argv):
        raise OSError(code, os.strerror(code), str(target))

    with pytest.raises(SystemExit) as info:
        run_stage(main, [])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert f"cannot write {target}" in err and str(tmp_path / "reports") in err


def test_a_tracking_server_that_dies_mid_stage_is_one_paragraph(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's own exception when the server goes away between two epochs' logs.
    from mlflow.exceptions import MlflowException

    from pipeline.cli import run_stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")

    def main(argv):
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise MlflowException(
                "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed with "
                "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded"
            ) from exc

    with pytest.raises(SystemExit) as info:
        run_stage(main, [])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "http://127.0.0.1:9 stopped answering" in err and "resumes" in err


# ---------------------------------------------------------------- colour


def _rgb_folder(root: Path, coloured: bool) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            gray = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
            pixels = np.stack([gray, gray, gray], axis=-1)
            if coloured and name == "b" and i == 11:  # one colour image decides
                pixels[..., 0] = 255 - pixels[..., 0]
            mode = "RGB" if coloured and name == "b" and i == 11 else "L"
            image = Image.fromarray(pixels if mode == "RGB" else gray, mode=mode)
            image.save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.parametrize(("coloured", "channels"), [(True, 3), (False, 1)])
def test_colour_is_detected_by_default(project: Project, coloured: bool, channels: int) -> None:
    _rgb_folder(project.root / "src", coloured)
    params = small_params(data={"source": "src", "image_size": [8, 8]})
    assert params["data"]["color_mode"] == "auto"  # the shipped default
    summary = prepare_dataset(project.write_params(params), project.paths, progress=False)
    assert summary["color_mode"] == ("rgb" if coloured else "grayscale")
    assert load_prepared(project.paths.prepared_dir).x("train").shape[-1] == channels


def test_a_gray_palette_image_is_not_colour(tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.imagecheck import has_colour

    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    gray.convert("P").save(tmp_path / "gray.png")
    red = Image.new("RGB", (8, 8), (200, 10, 10))
    red.convert("P").save(tmp_path / "red.png")
    assert not has_colour(tmp_path / "gray.png")
    assert has_colour(tmp_path / "red.png")
    assert not has_colour(tmp_path / "missing.png")


# ---------------------------------------------------------------- many classes


def test_a_thousand_classes_keep_evaluation_json_small() -> None:
    import json

    from pipeline.scoring import confusion_entry, dense_confusion

    rng = np.random.default_rng(0)
    n, images = 1000, 10_000
    classes = [f"c{i}" for i in range(n)]
    matrices = {}
    for split in ("train", "val", "test"):
        matrix = np.zeros((n, n), dtype=int)
        np.add.at(matrix, (rng.integers(0, n, images), rng.integers(0, n, images)), 1)
        matrices[split] = matrix.tolist()
    entry = confusion_entry(classes, matrices)
    assert entry["format"] == "sparse"
    assert len(json.dumps(entry)) < 1_000_000  # the dense matrices: over 6 MB
    assert dense_confusion(entry, "test") == matrices["test"]
    small = confusion_entry(classes[:10], {"test": [[1] * 10] * 10})
    assert "format" not in small and dense_confusion(small, "test") == [[1] * 10] * 10


def test_a_disk_full_copy_names_the_file_it_was_writing(tmp_path: Path) -> None:
    # What shutil.copyfile raises when the destination's disk fills (simulated): the
    # temp source in filename, the artifact being written in filename2.
    import errno

    from pipeline.cli import disk_full_message

    dest = tmp_path / "mlartifacts" / "run" / "artifacts" / "model.keras"
    dest.parent.mkdir(parents=True)
    exc = OSError(errno.ENOSPC, "No space left on device")
    exc.filename, exc.filename2 = "/tmp/tmpabc123/model.keras", str(dest)
    message = disk_full_message(exc)
    assert str(dest) in message and "/tmp/tmpabc123" not in message
