"""Every file the pipeline reads or writes, defined once.

Paths are relative to the project root, which is the working directory that
`dvc repro` (and `mlflow run`) gives each stage. dvc.yaml repeats them because
DVC needs them as literals; tests/test_layout.py keeps the two in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import LEARNING_CURVE_DIR


def fraction_key(fraction: float | str) -> str:
    """A learning-curve fraction as DVC writes it in a stage name: 0.25 -> "0.25".

    Strings pass through, so "${item}" gives dvc.yaml's own template (tests/test_layout.py).
    """
    return fraction if isinstance(fraction, str) else str(float(fraction))


@dataclass(frozen=True)
class Paths:
    """The project's file layout below `root`."""

    root: Path

    @classmethod
    def here(cls) -> Paths:
        return cls(Path.cwd())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def digits_dir(self) -> Path:
        return self.root / "data" / "digits"

    def source_dir(self, source: str) -> Path:
        """params data.source as the stages read it: `~` expanded, relative to the root."""
        path = Path(source).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def model_source_json(self) -> Path:
        """The `model_source` stage's fingerprint of model.builder's file (train's dep)."""
        return self.root / "data" / "model_source.json"

    @property
    def source_json(self) -> Path:
        """The `source` stage's fingerprint of data.source: what prepare depends on."""
        return self.root / "data" / "source.json"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def manifest(self) -> Path:
        return self.prepared_dir / "manifest.parquet"

    @property
    def prepared_meta(self) -> Path:
        return self.prepared_dir / "meta.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def validation_json(self) -> Path:
        return self.reports_dir / "validation.json"

    @property
    def validation_flags_json(self) -> Path:
        """The one fact train needs from validate (did class_balance fail?), kept apart
        so that a validate knob that only moves a number does not retrain every variant."""
        return self.reports_dir / "validation_flags.json"

    @property
    def data_docs_dir(self) -> Path:
        return self.reports_dir / "data_docs"

    @property
    def evaluation_json(self) -> Path:
        return self.reports_dir / "evaluation.json"

    @property
    def figures_dir(self) -> Path:
        return self.reports_dir / "figures"

    @property
    def comparison_csv(self) -> Path:
        return self.reports_dir / "comparison.csv"

    @property
    def comparison_md(self) -> Path:
        return self.reports_dir / "comparison.md"

    @property
    def curves_csv(self) -> Path:
        """Long-format learning curves of all variants, for dvc plots."""
        return self.reports_dir / "curves.csv"

    @property
    def evaluation_metrics(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def report_html(self) -> Path:
        return self.reports_dir / "report.html"

    @property
    def retrain_json(self) -> Path:
        return self.reports_dir / "retrain.json"

    @property
    def retrain_lock(self) -> Path:
        """Held by a running `pipeline.retrain`; records its pid and start time."""
        return self.root / "retrain.lock"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def state_dir(self) -> Path:
        """Scratch state that must survive a killed stage (not a DVC output)."""
        return self.root / ".pipeline_state"

    def train_lock(self, stage: str) -> Path:
        """Held by the process training `stage` ("baseline", "learning_curve@0.25"):
        one writer per variant, so a second trainer cannot resume a live checkpoint."""
        return self.state_dir / "locks" / f"{stage}.lock"

    def variant_dir(self, variant: str) -> Path:
        return self.models_dir / variant

    def model_file(self, variant: str) -> Path:
        return self.variant_dir(variant) / "model.keras"

    def history_csv(self, variant: str) -> Path:
        return self.variant_dir(variant) / "history.csv"

    def train_metrics(self, variant: str) -> Path:
        return self.variant_dir(variant) / "metrics.json"

    def run_info(self, variant: str) -> Path:
        """Small JSON with the variant's MLflow run id, read by evaluate."""
        return self.variant_dir(variant) / "run.json"

    def seeds_json(self, variant: str) -> Path:
        """Per-seed histories and scores of the variant (train.seeds), read by evaluate."""
        return self.variant_dir(variant) / "seeds.json"

    def backup_dir(self, variant: str, seed_index: int = 0) -> Path:
        """Resume state of one seed; seed 0's is the variant's own directory.

        The extra seeds' directories sit beside it (`<variant>.seed-<i>`; a variant
        name cannot hold a dot), so discarding one seed's state never touches another's.
        """
        name = variant if seed_index == 0 else f"{variant}.seed-{seed_index}"
        return self.state_dir / "train" / name

    @property
    def learning_curve_dir(self) -> Path:
        """One subdirectory per learning-curve fraction (config forbids it as a variant name)."""
        return self.models_dir / LEARNING_CURVE_DIR

    def fraction_dir(self, fraction: float | str) -> Path:
        return self.learning_curve_dir / fraction_key(fraction)

    def fraction_history(self, fraction: float | str) -> Path:
        return self.fraction_dir(fraction) / "history.csv"

    def fraction_result(self, fraction: float | str) -> Path:
        """Scores on the subset and on val, n, MLflow run id: what evaluate reads."""
        return self.fraction_dir(fraction) / "result.json"

    def fraction_backup_dir(self, fraction: float | str) -> Path:
        return self.state_dir / LEARNING_CURVE_DIR / fraction_key(fraction)
