"""The project's files agree with each other: pins, paths, stage commands."""

from __future__ import annotations

import re

import yaml

from pipeline.config import load_config
from pipeline.paths import Paths

from .conftest import REPO


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"requirements.lock line {line!r} is not pinned with =="
        pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_conda_env_carries_the_lock_pins():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda["dependencies"]
    conda_pins = {_norm(p.split("==")[0]): p.split("==")[1] for p in pip_section}
    assert conda_pins == lock_pins(), "run scripts/sync_conda.py after changing requirements.lock"


def test_pyproject_pins_match_the_lock():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    for dep in deps:
        spec = dep.split(";")[0].strip()
        name, _, version = spec.partition("==")
        assert version, f"pyproject dependency {dep!r} is not pinned"
        assert pins.get(_norm(name)) == version, (
            f"{name}: pyproject {version} vs lock {pins.get(_norm(name))}"
        )


def test_dvc_yaml_paths_match_pipeline_paths():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    paths = Paths(REPO)
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    stages = dvc["stages"]
    assert rel(paths.digits_dir) in stages["digits"]["outs"]
    assert rel(paths.prepared_dir) in stages["prepare"]["outs"]
    validate_outs = [
        next(iter(o)) if isinstance(o, dict) else o for o in stages["validate"]["outs"]
    ]
    assert rel(paths.validation_json) in validate_outs
    assert rel(paths.data_docs_dir) in validate_outs
    train = stages["train"]["do"]
    train_outs = [next(iter(o)) if isinstance(o, dict) else o for o in train["outs"]]
    assert rel(paths.model_file("${key}")) in train_outs
    assert rel(paths.run_info("${key}")) in train_outs
    assert rel(paths.seeds_json("${key}")) in train_outs
    assert next(iter(train["metrics"][0])) == rel(paths.train_metrics("${key}"))
    assert next(iter(train["plots"][0])) == rel(paths.history_csv("${key}"))
    curve = stages["learning_curve"]
    assert curve["foreach"] == "${learning_curve.fractions}"
    curve_outs = [next(iter(o)) if isinstance(o, dict) else o for o in curve["do"]["outs"]]
    assert curve_outs == [rel(paths.fraction_dir("${item}"))]
    assert rel(paths.models_dir) in stages["evaluate"]["deps"]  # holds the curve's outputs
    evaluate_outs = [
        next(iter(o)) if isinstance(o, dict) else o for o in stages["evaluate"]["outs"]
    ]
    for path in (
        paths.evaluation_json,
        paths.comparison_csv,
        paths.comparison_md,
        paths.figures_dir,
    ):
        assert rel(path) in evaluate_outs
    report_outs = [next(iter(o)) for o in stages["report"]["outs"]]
    assert rel(paths.report_html) in report_outs


def test_every_stage_runs_a_pipeline_module_that_exists():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        cmd = stage.get("cmd") or stage["do"]["cmd"]
        match = re.match(r"python -m (pipeline\.\w+)", cmd)
        assert match, f"stage {name}: {cmd!r} is not `python -m pipeline.<module>`"
        module = match.group(1).replace(".", "/") + ".py"
        assert (REPO / module).exists(), f"stage {name} runs {module}, which does not exist"


def test_train_foreach_tracks_only_its_own_variant_params():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    train = dvc["stages"]["train"]
    assert train["foreach"] == "${variants}"
    assert "variants.${key}" in train["do"]["params"]
    assert "variants" not in train["do"]["params"]


def test_learning_curve_stage_tracks_one_fraction_not_the_list():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    curve = dvc["stages"]["learning_curve"]["do"]
    assert "--fraction ${item}" in curve["cmd"]
    assert "variants.${learning_curve.variant}" in curve["params"]
    # The whole list would rerun every fraction when one changes.
    assert not {"learning_curve", "learning_curve.fractions", "variants"} & set(curve["params"])
    # Same code as the train stage: the learning curve is train.py with a subset.
    train_deps = set(dvc["stages"]["train"]["do"]["deps"])
    assert set(curve["deps"]) == train_deps


def test_default_params_define_the_required_variants():
    cfg = load_config(REPO / "params.yaml")
    assert {"baseline", "dropout", "l2", "augmentation", "combined", "small", "large"} <= set(
        cfg.variants
    )
    assert cfg.variant("baseline").model.dropout == 0.0
    assert cfg.variant("dropout").model.dropout > 0
    assert cfg.variant("l2").model.l2 > 0
    assert cfg.variant("augmentation").model.augmentation.enabled
    assert not cfg.variant(
        "augmentation"
    ).model.augmentation.flip  # digits: a flip changes the class


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in ci
