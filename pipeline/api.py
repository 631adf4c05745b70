"""The public Python API: diagnose a training run you ran yourself.

    from pipeline import diagnose

    history = model.fit(x, y, validation_data=(x_val, y_val), epochs=30)
    result = diagnose(history, n_train=len(x), n_val=len(x_val))
    result                   # the one-sentence answer
    result.verdict, result.grade, result.evidence, result.training, result.onset_epoch

Inputs: a Keras `History` (what `model.fit` returns), its `.history` dict, or a
pandas DataFrame with one row per epoch (Keras's CSVLogger file, this project's
models/<variant>/history.csv, or metric histories read from MLflow), plus the
split sizes, which set the noise every comparison is judged against.
Optionally the kept model's own train and val scores (`model.evaluate`): the
history's train accuracy is averaged over each epoch with dropout and
augmentation active, so the saved model's scores give the truer gap.

Output: the same `Diagnosis` the pipeline writes into reports/evaluation.json
(verdict, grade, summary, evidence, the training block and the onset epoch),
judged with the thresholds of the project's params.yaml `evaluate` section as
shipped with the package, or those of the params file passed as `params`.

Pure: no TensorFlow import, no MLflow, no files except the params file read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import diagnosis
from pipeline.config import EvaluateConfig, load_evaluate_config
from pipeline.curves import best_epoch_of, check_history
from pipeline.history import METRIC_COLUMNS
from pipeline.tracking import SECTION_CURVES

# The params.yaml shipped inside the package (a link to the project's own in a source
# checkout): its `evaluate` section is the default thresholds, declared once.
DEFAULT_PARAMS = Path(__file__).resolve().parent / "params.yaml"

# Other names for this project's history columns, as Keras, its CSVLogger and
# MLflow's autologging write them. A name already present wins over an alias.
COLUMN_ALIASES = {
    "acc": "accuracy",
    "val_acc": "val_accuracy",
    "sparse_categorical_accuracy": "accuracy",
    "val_sparse_categorical_accuracy": "val_accuracy",
    "categorical_accuracy": "accuracy",
    "val_categorical_accuracy": "val_accuracy",
    "binary_accuracy": "accuracy",
    "val_binary_accuracy": "val_accuracy",
    "validation_loss": "val_loss",  # MLflow's keras autolog logs both names
    "validation_accuracy": "val_accuracy",
    "lr": "learning_rate",
}
CURVES_PREFIX = f"{SECTION_CURVES}/"  # this project's per-epoch MLflow metric names


def evaluate_config(params: Path | str | None = None) -> EvaluateConfig:
    """The verdict thresholds: the `evaluate` section of `params` (default: the shipped
    params.yaml)."""
    return load_evaluate_config(params or DEFAULT_PARAMS)


def history_frame(history: Any) -> pd.DataFrame:
    """A history as this project's DataFrame: epoch (1-based), loss, accuracy, val_loss,
    val_accuracy, and any other columns.

    Accepts a Keras `History`, a mapping of metric name to per-epoch values, a list
    of per-epoch mappings, a DataFrame, or the path of a CSV file (Keras's
    CSVLogger, models/<variant>/history.csv). Column names are mapped from Keras's
    and MLflow's (`acc`, `sparse_categorical_accuracy`, `curves/val_loss`, ...). A
    history numbered from epoch 0 (Keras's CSVLogger, MLflow autolog's steps) is
    renumbered from 1.

    Raises:
        ValueError: a missing curve, values that are not numbers, accuracies outside
            0-1, lists of different lengths or an empty history; the message says what
            to pass to `fit`.
    """
    frame = _as_frame(getattr(history, "history", history))
    frame = frame.rename(columns=_column_names(frame.columns))
    _require_curves(frame.columns)
    if frame.empty:
        raise ValueError("the history is empty: train at least one epoch")
    for column in (c for c in (*METRIC_COLUMNS, "epoch", "learning_rate") if c in frame):
        frame[column] = _numbers(frame[column], column)
    for column in ("accuracy", "val_accuracy"):
        outside = frame.index[(frame[column] < 0) | (frame[column] > 1)]
        if len(outside):
            raise ValueError(
                f"{column} must be a fraction between 0 and 1, got {frame[column][outside[0]]:g} "
                f"at row {outside[0] + 1} (percent?)"
            )
    if "epoch" not in frame.columns:
        frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    if (frame["epoch"] % 1 != 0).any():
        raise ValueError("epoch must hold whole numbers")
    frame["epoch"] = frame["epoch"].astype(int)
    if int(frame["epoch"].min()) == 0:
        frame["epoch"] += 1
    return frame


def _as_frame(raw: Any) -> pd.DataFrame:
    if isinstance(raw, str | Path):
        return _read_csv(Path(raw))
    if isinstance(raw, pd.DataFrame):
        return raw.copy()
    if isinstance(raw, Mapping):
        lengths = {str(k): len(v) for k, v in raw.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                "the history's lists differ in length ("
                + ", ".join(f"{k} {n}" for k, n in lengths.items())
                + "): validation_freq > 1 validates only some epochs, and a diagnosis "
                "needs validation every epoch"
            )
        return pd.DataFrame({k: list(v) for k, v in raw.items()})
    if isinstance(raw, list) and all(isinstance(row, Mapping) for row in raw):
        return pd.DataFrame(raw)
    raise TypeError(
        "history must be a Keras History, a dict of per-epoch lists, a list of per-epoch "
        f"dicts, a DataFrame or a CSV file's path, not {type(raw).__name__}"
    )


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot read it as a CSV history: {exc}") from None


def _numbers(values: pd.Series, column: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{column} at row {row + 1} is {values.iloc[row]!r}, not a number")
    return numbers.astype(float)


def _column_names(columns: Sequence[Any]) -> dict[Any, str]:
    present = {str(c).removeprefix(CURVES_PREFIX) for c in columns}
    names: dict[Any, str] = {}
    for column in columns:
        name = str(column).removeprefix(CURVES_PREFIX)
        alias = COLUMN_ALIASES.get(name)
        names[column] = alias if alias and alias not in present else name
    return names


def _require_curves(columns: Sequence[str]) -> None:
    missing = [c for c in METRIC_COLUMNS if c not in set(columns)]
    if not missing:
        return
    found = ", ".join(sorted(map(str, columns))) or "none"
    if "val_loss" in missing:
        raise ValueError(
            f"the history has no val_loss (columns found: {found}): a diagnosis compares "
            "training with validation, so pass validation_data= (or validation_split=) to "
            "model.fit"
        )
    raise ValueError(
        f"the history has no {' or '.join(missing)} (columns found: {found}): compile the "
        "model with metrics=['accuracy']"
    )


def split_scores(scores: Any, which: str, n: int) -> diagnosis.SplitScores:
    """`model.evaluate`'s result for one split: [loss, accuracy] or a dict with both."""
    if isinstance(scores, Mapping):
        named = {COLUMN_ALIASES.get(str(k), str(k)): v for k, v in scores.items()}
        loss, accuracy = named.get("loss"), named.get("accuracy")
    elif isinstance(scores, Sequence) and len(scores) == 2:
        loss, accuracy = scores
    else:
        loss = accuracy = None
    if loss is None or accuracy is None:
        raise ValueError(
            f"{which}_scores must be model.evaluate's [loss, accuracy] or a dict with "
            f"'loss' and 'accuracy', got {scores!r}"
        )
    try:
        accuracy, loss = float(accuracy), float(loss)
    except (TypeError, ValueError):
        raise ValueError(f"{which}_scores must hold numbers, got {scores!r}") from None
    if not (0.0 <= accuracy <= 1.0 and np.isfinite(loss) and loss >= 0):
        raise ValueError(
            f"{which}_scores: accuracy must be a fraction between 0 and 1 and loss a finite "
            f"number >= 0, got accuracy {accuracy:g}, loss {loss:g}"
        )
    return diagnosis.SplitScores(accuracy=accuracy, loss=loss, n=n)


def _count(value: Any, name: str, least: int = 1, what: str = "images in that split") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be the number of {what} (>= {least}), got {value!r}")
    return int(value)


def kept_epoch(frame: pd.DataFrame, best_epoch: int | None, restore_best_weights: bool) -> int:
    """The epoch whose weights the kept model holds."""
    if best_epoch is not None:
        if best_epoch not in set(frame["epoch"].astype(int)):
            raise ValueError(
                f"best_epoch {best_epoch!r} is not in the history (epochs "
                f"{int(frame['epoch'].min())}-{int(frame['epoch'].max())})"
            )
        return int(best_epoch)
    return best_epoch_of(frame) if restore_best_weights else int(frame["epoch"].max())


def thresholds_source(params: Path | str | None) -> str:
    """Which params file's `evaluate` section judged, in words."""
    return f"the evaluate section of {params}" if params else "the shipped defaults"


def keras_facts(history: Any) -> dict[str, Any]:
    """What a Keras `History` knows beyond its curves: the class count (the model's
    output width) and whether fit stopped before its epoch limit."""
    facts: dict[str, Any] = {}
    model = getattr(history, "model", None)
    shape = getattr(model, "output_shape", None)
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        facts["n_classes"] = max(2, shape[-1])  # one sigmoid unit: two classes
    planned = (getattr(history, "params", None) or {}).get("epochs")
    ran = getattr(history, "epoch", None)
    if isinstance(planned, int) and isinstance(ran, list) and ran:
        facts["stopped_early"] = len(ran) < planned
    return facts


def diagnose(
    history: Any,
    *,
    n_train: int,
    n_val: int,
    n_classes: int | None = None,
    train_scores: Any = None,
    val_scores: Any = None,
    restore_best_weights: bool = False,
    best_epoch: int | None = None,
    stopped_early: bool | None = None,
    name: str = "model",
    params: Path | str | None = None,
) -> diagnosis.Diagnosis:
    """Is this run overfitting? The pipeline's verdict for a history you trained yourself.

    Args:
        history: a Keras `History`, its `.history` dict, or a DataFrame (one row per epoch).
        n_train, n_val: images in the train and validation splits.
        n_classes: number of classes (read from a Keras History's model when omitted).
        train_scores, val_scores: the kept model's `model.evaluate` on each split,
            [loss, accuracy] or a dict; default: the history's row of the kept epoch.
        restore_best_weights: the kept model holds the lowest-val-loss epoch's weights
            (as Keras's EarlyStopping(restore_best_weights=True) leaves it); default:
            the last epoch's.
        best_epoch: the epoch whose weights the kept model holds, when known exactly
            (overrides restore_best_weights).
        stopped_early: early stopping ended the run (a Keras History tells; None: unknown).
        name: what the sentences call the model.
        params: a params.yaml whose `evaluate` section overrides the shipped thresholds.

    Raises:
        ValueError: a missing curve, a missing class count, or a bad split size,
            saying what to pass.
    """
    n_train, n_val = _count(n_train, "n_train"), _count(n_val, "n_val")
    frame = check_history(history_frame(history))
    known = keras_facts(history)
    n_classes = n_classes if n_classes is not None else known.get("n_classes")
    if n_classes is None:
        raise ValueError(
            "n_classes is needed (chance level is 1 / n_classes): pass n_classes=, or the "
            "History that model.fit returned"
        )
    n_classes = _count(n_classes, "n_classes", 2, "classes")
    kept = kept_epoch(frame, best_epoch, restore_best_weights)
    row = frame.loc[frame["epoch"] == kept].iloc[0]
    train = (
        split_scores(train_scores, "train", n_train)
        if train_scores is not None
        else diagnosis.SplitScores(float(row["accuracy"]), float(row["loss"]), n_train)
    )
    val = (
        split_scores(val_scores, "val", n_val)
        if val_scores is not None
        else diagnosis.SplitScores(float(row["val_accuracy"]), float(row["val_loss"]), n_val)
    )
    stopped = stopped_early if stopped_early is not None else known.get("stopped_early")
    run = diagnosis.RunFacts(best_epoch=kept, stopped_early=stopped, n_train=n_train)
    result = diagnosis.diagnose(
        name, frame, train, val, n_classes, evaluate_config(params), run=run
    )
    notes = []
    if stopped and best_epoch is None and not restore_best_weights:
        notes.append(
            f"judged at the last epoch ({kept}); if early stopping restored the best weights "
            "(restore_best_weights=True), say so and the restored epoch is judged instead"
        )
    if train_scores is None:
        notes.append(
            f"train scores are the history's at epoch {kept}, averaged over the epoch while "
            "the weights changed and with any dropout or augmentation active; the kept "
            "model's own give the truer gap (train_scores=model.evaluate(x_train, y_train); "
            "overfit diagnose --train-scores LOSS ACCURACY)"
        )
    return kept_model_words(result, notes)


def kept_model_words(result: diagnosis.Diagnosis, notes: Sequence[str]) -> diagnosis.Diagnosis:
    """The pipeline's sentences for a run outside it: the model judged is the one the
    user kept (the pipeline's is the saved model.keras), and the API's own notes."""

    def kept(text: str) -> str:
        return text.replace("saved model", "kept model")

    result.summary = kept(result.summary)
    result.evidence = [kept(line) for line in result.evidence] + list(notes)
    result.training = {**result.training, "summary": kept(result.training["summary"])}
    return result
