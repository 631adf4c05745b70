"""`OverfittingMonitor`: the pipeline's diagnosis inside your own `model.fit`.

    from pipeline.keras import OverfittingMonitor

    monitor = OverfittingMonitor(n_train=len(x_train), n_val=len(x_val), mlflow=True)
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=30,
              callbacks=[monitor])
    monitor.diagnosis        # the verdict, evidence, onset (pipeline.api.diagnose)

The split sizes and the class count go to the run as parameters (`data.n_train`,
`data.n_val`, `data.n_classes`, as this project logs them); each epoch's loss,
accuracy, their validation twins, the learning rate and the two gaps as
`curves/...` (step = the 1-based epoch), the names this project's own runs use,
so the MLflow UI compares your runs with the pipeline's. With no active run the
monitor starts one and ends it. At the end of training it prints the verdict,
writes the one-page answer (overfit_reports/<name>-<time>.html unless `report`
names a file), and, with mlflow=True, writes the verdict back to the run (tags
`verdict*`, diagnosis.json, the page).

No params.yaml, no DVC: the thresholds are the ones shipped with the package.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import keras

from pipeline import api
from pipeline.history import METRIC_COLUMNS, epoch_metrics

log = logging.getLogger(__name__)


class OverfittingMonitor(keras.callbacks.Callback):
    """Log the curves per epoch and diagnose the run when `fit` ends.

    Args:
        n_train, n_val: images in the train and validation data (they set the noise
            every comparison is judged against).
        mlflow: log to MLflow (the active run, or one the monitor starts).
        report: where to write the HTML page; None: overfit_reports/<name>-<time>.html;
            False: no page.
        name: what the verdict calls the model (default: the model's name).
        restore_best_weights: the model keeps its lowest-val-loss epoch (set it as on
            your EarlyStopping).
        verbose: print the verdict at the end of training.
    """

    def __init__(
        self,
        n_train: int,
        n_val: int,
        *,
        mlflow: bool = False,
        report: str | Path | bool | None = None,
        name: str | None = None,
        restore_best_weights: bool = False,
        verbose: bool = True,
        params: str | Path | None = None,
    ) -> None:
        super().__init__()
        # Checked now, not after an hour of training.
        self.n_train, self.n_val = api._count(n_train, "n_train"), api._count(n_val, "n_val")
        self.use_mlflow = mlflow
        self.report = report
        self.name = name
        self.restore_best_weights = restore_best_weights
        self.verbose = verbose
        self.params_file = params
        self.rows: list[dict[str, float]] = []
        self.diagnosis: Any = None
        self.page: Path | None = None
        self.run_id: str | None = None
        self._started_run = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Rows are kept across fits: a second fit from initial_epoch=k (fine-tuning after
        # a frozen stage) continues the history; a fit from epoch 0 replaces it.
        steps = (self.params or {}).get("steps")
        if isinstance(steps, int) and self.n_train < steps:
            log.warning(
                "OverfittingMonitor: n_train=%d is below the %d steps per epoch: pass the "
                "number of images, not of batches",
                self.n_train,
                steps,
            )
        if self.use_mlflow:
            from pipeline import tracking

            resume = self.run_id if self._started_run else None
            self.run_id, self._started_run = tracking.active_or_new_run(self._name(), resume)
            # The names this project's runs use, so `overfit diagnose --mlflow-run` finds them.
            sizes = {"data.n_train": self.n_train, "data.n_val": self.n_val}
            n_classes = api.keras_facts(self).get("n_classes")
            if n_classes is not None:
                sizes["data.n_classes"] = n_classes
            tracking.log_missing_params(self.run_id, sizes)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        names = api._column_names(list(logs))
        row = {names[k]: float(v) for k, v in logs.items() if _is_number(v)}
        row["epoch"] = epoch + 1
        row.setdefault("learning_rate", self._learning_rate())
        self.rows = [r for r in self.rows if r["epoch"] < epoch + 1] + [row]
        if self.use_mlflow:
            from pipeline import tracking

            known = {k: row.get(k, math.nan) for k in (*METRIC_COLUMNS, "learning_rate")}
            finite = {k: v for k, v in epoch_metrics(known).items() if math.isfinite(v)}
            tracking.log_epoch(finite, epoch + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Training is done whatever happens here: a diagnosis that cannot be made (no
        # validation data, a NaN loss, an unwritable page) is one warning, never an
        # exception out of the user's fit.
        try:
            self._diagnose()
        except Exception as exc:  # noqa: BLE001 - reported, the user's script goes on
            self.diagnosis = None
            message = f"OverfittingMonitor could not diagnose this run: {exc}"
            log.warning(message)
            if self.verbose:
                print(message)
        finally:
            if self._started_run:
                from pipeline import tracking

                tracking.end_active_run()

    def _diagnose(self) -> None:
        validated = [r for r in self.rows if "val_loss" in r]  # validation_freq > 1
        if not validated:
            raise ValueError(
                "no epoch has val_loss: pass validation_data= (or validation_split=) to fit"
            )
        planned = (self.params or {}).get("epochs")
        self.diagnosis = api.diagnose(
            validated,
            n_train=self.n_train,
            n_val=self.n_val,
            n_classes=api.keras_facts(self).get("n_classes"),
            restore_best_weights=self.restore_best_weights,
            stopped_early=self.rows[-1]["epoch"] < planned if isinstance(planned, int) else None,
            name=self._name(),
            params=self.params_file,
        )
        if self.report is not False:
            self.page = self._write_page(validated)
        if self.use_mlflow and self.run_id:
            from pipeline import tracking

            tracking.write_diagnosis(self.run_id, self.diagnosis.to_dict(), self.page)
        if self.verbose:
            where = f" (page: {self.page})" if self.page else ""
            print(f"{self.diagnosis.answer}{where}")

    def _write_page(self, validated: list[dict[str, float]]) -> Path:
        from pipeline.diagnosis_page import default_page_path, render_page, run_facts, write_page

        n_classes = api.keras_facts(self).get("n_classes")
        html = render_page(
            self.diagnosis,
            api.history_frame(validated),
            run_facts(self.diagnosis, self.n_train, self.n_val, n_classes, scored=False),
            "OverfittingMonitor in model.fit",
            api.thresholds_source(self.params_file),
        )
        name = self._name()
        return write_page(html, Path(self.report) if self.report else default_page_path(name), name)

    def _name(self) -> str:
        return self.name or getattr(self.model, "name", None) or "model"

    def _learning_rate(self) -> float:  # Keras 3 leaves it out of the logs
        try:
            return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except (AttributeError, TypeError, ValueError):
            return float("nan")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
