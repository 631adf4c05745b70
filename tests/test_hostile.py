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
