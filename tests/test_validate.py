"""Tests for pipeline/validate.py: each check with and without its problem
(the near-duplicate search itself: tests/test_leakage.py), the JSON contract,
exit codes, Data Docs and the MLflow run. Real GX, real MLflow (sqlite in tmp_path)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import checks, validate
from pipeline.prepared import SPLITS, load_prepared, manifest_frame, write_prepared

from .conftest import REPO, shipped, small_params

CLASSES = ["a", "b", "c"]
PER_CLASS = {"train": 14, "val": 5, "test": 5}
SIZE = 8


# ---------------------------------------------------------------- helpers


def random_phash(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(0, 2**63, dtype=np.int64)) * 2 + int(rng.integers(2)):016x}"


def flip_bits(phash: str, bits: list[int]) -> str:
    value = int(phash, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:016x}"


def image_row(rng: np.random.Generator, split: str, label: str, pixels=None, **extra) -> dict:
    if pixels is None:
        pixels = rng.integers(0, 256, size=(SIZE, SIZE, 1), dtype=np.uint8)
    row = {
        "split": split,
        "label": label,
        "pixels": pixels,
        "phash": random_phash(rng),
        "status": "ok",
        "error": "",
        "width": SIZE,
        "height": SIZE,
        "mode": "L",
    }
    row.update(extra)
    return row


def clean_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        image_row(rng, split, label)
        for split in SPLITS
        for label in CLASSES
        for _ in range(PER_CLASS[split])
    ]


def bad_row(
    path_tag: str, status: str = "truncated", error: str = "image file is truncated"
) -> dict:
    return {
        "split": "",
        "label": "a",
        "pixels": None,
        "phash": "",
        "status": status,
        "error": error,
        "width": 0,
        "height": 0,
        "mode": "",
        "path": f"/data/bad/{path_tag}.png",
    }


def write_rows(root: Path, rows: list[dict], classes: list[str] = CLASSES) -> Path:
    """Manifest + arrays from row dicts (pixels, split, label, ...); hashes filled in."""
    out = root / "data" / "prepared"
    arrays = {s: ([], []) for s in SPLITS}
    records = []
    for i, row in enumerate(rows):
        pixels = row["pixels"]
        in_array = row["split"] in SPLITS
        index = len(arrays[row["split"]][0]) if in_array else -1
        if in_array:
            arrays[row["split"]][0].append(pixels)
            arrays[row["split"]][1].append(
                classes.index(row["label"]) if row["label"] in classes else 0
            )
        records.append(
            {
                "id": f"img{i:04d}",
                "path": row.get("path", f"/data/{row['label']}/img{i:04d}.png"),
                "label": row["label"],
                "label_index": classes.index(row["label"]) if row["label"] in classes else -1,
                "split": row["split"],
                "source_split": "",
                "width": row["width"],
                "height": row["height"],
                "mode": row["mode"],
                "bytes": 100,
                "pixel_hash": hashlib.sha256(pixels.tobytes()).hexdigest()
                if pixels is not None
                else "",
                "phash": row["phash"],
                "pixel_mean": float(pixels.mean()) if pixels is not None else 0.0,
                "pixel_std": float(pixels.std()) if pixels is not None else 0.0,
                "status": row["status"],
                "error": row["error"],
                "array_index": index,
            }
        )
    final = {}
    for split, (xs, ys) in arrays.items():
        x = np.stack(xs) if xs else np.zeros((0, SIZE, SIZE, 1), np.uint8)
        final[split] = (x, np.asarray(ys, dtype=np.int64))
    meta = {"classes": classes, "image_size": [SIZE, SIZE], "channels": 1, "source": "test"}
    write_prepared(out, manifest_frame(records), final, meta)
    return out


def run_checks(tmp_path: Path, rows: list[dict], **overrides) -> dict:
    prepared = write_rows(tmp_path, rows)
    return validate.validate_dataset(load_prepared(prepared), shipped("validate", **overrides))


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def failed(report: dict) -> set[str]:
    return {c["name"] for c in report["checks"] if not c["success"]}


def paths_where(rows: list[dict], pred) -> list[str]:
    return [f"/data/{r['label']}/img{i:04d}.png" for i, r in enumerate(rows) if pred(i, r)]


# ---------------------------------------------------------------- the checks


def test_clean_dataset_passes_every_check(tmp_path: Path) -> None:
    report = run_checks(tmp_path, clean_rows())
    assert failed(report) == set()
    assert report["success"] is True
    assert report["errors"] == [] and report["warnings"] == []
    assert [c["name"] for c in report["checks"]] == list(checks.CHECK_NAMES)
    assert all(c["examples"] == [] for c in report["checks"])


def test_label_set_missing_class_in_test(tmp_path: Path) -> None:
    rows = [r for r in clean_rows() if not (r["split"] == "test" and r["label"] == "c")]
    report = run_checks(tmp_path, rows)
    assert "label_set" in failed(report)
    assert check(report, "label_set")["observed"]["missing"] == {"test": ["c"]}
    assert "label_set" in report["errors"] and report["success"] is False


def test_label_set_unknown_label(tmp_path: Path) -> None:
    rows = clean_rows()
    rows[0]["label"] = "zebra"  # not in meta.json classes
    report = run_checks(tmp_path, rows)
    assert check(report, "label_set")["examples"] == ["/data/zebra/img0000.png"]


def test_class_balance_imbalance_and_divergence(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = clean_rows() + [image_row(rng, "train", "a") for _ in range(40)]
    report = run_checks(tmp_path, rows)
    balance = check(report, "class_balance")
    assert not balance["success"] and balance["severity"] == "warning"
    assert balance["observed"]["train_imbalance_ratio"] == pytest.approx(54 / 14, rel=1e-3)
    assert balance["observed"]["val_js_distance"] > 0.05
    assert report["warnings"] == ["class_balance"] and report["success"] is True
    # within bounds when the thresholds allow it
    relaxed = run_checks(tmp_path / "r", rows, max_imbalance_ratio=4.0, max_label_divergence=0.5)
    assert check(relaxed, "class_balance")["success"]


def test_class_balance_min_share(tmp_path: Path) -> None:
    report = run_checks(tmp_path, clean_rows(), min_class_share=0.4)
    assert not check(report, "class_balance")["success"]


def test_min_images_per_class(tmp_path: Path) -> None:
    rows = clean_rows()
    drop = [i for i, r in enumerate(rows) if r["split"] == "train" and r["label"] == "b"][4:]
    rows = [r for i, r in enumerate(rows) if i not in drop]
    report = run_checks(tmp_path, rows, max_imbalance_ratio=10.0, max_label_divergence=1.0)
    result = check(report, "min_images_per_class")
    assert not result["success"]
    assert result["observed"]["classes_below"] == {"b": 4}
    assert report["errors"] == ["min_images_per_class"]
    ok = run_checks(
        tmp_path / "ok",
        rows,
        min_images_per_class=4,
        max_imbalance_ratio=10.0,
        max_label_divergence=1.0,
    )
    assert check(ok, "min_images_per_class")["success"]


def test_corrupt_images_listed_with_reasons(tmp_path: Path) -> None:
    rows = clean_rows() + [bad_row("t1"), bad_row("e1", "empty_file", "0 bytes")]
    report = run_checks(tmp_path, rows)
    result = check(report, "corrupt_images")
    assert not result["success"]
    assert result["examples"] == ["/data/bad/t1.png", "/data/bad/e1.png"]
    assert result["observed"]["unusable"] == 2
    assert result["observed"]["by_status"] == {"empty_file": 1, "truncated": 1}
    assert result["observed"]["reasons"]["/data/bad/e1.png"] == "empty_file: 0 bytes"
    allowed = run_checks(tmp_path / "ok", rows, max_corrupt_fraction=0.05)
    assert check(allowed, "corrupt_images")["success"]


def test_examples_capped_at_max_examples(tmp_path: Path) -> None:
    rows = clean_rows() + [bad_row(f"x{i:02d}") for i in range(12)]
    report = run_checks(tmp_path, rows, max_examples=5)
    result = check(report, "corrupt_images")
    assert result["examples"] == [f"/data/bad/x{i:02d}.png" for i in range(5)]
    assert result["observed"]["offending_files"] == 12
    assert len(result["observed"]["reasons"]) == 5


def test_image_properties_blank_images(tmp_path: Path) -> None:
    rows = clean_rows()
    blank_at = [0, 20, 45]
    for i in blank_at:
        rows[i]["pixels"] = np.full((SIZE, SIZE, 1), 128 + i, dtype=np.uint8)
    report = run_checks(tmp_path, rows)
    result = check(report, "image_properties")
    assert not result["success"]
    assert result["examples"] == paths_where(rows, lambda i, r: i in blank_at)
    assert result["observed"]["blank"] == 3
    ok = run_checks(tmp_path / "ok", rows, max_blank_fraction=0.1)
    assert check(ok, "image_properties")["success"]


def test_image_properties_mixed_sizes_are_informational(tmp_path: Path) -> None:
    rows = clean_rows()
    for r in rows[::2]:
        r.update(width=32, height=24, mode="RGB")
    report = run_checks(tmp_path, rows)
    result = check(report, "image_properties")
    assert result["success"]
    assert set(result["observed"]["sizes"]) == {"8x8", "32x24"}
    assert set(result["observed"]["modes"]) == {"L", "RGB"}


def test_duplicates_within_a_split(tmp_path: Path) -> None:
    rows = clean_rows()
    rows[1]["pixels"] = rows[0]["pixels"].copy()  # same split, same class
    report = run_checks(tmp_path, rows)
    result = check(report, "duplicates")
    assert not result["success"]
    assert result["examples"] == paths_where(rows, lambda i, r: i in (0, 1))
    assert result["observed"]["redundant_copies"] == 1
    assert result["observed"]["label_conflict_images"] == 0
    assert check(report, "split_leakage")["success"]


def test_duplicates_label_conflict_anywhere(tmp_path: Path) -> None:
    rows = clean_rows()
    first_b = next(i for i, r in enumerate(rows) if r["split"] == "train" and r["label"] == "b")
    rows[first_b]["pixels"] = rows[0]["pixels"].copy()  # train "a" and train "b"
    report = run_checks(tmp_path, rows, max_duplicate_fraction=0.5)
    result = check(report, "duplicates")
    assert not result["success"]  # the duplicate fraction is allowed, the conflict is not
    assert result["observed"]["label_conflict_images"] == 2
    assert result["examples"] == paths_where(rows, lambda i, r: i in (0, first_b))


def test_split_leakage_exact_copy(tmp_path: Path) -> None:
    rows = clean_rows()
    test_i = next(i for i, r in enumerate(rows) if r["split"] == "test")
    rows[test_i]["pixels"] = rows[3]["pixels"].copy()
    rows[test_i]["label"] = rows[3]["label"]
    report = run_checks(tmp_path, rows)
    result = check(report, "split_leakage")
    assert not result["success"] and report["errors"] == ["split_leakage"]
    leaked = paths_where(rows, lambda i, r: i == test_i)
    assert result["examples"] == leaked
    assert result["observed"]["exact"] == 1
    assert result["observed"]["pairs"][0]["train_path"] == paths_where(rows, lambda i, r: i == 3)[0]


def test_split_leakage_near_copy_confirmed_by_pixels(tmp_path: Path) -> None:
    rows = clean_rows()
    val_i = next(i for i, r in enumerate(rows) if r["split"] == "val")
    nudged = np.clip(rows[5]["pixels"].astype(int) + 1, 0, 255).astype(np.uint8)
    rows[val_i].update(pixels=nudged, phash=flip_bits(rows[5]["phash"], [3, 40, 61]))
    report = run_checks(tmp_path, rows)
    result = check(report, "split_leakage")
    assert not result["success"]
    assert result["examples"] == paths_where(rows, lambda i, r: i == val_i)
    assert result["observed"]["pairs"][0]["phash_distance"] == 3
    assert result["observed"]["near"] == 1
    # beyond near_duplicate_distance the pair is not even a candidate
    assert check(run_checks(tmp_path / "d2", rows, near_duplicate_distance=2), "split_leakage")[
        "success"
    ]


def test_split_leakage_phash_collision_of_different_images_is_not_leakage(tmp_path: Path) -> None:
    rows = clean_rows()
    val_i = next(i for i, r in enumerate(rows) if r["split"] == "val")
    rows[val_i]["phash"] = rows[5]["phash"]  # same phash, unrelated pixels
    report = run_checks(tmp_path, rows)
    assert check(report, "split_leakage")["success"]
    assert check(report, "split_leakage")["observed"]["pixel_comparisons"] >= 1


def test_unused_rows_are_excluded_from_split_checks(tmp_path: Path) -> None:
    rows = clean_rows()
    rng = np.random.default_rng(3)
    rows += [image_row(rng, "unused", "a", pixels=rows[0]["pixels"].copy()) for _ in range(3)]
    rows += [image_row(rng, "unused", "a", pixels=np.zeros((SIZE, SIZE, 1), np.uint8))]
    report = run_checks(tmp_path, rows)
    assert failed(report) == set()


# ---------------------------------------------------------------- the stage


def _run_main(capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = validate.main([])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_main_clean_digits_exit_0_json_docs_and_mlflow(digits_prepared, capsys) -> None:
    from mlflow.tracking import MlflowClient

    paths = digits_prepared.paths
    code, out, err = _run_main(capsys)
    assert code == 0, err
    assert "validate: passed" in out
    report = json.loads(paths.validation_json.read_text())
    assert set(report) == {"success", "checks", "warnings", "errors"}
    assert report["success"] is True and report["errors"] == []
    for c in report["checks"]:
        assert set(c) == {"name", "success", "severity", "observed", "examples", "limits"}
        assert c["severity"] in ("error", "warning")
    assert [c["name"] for c in report["checks"]] == list(checks.CHECK_NAMES)
    text = paths.validation_json.read_text()
    assert "run_id" not in text

    index = paths.data_docs_dir / "index.html"
    assert index.exists() and "split_leakage" in "".join(
        p.read_text() for p in paths.data_docs_dir.rglob("*.html")
    )
    assert not list(paths.reports_dir.glob(".data_docs.*"))  # staging dir swapped away

    client = MlflowClient(digits_prepared.tracking_uri)
    experiment = client.get_experiment_by_name(small_params()["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'validate'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["validation_success"] == "true"
    assert run.data.metrics["validate/split_leakage.success"] == 1.0
    assert run.data.metrics["validate/class_balance.train_imbalance_ratio"] > 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"validation.json", "data_docs"} <= artifacts

    # unchanged data -> byte-identical JSON (it is a DVC dependency of train)
    assert validate.main([]) == 0
    assert paths.validation_json.read_text() == text


def test_main_broken_dataset_exit_1_names_problems(project, capsys) -> None:
    rows = clean_rows()
    rng = np.random.default_rng(9)
    rows = [r for r in rows if not (r["split"] == "test" and r["label"] == "c")]  # missing class
    test_i = next(i for i, r in enumerate(rows) if r["split"] == "test")
    rows[test_i].update(pixels=rows[2]["pixels"].copy(), label=rows[2]["label"])  # leakage
    rows[1]["pixels"] = rows[0]["pixels"].copy()  # duplicate
    for i in (4, 6, 8):  # blank, more than max_blank_fraction
        rows[i]["pixels"] = np.full((SIZE, SIZE, 1), i, np.uint8)
    rows += [image_row(rng, "train", "a") for _ in range(60)]  # heavy imbalance
    rows += [bad_row(f"c{i}") for i in range(3)]  # corrupt
    write_rows(project.root, rows)

    code, out, err = _run_main(capsys)
    assert code == 1
    report = json.loads(project.paths.validation_json.read_text())
    assert report["success"] is False
    assert set(report["errors"]) == {"label_set", "split_leakage"}
    assert set(report["warnings"]) == {
        "class_balance",
        "corrupt_images",
        "image_properties",
        "duplicates",
    }
    for name in report["errors"]:
        assert name in err
    assert "split_leakage failed (1 file(s)" in err
    assert "label_set failed (classes missing from test: c)" in err
    assert str(project.paths.validation_json) in err
    assert check(report, "corrupt_images")["examples"] == [f"/data/bad/c{i}.png" for i in range(3)]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(small_params()["mlflow"]["experiment"]).experiment_id],
        "tags.stage = 'validate'",
    )
    assert runs[0].data.tags["validation_success"] == "false"
    assert runs[0].data.metrics["validate/split_leakage.success"] == 0.0


def test_main_warnings_only_exit_0(project, capsys) -> None:
    rows = clean_rows() + [bad_row("w1")]
    write_rows(project.root, rows)
    code, out, err = _run_main(capsys)
    assert code == 0
    assert "warnings: corrupt_images" in out


def test_severity_from_params_turns_a_warning_into_an_error(project, capsys) -> None:
    project.write_params(small_params(validate={"severity": {"corrupt_images": "error"}}))
    write_rows(project.root, clean_rows() + [bad_row("w1")])
    code, _, err = _run_main(capsys)
    assert code == 1 and "corrupt_images" in err


def test_main_without_prepared_data_is_a_user_error(project) -> None:
    with pytest.raises(FileNotFoundError, match="prepare"):
        validate.main([])
    assert not project.paths.validation_json.exists()


def test_unreachable_tracking_server_fails_before_any_output(project, monkeypatch) -> None:
    from pipeline.tracking import TrackingError

    write_rows(project.root, clean_rows())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(TrackingError, match="unreachable"):
        validate.main([])
    assert not project.paths.validation_json.exists()
    assert not project.paths.data_docs_dir.exists()


@pytest.mark.slow
def test_cli_exit_codes(project) -> None:
    """The module as DVC runs it: 1 on a failed error check, 2 on a user error."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline.validate"]
    done = subprocess.run(
        cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "run the prepare stage first" in done.stderr
    rows = [r for r in clean_rows() if not (r["split"] == "val" and r["label"] == "b")]
    write_rows(project.root, rows)
    done = subprocess.run(
        cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr
    assert "label_set" in done.stderr and "validation.json" in done.stderr
    assert json.loads(project.paths.validation_json.read_text())["errors"] == ["label_set"]
