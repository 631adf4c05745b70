"""The `overfit` console command: diagnose runs you already have.

    overfit diagnose history.csv --n-train 6000 --n-val 1000 --n-classes 10
    overfit diagnose --mlflow-run <run id>        # autolog's run or this project's
    overfit report [--open]                       # the latest page's path

Inputs: a history file (CSV with one row per epoch: Keras's CSVLogger,
models/<variant>/history.csv) or an MLflow run in the tracking store that
MLFLOW_TRACKING_URI names (default: ./mlflow.db when it exists). A run's
curves are read under either naming, `loss`/`val_loss`/`accuracy`/
`val_accuracy` as `mlflow.keras.autolog` logs them, or this project's
`curves/...`; split sizes and the class count come from the run when it logged
them (this project's `data.n_*` params, autolog's datasets and model
signature), else from the flags.

Outputs: the verdict on stdout (or the whole diagnosis with --json), a
one-page HTML answer (overfit_reports/ unless --html), and, for an MLflow run,
the verdict written back to it: tags `verdict`, `verdict_grade`,
`verdict_label`, `verdict_summary`, artifacts diagnosis.json and the page.
A user's mistake (a missing file, a run without val metrics) is one line,
exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import webbrowser
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import api
from pipeline.cli import StageError, run_stage
from pipeline.diagnosis import Diagnosis
from pipeline.diagnosis_page import (
    default_page_path,
    latest_page,
    render_page,
    run_facts,
    write_page,
)
from pipeline.history import METRIC_COLUMNS

# The metrics of a run that can hold a curve, under any naming api.history_frame maps.
CURVE_NAMES = {
    *METRIC_COLUMNS,
    *api.COLUMN_ALIASES,
    *(f"{api.CURVES_PREFIX}{m}" for m in (*METRIC_COLUMNS, "learning_rate")),
}
RUN_FACTS = {"training/best_epoch", "training/stopped_epoch", "stopped_epoch", "restored_epoch"}
EVAL_SCORES = {f"eval/{split}_{m}" for split in ("train", "val") for m in ("accuracy", "loss")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="overfit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diagnose", help="diagnose a history file or an MLflow run")
    d.add_argument("history", nargs="?", type=Path, help="a CSV history, one row per epoch")
    d.add_argument("--mlflow-run", metavar="RUN_ID", help="diagnose this MLflow run instead")
    d.add_argument("--n-train", type=int, help="images in the train split")
    d.add_argument("--n-val", type=int, help="images in the validation split")
    d.add_argument("--n-classes", type=int, help="number of classes")
    d.add_argument(
        "--restore-best-weights",
        action="store_true",
        help="the kept model holds the lowest-val-loss epoch (EarlyStopping restored it)",
    )
    d.add_argument(
        "--train-scores",
        nargs=2,
        type=float,
        metavar=("LOSS", "ACCURACY"),
        help="the kept model's own train loss and accuracy (model.evaluate on the train split)",
    )
    d.add_argument("--params", type=Path, help="a params.yaml whose evaluate section judges")
    d.add_argument("--html", type=Path, help="where to write the page")
    d.add_argument("--json", action="store_true", help="print the whole diagnosis as JSON")
    d.add_argument("--no-write-back", action="store_true", help="leave the MLflow run as it is")
    r = sub.add_parser("report", help="the latest report's path")
    r.add_argument("--open", action="store_true", help="open it in the browser")
    r.add_argument("--dir", type=Path, default=Path("."), help="project folder (default: .)")
    args = parser.parse_args(argv)
    args.evaluated = False
    if args.command == "diagnose" and (args.history is None) == (args.mlflow_run is None):
        parser.error("give a history file or --mlflow-run RUN_ID (one of them)")
    return args


def history_from_run(histories: Mapping[str, Mapping[int, float]]) -> pd.DataFrame:
    """Per-step metric histories (MLflow's) as one history: a row per step that has every
    curve (epochs without validation, validation_freq > 1, are left out)."""
    curves = {k: v for k, v in histories.items() if k in CURVE_NAMES}
    frame = pd.DataFrame({k: pd.Series(dict(v), dtype=float) for k, v in curves.items()})
    frame = frame.sort_index().rename(columns=api._column_names(frame.columns))
    frame = frame.loc[:, ~frame.columns.duplicated()]
    present = [c for c in METRIC_COLUMNS if c in frame.columns]
    frame = frame.dropna(subset=present)
    frame.insert(0, "epoch", frame.index.astype(int))
    return frame.reset_index(drop=True)


def _last(histories: Mapping[str, Mapping[int, float]], key: str) -> float | None:
    steps = histories.get(key)
    return float(steps[max(steps)]) if steps else None


def _int_param(params: Mapping[str, str], key: str) -> int | None:
    try:
        return int(params[key])
    except (KeyError, ValueError):
        return None


def run_arguments(
    record: Mapping[str, Any], n_epochs: int, args: argparse.Namespace
) -> dict[str, Any]:
    """`api.diagnose`'s arguments from a run (tracking.read_run) whose history has
    `n_epochs` rows, flags filling gaps."""
    h, params, rows = record["histories"], record["params"], record["dataset_rows"]
    known = {
        "n_train": _int_param(params, "data.n_train") or rows.get("train"),
        "n_val": _int_param(params, "data.n_val") or rows.get("eval") or rows.get("validation"),
        "n_classes": _int_param(params, "data.n_classes") or record["output_width"],
    }
    for key, value in known.items():
        flag = getattr(args, key)
        known[key] = flag if flag is not None else value
        if known[key] is None:
            raise StageError(
                f"run {args.mlflow_run} does not record {key.replace('_', ' ')}: pass "
                f"--{key.replace('_', '-')}"
            )
    kwargs: dict[str, Any] = {
        **known,
        **_scores_flag(args),
        "name": record["tags"].get("mlflow.runName", "model"),
    }
    best = _last(h, "training/best_epoch")  # this project's runs
    stopped = _last(h, "training/stopped_epoch")
    stopped = stopped if stopped is not None else _last(h, "stopped_epoch")  # autolog's
    if best is not None:
        kwargs["best_epoch"] = int(best)
    restore = params.get("restore_best_weights", "").lower() == "true"
    kwargs["restore_best_weights"] = restore or args.restore_best_weights
    planned = _int_param(params, "epochs")  # autolog logs fit's arguments
    if stopped is not None:
        kwargs["stopped_early"] = stopped > 0
    elif planned is not None:
        kwargs["stopped_early"] = n_epochs < planned
    if all(k in h for k in EVAL_SCORES):  # evaluate measured the saved model
        for split in ("train", "val"):
            kwargs[f"{split}_scores"] = {
                m: _last(h, f"eval/{split}_{m}") for m in ("accuracy", "loss")
            }
    return kwargs


def diagnose_run(args: argparse.Namespace) -> tuple[Diagnosis, pd.DataFrame, dict[str, Any]]:
    from pipeline import tracking

    if not tracking.local_store_exists():
        raise StageError(
            f"no tracking store here ({Path.cwd() / 'mlflow.db'} does not exist): set "
            "MLFLOW_TRACKING_URI, or run from the folder that holds mlflow.db"
        )
    wanted = CURVE_NAMES | RUN_FACTS | EVAL_SCORES
    record = tracking.read_run(args.mlflow_run, lambda key: key in wanted)
    frame = history_from_run(record["histories"])
    if frame.empty or not set(METRIC_COLUMNS) <= set(frame.columns):
        found = sorted(record["histories"]) or ["no metrics"]
        raise StageError(
            f"run {args.mlflow_run} has no per-epoch loss/accuracy curves with validation "
            f"(found: {', '.join(found)}); log val_loss and val_accuracy each epoch"
        )
    kwargs = run_arguments(record, len(frame), args)
    # This pipeline's evaluate already tagged it, comparing it with the other variants.
    args.evaluated = record["tags"].get("evaluated") == "true"
    result = api.diagnose(frame, params=args.params, **kwargs)
    return result, frame, kwargs


def diagnose_file(args: argparse.Namespace) -> tuple[Diagnosis, pd.DataFrame, dict[str, Any]]:
    """A CSV history; this project's models/<variant>/history.csv also reads the best
    and stopped epochs from the metrics.json beside it."""
    path: Path = args.history
    frame = api.history_frame(path)
    needed = ("n_train", "n_val", "n_classes")
    missing = [f"--{k.replace('_', '-')}" for k in needed if getattr(args, k) is None]
    if missing:
        raise StageError(
            f"{path}: a history file does not say its split sizes or classes: pass "
            + " ".join(missing)
        )
    kwargs: dict[str, Any] = {
        "n_train": args.n_train,
        "n_val": args.n_val,
        "n_classes": args.n_classes,
        "restore_best_weights": args.restore_best_weights,
        "name": path.stem if path.stem != "history" else path.parent.name or "model",
        **_scores_flag(args),
        **_metrics_beside(path),
    }
    return api.diagnose(frame, params=args.params, **kwargs), frame, kwargs


def _scores_flag(args: argparse.Namespace) -> dict[str, Any]:
    return {"train_scores": list(args.train_scores)} if args.train_scores else {}


def _metrics_beside(history: Path) -> dict[str, Any]:
    """best_epoch / stopped_early from a train stage's metrics.json next to the history."""
    try:
        metrics = json.loads((history.parent / "metrics.json").read_text())
        best, stopped = int(metrics["best_epoch"]), int(metrics["stopped_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {"best_epoch": best, "stopped_early": stopped > 0}


def diagnose_command(args: argparse.Namespace) -> int:
    try:
        if args.mlflow_run:
            result, frame, kwargs = diagnose_run(args)
            source = f"MLflow run {args.mlflow_run}"
        else:
            result, frame, kwargs = diagnose_file(args)
            source = str(args.history)
    except ValueError as exc:  # the API's own checks, phrased for the user
        where, message = str(args.mlflow_run or args.history), str(exc)
        raise StageError(message if message.startswith(where) else f"{where}: {message}") from None
    facts = run_facts(
        result, kwargs["n_train"], kwargs["n_val"], kwargs["n_classes"], "train_scores" in kwargs
    )
    html = render_page(result, frame, facts, source, api.thresholds_source(args.params))
    page = write_page(html, args.html or default_page_path(result.variant), result.variant)
    write_back = args.mlflow_run and not args.no_write_back and not args.evaluated
    if write_back:
        from pipeline import tracking

        tracking.write_diagnosis(args.mlflow_run, result.to_dict(), page)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    print(result.answer)
    for line in result.evidence:
        print(f"  - {line}")
    print(f"page: {page}")
    if write_back:
        print(f"written to MLflow run {args.mlflow_run}: tags verdict*, diagnosis.json")
    elif args.mlflow_run and args.evaluated:
        print(f"MLflow run {args.mlflow_run} left as the pipeline's evaluate tagged it")
    return 0


def report_command(args: argparse.Namespace) -> int:
    page = latest_page(args.dir)
    if page is None:
        raise StageError(
            f"no report under {args.dir.resolve()}: run `dvc repro` (reports/report.html) "
            "or `overfit diagnose` (overfit_reports/)"
        )
    print(page.resolve())
    if args.open:
        webbrowser.open(page.resolve().as_uri())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "report":
        return report_command(args)
    return diagnose_command(args)


def console() -> None:
    """The `overfit` entry point ([project.scripts])."""
    run_stage(main, sys.argv[1:])


if __name__ == "__main__":
    console()
