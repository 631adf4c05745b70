"""End to end: the real `dvc repro` over the real stages, MLflow and GX.

One module-scoped temp git repo runs the whole pipeline once on a small slice
of the configuration (two variants, a few epochs); the tests then check the
outputs, DVC's rerun semantics and the MLflow records it left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ALWAYS_RUNS, BIN, dvc, init_repo, ran_stages, small_params, write_png_folder

pytestmark = pytest.mark.slow


def test_first_repro_runs_every_stage(pipeline_repo):
    root, output = pipeline_repo
    assert "Running stage 'source'" in output
    assert ran_stages(output) >= {
        "digits",
        "prepare",
        "validate",
        "train@baseline",
        "train@dropout",
        "learning_curve@0.25",
        "learning_curve@0.5",
        "evaluate",
        "report",
    }
    validation = json.loads((root / "reports/validation.json").read_text())
    assert validation["success"] is True
    evaluation = json.loads((root / "reports/evaluation.json").read_text())
    assert set(evaluation["variants"]) == {"baseline", "dropout"}
    for variant in evaluation["variants"].values():
        assert variant["verdict"] in {"overfitting", "underfitting", "good_fit"}
        assert 0.0 <= variant["test"]["accuracy"] <= 1.0
    assert (root / "reports/report.html").stat().st_size > 10_000
    assert (root / "models/baseline/model.keras").exists()


def test_second_repro_is_a_no_op(own_repo):
    root = own_repo  # a copy: dvc writes its lock and state even when nothing reruns
    lock = (root / "dvc.lock").read_bytes()
    second = dvc(root, "repro")
    assert ran_stages(second.stdout) == set(), second.stdout
    assert "source: 1797 files" in second.stdout and "unchanged" in second.stdout
    status = dvc(root, "status", "--json")
    assert json.loads(status.stdout or "{}") == {s: ["always changed"] for s in ALWAYS_RUNS}
    assert (root / "dvc.lock").read_bytes() == lock  # nothing new to commit


def test_changing_one_variant_retrains_only_that_variant(own_repo):
    root = own_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["dropout"] = {"model": {"dropout": 0.3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(root, "repro")
    ran = ran_stages(result.stdout)
    assert "train@dropout" in ran
    assert "train@baseline" not in ran
    assert "prepare" not in ran
    assert {"evaluate", "report"} <= ran


def test_learning_curve_reuses_the_variant_and_reruns_only_a_changed_fraction(own_repo):
    root = own_repo
    evaluation = json.loads((root / "reports/evaluation.json").read_text())
    curve = evaluation["learning_curve"]
    n_train = [p["n_train"] for p in curve["points"]]
    assert [p["fraction"] for p in curve["points"]][-1] == 1.0 and n_train == sorted(n_train)
    # The full-data point is train@baseline's own run, not a third training.
    baseline_run = evaluation["variants"]["baseline"]["mlflow_run_id"]
    assert curve["points"][-1]["mlflow_run_id"] == baseline_run
    assert curve["summary"].startswith(("rising", "flat", "falling", "inconclusive"))
    assert (root / "reports/figures/learning_curve.png").exists()
    assert "Would more data help?" in (root / "reports/report.html").read_text()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["learning_curve"]["fractions"] = [0.25, 0.6]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = ran_stages(dvc(root, "repro").stdout)
    assert "learning_curve@0.6" in ran
    assert not ran & {"learning_curve@0.25", "train@baseline", "train@dropout", "prepare"}
    assert {"evaluate", "report"} <= ran
    evaluation = json.loads((root / "reports/evaluation.json").read_text())
    fractions = [p["fraction"] for p in evaluation["learning_curve"]["points"]]
    assert fractions == pytest.approx([0.25, 0.6, 1.0], abs=0.02)


def test_more_seeds_for_one_variant_retrains_only_that_variant(own_repo):
    root = own_repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["dropout"]["train"] = {"seeds": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = ran_stages(dvc(root, "repro").stdout)
    assert "train@dropout" in ran and "train@baseline" not in ran
    assert {"evaluate", "report"} <= ran
    seeds = json.loads((root / "models/dropout/seeds.json").read_text())
    assert [s["seed"] for s in seeds["seeds"]] == [42, 43]
    evaluation = json.loads((root / "reports/evaluation.json").read_text())
    assert evaluation["variants"]["dropout"]["seeds"]["n_seeds"] == 2
    assert evaluation["variants"]["baseline"]["seeds"]["n_seeds"] == 1
    assert "over 2 seeds" in (root / "reports/report.html").read_text()
    assert ran_stages(dvc(root, "repro").stdout) == set()  # seeds.json is a declared output


def test_mlflow_groups_the_runs_of_one_repro(pipeline_repo):
    root, _ = pipeline_repo
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(
        yaml.safe_load((root / "params.yaml").read_text())["mlflow"]["experiment"]
    )
    # The UI opens the experiment on its training runs, not the GenAI overview.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert {r.data.tags["variant"] for r in runs} == {"baseline", "dropout"}
    assert {r.info.run_name for r in runs} == {"train · baseline", "train · dropout"}
    first_two = sorted(runs, key=lambda r: r.info.start_time)[:2]
    assert first_two[0].data.tags["repro_id"] == first_two[1].data.tags["repro_id"]
    history = client.get_metric_history(first_two[0].info.run_id, "curves/val_loss")
    assert [m.step for m in history] == list(range(1, len(history) + 1))

    # One parent run per repro; every stage's run nests under it.
    repro = first_two[0].data.tags["repro_id"]
    (parent,) = client.search_runs(
        [experiment.experiment_id], f"tags.pipeline_run = 'true' and tags.repro_id = '{repro}'"
    )
    assert parent.info.run_name.startswith("pipeline · ") and parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["stage"] for r in children) == [
        "evaluate", "learning_curve", "learning_curve", "train", "train", "validate",
    ]  # fmt: skip
    # The evaluate run holds the pipeline's answer; each variant's numbers are on its run.
    (evaluate,) = [r for r in children if r.data.tags["stage"] == "evaluate"]
    assert not [k for k in evaluate.data.metrics if k.startswith(("baseline.", "dropout."))]
    assert 0 < evaluate.data.metrics["pipeline/best_test_accuracy"] <= 1
    for run in runs:
        assert {"eval/test_accuracy", "eval/gap_accuracy"} <= set(run.data.metrics)
        assert run.data.tags["verdict"] in {"overfitting", "underfitting", "good_fit"}


def test_dvc_metrics_and_plots_read_the_declared_outputs(own_repo):
    root = own_repo  # a copy: dvc writes its state even when it only reads
    metrics = json.loads(dvc(root, "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    # evaluate's summary is the one metrics file (the columns of `dvc exp show`); each
    # variant's training facts stay in models/<v>/metrics.json, an ordinary output.
    assert set(files) == {"reports/metrics.json"}
    assert files["reports/metrics.json"]["data"]["baseline"]["verdict"] in {
        "overfitting",
        "underfitting",
        "good_fit",
    }
    plots = json.loads(dvc(root, "plots", "show", "--json").stdout)["data"]
    assert {
        "train_vs_val_loss",
        "train_vs_val_accuracy",
        "val_accuracy_all_variants",
        "gap_all_variants",
        "models/baseline/history.csv",
    } <= set(plots)
    # Across commits: the workspace against the first commit (which had no results).
    diff = json.loads(dvc(root, "metrics", "diff", "HEAD", "--json").stdout or "{}")
    assert "reports/metrics.json" in diff.get("diff", diff)
    plot_diff = json.loads(dvc(root, "plots", "diff", "HEAD", "--json").stdout)["data"]
    panel = plot_diff["train_vs_val_loss"][0]
    assert panel["revisions"] == ["workspace"]  # HEAD predates any results
    values = panel["content"]["data"]["values"]
    assert {v["variant"] for v in values} == {"baseline", "dropout"}


@pytest.mark.parametrize(
    "entry,extra",
    [("validate", []), ("train", ["-P", "variant=baseline"]), ("evaluate", [])],
)
def test_mlproject_entry_points_run_in_the_project_experiment(own_repo, entry, extra):
    """`mlflow run . -e <entry> --env-manager local`: the stage's run is a child of mlflow's.

    In a copy: a stage run outside DVC leaves outputs `dvc repro` would redo."""

    from mlflow import MlflowClient

    from .conftest import REPO

    root = own_repo
    for name in ("MLproject", "conda.yaml"):
        shutil.copy2(REPO / name, root / name)
    experiment = yaml.safe_load((root / "params.yaml").read_text())["mlflow"]["experiment"]
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.pop("MLFLOW_RUN_ID", None)
    done = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            ".",
            "-e",
            entry,
            *extra,
            "--env-manager",
            "local",
            "--experiment-name",
            experiment,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    children = client.search_runs(
        [exp.experiment_id],
        f"tags.stage = '{entry}' and tags.repro_id LIKE 'mlflow-run-%'",
    )
    assert children, f"no {entry} run made under mlflow run"
    parent_id = children[0].data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert parent.info.experiment_id == exp.experiment_id
    assert parent.info.status == "FINISHED"


def test_broken_dataset_stops_at_validate(tmp_path: Path):
    root = tmp_path / "repo"
    params = small_params(data={"image_size": [8, 8], "source": "images"})
    init_repo(root, params)
    # Three classes with enough images each, but 'c' has none in the test
    # split's reach (only 2 images) and train/test share duplicated files.
    write_png_folder(root / "images", per_class=12, classes=("a", "b"), seed=1)
    write_png_folder(root / "images", per_class=2, classes=("c",), seed=2)
    for i in range(6):  # the same picture many times: leaks across splits
        (root / "images/a" / f"dup{i}.png").write_bytes((root / "images/a/000.png").read_bytes())
    result = dvc(root, "repro", check=False)
    assert result.returncode != 0
    assert "Running stage 'validate'" in result.stdout
    assert "train@" not in result.stdout
    validation = json.loads((root / "reports/validation.json").read_text())
    failed = {c["name"] for c in validation["checks"] if not c["success"]}
    assert {"min_images_per_class", "split_leakage"} <= failed
    assert not (root / "models").exists()


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def _model_versions(root: Path) -> list[str]:
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    name = yaml.safe_load((root / "params.yaml").read_text())["registry"]["model_name"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(v.version for v in client.search_model_versions(f"name='{name}'"))


def test_dvc_experiments_rerun_one_variant_compare_and_restore(own_repo):
    """`dvc exp run -S` reruns only what the change touches; `dvc exp show` has each
    variant's val accuracy, gap and verdict; apply and branch bring the results back."""
    root = own_repo
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/.pipeline_state/\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "results")
    committed = json.loads((root / "reports/metrics.json").read_text())

    versions_before = _model_versions(root)
    run = dvc(root, "exp", "run", "-n", "drop03", "-S", "variants.dropout.model.dropout=0.3")
    ran = ran_stages(run.stdout)
    assert {"train@dropout", "evaluate", "report"} <= ran, run.stdout
    assert not ran & {"train@baseline", "prepare", "validate"}, run.stdout
    # an experiment feeds no challenger to the registry unless asked
    assert "no model version registered" in run.stdout, run.stdout
    assert _model_versions(root) == versions_before

    shown = json.loads(dvc(root, "exp", "show", "--json").stdout)
    (exp,) = [
        rev["data"]
        for head in shown
        for group in head.get("experiments") or []
        for rev in group["revs"]
        if rev.get("name") == "drop03"
    ]
    params = exp["params"]["params.yaml"]["data"]
    assert params["variants"]["dropout"]["model"]["dropout"] == 0.3
    assert set(exp["metrics"]) == {"reports/metrics.json"}  # the summary alone, per variant
    columns = exp["metrics"]["reports/metrics.json"]["data"]
    for variant in ("baseline", "dropout"):
        assert columns[variant]["verdict"] in {"overfitting", "underfitting", "good_fit"}
        assert 0 <= columns[variant]["val_accuracy"] <= 1
        assert -1 <= columns[variant]["gap"] <= 1
    assert columns["baseline"] == committed["baseline"]  # not retrained

    git(root, "checkout", "--", ".")  # back to the committed results...
    dvc(root, "checkout")
    assert json.loads((root / "reports/metrics.json").read_text()) == committed
    dvc(root, "exp", "apply", "drop03")  # ...and to the experiment's
    assert json.loads((root / "reports/metrics.json").read_text()) == columns
    assert "dropout: 0.3" in (root / "params.yaml").read_text()
    dvc(root, "exp", "branch", "drop03", "drop03-results")
    assert "drop03-results" in git(root, "branch", "--list")
