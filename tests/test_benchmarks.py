"""The benchmarks' own logic that a wrong figure could hide behind: what
bench_pipeline hands `dvc repro` as params.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, load_benchmark


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_bench_pipeline_points_the_params_at_fashion_mnist_and_keeps_the_chosen_variants(
    project: Path,
):
    bench = load_benchmark("bench_pipeline")
    returned = bench.configure(
        project,
        Path("/data/fashion"),
        ["train.batch_size=128", "variants.compact.train.early_stopping={patience: 3}"],
        REPO / "examples" / "params-fashion.yaml",
        ["baseline", "compact"],
    )
    written = yaml.safe_load((project / "params.yaml").read_text())
    assert written == returned
    assert written["data"]["source"] == "/data/fashion"
    assert written["data"]["format"] == "idx"
    assert written["validate"]["severity"]["split_leakage"] == "warning"
    assert list(written["variants"]) == ["baseline", "compact"]
    compact = written["variants"]["compact"]
    assert compact["model"]["builder"].endswith("compact_fashion.py:build")
    assert compact["train"]["early_stopping"] == {"patience": 3}
    assert compact["train"]["reduce_lr"]["enabled"]  # the override replaced one key only
    assert written["train"]["batch_size"] == 128  # the example has 256
    assert written["train"]["precision"] == "auto"  # from the example, not params.yaml


def test_bench_pipeline_cuts_the_variants_after_the_overrides(project: Path):
    """An override may name the learning curve's variant, or a variant left out."""
    bench = load_benchmark("bench_pipeline")
    written = bench.configure(
        project,
        Path("/d"),
        ["learning_curve.variant=small", "variants.dropout.model.dropout=0.1"],
        None,
        ["small"],
    )
    assert list(written["variants"]) == ["small"]
    with pytest.raises(SystemExit, match="must keep learning_curve.variant 'small'"):
        bench.configure(
            project,
            Path("/d"),
            ["learning_curve.variant=small"],
            REPO / "params.yaml",
            ["baseline"],
        )


def test_bench_pipeline_refuses_unknown_variants_and_dropping_the_learning_curves_one(
    project: Path, tmp_path: Path
):
    bench = load_benchmark("bench_pipeline")
    before = (project / "params.yaml").read_text()
    with pytest.raises(SystemExit, match="--variants 'nope': not in the params' variants"):
        bench.configure(project, Path("/d"), [], None, ["baseline", "nope"])
    with pytest.raises(SystemExit, match="must keep learning_curve.variant 'baseline'"):
        bench.configure(project, Path("/d"), [], None, ["dropout"])
    with pytest.raises(SystemExit, match="params.yaml has no section 'nosuch'"):
        bench.configure(project, Path("/d"), ["nosuch.key=1"])
    partial = tmp_path / "partial.yaml"
    partial.write_text("data: {source: x}\n")
    with pytest.raises(
        SystemExit,
        match=r"partial.yaml: not a whole params.yaml: no section "
        r"validate, variants, learning_curve",
    ):
        bench.configure(project, Path("/d"), [], partial)
    assert (project / "params.yaml").read_text() == before
