"""The project's files agree with each other: pins, paths, stage commands."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

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
    extras = project["optional-dependencies"]
    deps = project["dependencies"] + [d for group in extras.values() for d in group]
    for dep in deps:
        spec = dep.split(";")[0].strip()
        name, _, version = spec.partition("==")
        name = name.split("[")[0]  # psycopg[binary]: the lock pins psycopg itself
        assert version, f"pyproject dependency {dep!r} is not pinned"
        assert pins.get(_norm(name)) == version, (
            f"{name}: pyproject {version} vs lock {pins.get(_norm(name))}"
        )


def test_dvc_yaml_paths_match_pipeline_paths():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    paths = Paths(REPO)
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    stages = dvc["stages"]
    assert rel(paths.digits_dir) in [next(iter(o)) for o in stages["digits"]["outs"]]
    assert rel(paths.prepared_dir) in [next(iter(o)) for o in stages["prepare"]["outs"]]
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
    assert rel(paths.train_metrics("${key}")) in train_outs
    # The one DVC metrics file is evaluate's summary (the columns of `dvc exp show`).
    assert "metrics" not in train
    assert [next(iter(m)) for m in stages["evaluate"]["metrics"]] == [rel(paths.evaluation_metrics)]
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


def imported_modules(path: Path) -> set[str]:
    """The `pipeline.*` modules a source file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pipeline.catalog import validation`: a submodule
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if module_file(submodule) else node.module)
    return {m for m in found if m.startswith("pipeline.") and module_file(m)}


def module_file(module: str) -> str | None:
    """The source file of a pipeline module or package, None if there is none."""
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (REPO / candidate).is_file():
            return candidate
    return None


def import_closure(module: str) -> set[str]:
    """Every pipeline/ source file that running `python -m <module>` may execute.

    Importing `pipeline.a.b` runs the package `pipeline.a`'s __init__ too.
    """
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(imported_modules(REPO / module_file(current)))
        parent = current.rpartition(".")[0]
        if parent != "pipeline":
            todo.append(parent)
    return {module_file(m) for m in seen}


def test_each_stage_deps_are_exactly_its_import_closure():
    """A module a stage imports but does not list leaves `dvc repro` reporting stale
    results as up to date; one it lists but does not import reruns it for nothing."""
    # pipeline/__init__.py runs on every import; it holds only a docstring, the version,
    # and the lazy `__getattr__` of the public API (it imports nothing until a user asks
    # for pipeline.diagnose), which no stage reads, so it is no dependency.
    init = ast.parse((REPO / "pipeline/__init__.py").read_text()).body
    inert = (ast.Expr, ast.Assign, ast.AnnAssign)
    for node in init:
        lazy = isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        typing_only = isinstance(node, ast.ImportFrom) and node.module == "typing"
        assert isinstance(node, inert) or lazy or typing_only, "list it in deps now"
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        module = re.match(r"python -m (pipeline\.\w+)", body["cmd"]).group(1)
        listed = {d for d in body["deps"] if d.startswith("pipeline/") and d.endswith(".py")}
        closure = import_closure(module)
        assert not closure - listed, f"stage {name}: deps miss {sorted(closure - listed)}"
        assert not listed - closure, f"stage {name}: deps list unused {sorted(listed - closure)}"
        assert len(body["deps"]) == len(set(body["deps"])), f"stage {name}: a dep is listed twice"


def test_the_closure_follows_imports_inside_functions(tmp_path: Path):
    """The deps test must see lazy imports (stages import TensorFlow-side code late)."""
    source = tmp_path / "stage.py"
    source.write_text(
        "from pipeline import config\n"
        "def main():\n"
        "    from pipeline.io import write_json_atomic\n"
        "    import pipeline.paths\n"
        "    from pipeline.nowhere import x\n"
        "    from pipeline.catalog import training\n"
    )
    assert imported_modules(source) == {
        "pipeline.config",
        "pipeline.io",
        "pipeline.paths",
        "pipeline.catalog.training",
    }
    closure = import_closure("pipeline.catalog.training")
    assert {"pipeline/catalog/__init__.py", "pipeline/catalog/training.py"} <= closure


def test_every_output_persists_so_a_failed_stage_keeps_the_last_good_one():
    """DVC deletes non-persistent outputs before a stage runs; ours write atomically."""
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind, []):
                options = next(iter(out.values())) if isinstance(out, dict) else {}
                assert options.get("persist") is True, f"{name} {kind} {out}"


def test_training_depends_on_the_validation_flags_not_the_whole_report():
    """A validate knob that only moves a number in validation.json must not retrain."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    paths = Paths(REPO)
    flags = str(paths.validation_flags_json.relative_to(REPO))
    report = str(paths.validation_json.relative_to(REPO))
    validate_outs = [
        next(iter(o)) if isinstance(o, dict) else o for o in stages["validate"]["outs"]
    ]
    assert flags in validate_outs
    for name in ("train", "learning_curve"):
        deps = stages[name]["do"]["deps"]
        assert flags in deps and report not in deps, name


# The layers of docs/architecture.md.
STAGES = {
    "digits", "source", "model_source", "prepare", "validate", "train", "evaluate", "report",
    "retrain",
}  # fmt: skip
INFRASTRUCTURE = {
    "config", "paths", "catalog", "io", "tracking", "gx_suite", "prepared", "lock",
    "processes", "dvc_runner", "cli", "progress",
}  # fmt: skip
PURE_CORES = [
    "diagnosis", "learning_curve", "seeds", "assessment", "tables", "gates", "judgement",
    "report_context", "splitting", "stopping", "trained_on", "api",
]  # fmt: skip


def pipeline_modules() -> dict[str, set[str]]:
    """Each pipeline module's top-level name -> the top-level names it imports."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if len(parts) < 2 or parts[1] == "__init__":
            continue
        graph.setdefault(parts[1], set()).update(m.split(".")[1] for m in imported_modules(path))
    return graph


def test_the_layers_hold():
    """No stage imports another; infrastructure imports nothing above it."""
    graph = pipeline_modules()
    assert set(graph) >= STAGES | INFRASTRUCTURE, "a layer names a module that does not exist"
    for module, imports in graph.items():
        if module in STAGES:
            assert not imports & (STAGES - {module}), f"stage {module} imports a stage"
        if module in INFRASTRUCTURE:
            above = imports - INFRASTRUCTURE
            assert not above, f"infrastructure {module} imports {sorted(above)}"


def test_only_tracking_imports_mlflow():
    for path in (REPO / "pipeline").rglob("*.py"):
        if path.name == "tracking.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(n.split(".")[0] == "mlflow" for n in names), path


def test_pure_cores_load_without_tensorflow_keras_or_mlflow():
    code = (
        "import sys\n"
        + "".join(f"import pipeline.{m}\n" for m in PURE_CORES)
        + "heavy = {'tensorflow', 'keras', 'mlflow'} & set(sys.modules)\n"
        + "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_ruff_is_clean_including_complexity():
    """Lint, format and the complexity limit (pyproject: C90, max-complexity 10) hold."""
    ruff = str(Path(sys.executable).parent / "ruff")
    code = ["pipeline", "tests", "benchmarks", "scripts", "examples"]
    for args in (["check", *code], ["format", "--check", *code]):
        done = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
