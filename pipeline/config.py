"""params.yaml -> frozen, typed configuration.

This module is the only reader of params.yaml. Every key is declared here with
its type and allowed range (pydantic does the checking), and without a default:
params.yaml holds each value once, so there is no second copy to drift (a test
walks these models to keep it so). An unknown key, a missing key, a key given
twice (DVC rejects that file), a wrong type or an out-of-range value raises
`ConfigError` naming the key, the value (or line) and what is allowed, before
any stage does work.

Inputs: params.yaml. Outputs: `Config` objects; nothing is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.cli import UserError

# A variant may not be called this: models/<it>/ holds the learning curve's outputs.
LEARNING_CURVE_DIR = "learning_curve"
Fraction01 = Annotated[float, Field(ge=0.0, lt=1.0)]
Severity = Literal["error", "warning"]
MAX_SEEDS = 20
# The largest train.seed / data.seed: NumPy and TensorFlow take seeds below 2**32,
# and train.seed + train.seeds - 1 must be one too.
MAX_SEED = 2**32 - 1 - MAX_SEEDS


class ConfigError(UserError, ValueError):
    """A params.yaml problem, phrased for the user."""


class _Frozen(BaseModel):
    # strict: `epochs: "10"` or `enabled: "yes"` is a mistake to report, not to
    # coerce; NaN and infinity are never sensible knob values.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _list_to_tuple(value: Any) -> Any:
    """YAML has lists, the config keeps tuples (frozen); strict mode wants the exact type."""
    return tuple(value) if isinstance(value, list) else value


class DataConfig(_Frozen):
    source: str = Field(min_length=1)
    format: Literal["auto", "folder", "idx"]
    image_size: tuple[Annotated[int, Field(ge=4, le=1024)], Annotated[int, Field(ge=4, le=1024)]]
    # auto: rgb when any image of the source has colour, else grayscale (prepare decides)
    color_mode: Literal["auto", "grayscale", "rgb"]
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    workers: Annotated[int, Field(ge=0, le=256)]

    _image_size_tuple = field_validator("image_size", mode="before")(_list_to_tuple)

    @model_validator(mode="after")
    def _split_fits(self) -> DataConfig:
        total = self.val_fraction + self.test_fraction
        if total >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {total:g}; "
                "they must sum to less than 1 so that training data remains"
            )
        return self

    @property
    def channels(self) -> int:
        """Channels of prepared images; `auto` must be resolved first (prepare does)."""
        if self.color_mode == "auto":
            raise ValueError("data.color_mode auto is resolved by prepare from the images")
        return 1 if self.color_mode == "grayscale" else 3


class SeverityConfig(_Frozen):
    label_set: Severity
    class_balance: Severity
    min_images_per_class: Severity
    corrupt_images: Severity
    image_properties: Severity
    duplicates: Severity
    split_leakage: Severity


class ValidateConfig(_Frozen):
    max_examples: Annotated[int, Field(ge=1, le=10_000)]
    min_images_per_class: Annotated[int, Field(ge=1)]
    max_imbalance_ratio: Annotated[float, Field(ge=1.0)]
    min_class_share: Fraction01
    max_label_divergence: Annotated[float, Field(ge=0.0, le=1.0)]
    max_corrupt_fraction: Fraction01
    blank_std_threshold: Annotated[float, Field(ge=0.0)]
    max_blank_fraction: Fraction01
    max_duplicate_fraction: Fraction01
    near_duplicate_distance: Annotated[int, Field(ge=0, le=32)]
    near_duplicate_max_pixel_diff: Annotated[float, Field(ge=0.0, le=255.0)]
    severity: SeverityConfig


class AugmentationConfig(_Frozen):
    enabled: bool
    rotation: Annotated[float, Field(ge=0.0, le=0.5)]
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)]
    translation: Annotated[float, Field(ge=0.0, lt=1.0)]
    flip: bool


BUILTIN_BUILDER = "builtin"
KERAS_APPLICATIONS = "keras_applications"
# The Keras Applications backbones model.builder may name (pipeline.own_models).
BACKBONES = ("MobileNetV3Small", "ResNet50", "EfficientNetB0", "ConvNeXtTiny")
# builtin | keras_applications:<backbone> | path/to/file.py:function | module.name:function
_BUILDER_PATTERN = r"^(builtin|[A-Za-z0-9_./\-]+\.py:[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$"


class ModelConfig(_Frozen):
    # Whose network: the built-in Conv-MaxPool one the keys below describe, a Keras
    # Applications backbone, or the user's own function (pipeline.builders).
    builder: str = Field(min_length=1)
    weights: str = Field(min_length=1)  # none, or a local weights file (backbones only)
    freeze_backbone: bool
    conv_filters: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        min_length=1, max_length=8
    )
    kernel_size: Annotated[int, Field(ge=1, le=15)]
    dense_units: Annotated[int, Field(ge=1, le=65_536)]
    dropout: Fraction01
    conv_dropout: Fraction01
    l2: Annotated[float, Field(ge=0.0, le=1.0)]
    batch_norm: bool  # BatchNormalization between each conv and its ReLU
    head: Literal["flatten", "global_average"]  # what feeds the dense layer
    augmentation: AugmentationConfig

    _filters_tuple = field_validator("conv_filters", mode="before")(_list_to_tuple)

    @field_validator("builder")
    @classmethod
    def _known_builder(cls, value: str) -> str:
        if not re.fullmatch(_BUILDER_PATTERN, value):
            raise ValueError(
                "must be builtin, keras_applications:<backbone>, path/to/file.py:function "
                "or module.name:function"
            )
        kind, _, name = value.partition(":")
        if kind == KERAS_APPLICATIONS and name not in BACKBONES:
            raise ValueError(f"the Keras Applications backbones here are {', '.join(BACKBONES)}")
        return value

    @model_validator(mode="after")
    def _weights_need_a_backbone(self) -> ModelConfig:
        backbone = self.builder.startswith(f"{KERAS_APPLICATIONS}:")
        if not backbone and (self.weights != "none" or self.freeze_backbone):
            raise ValueError(
                "model.weights and model.freeze_backbone apply to a keras_applications:<name> "
                f"builder only, not {self.builder!r}; set weights: none, freeze_backbone: false"
            )
        return self


class EarlyStoppingConfig(_Frozen):
    enabled: bool
    patience: Annotated[int, Field(ge=1)]
    min_delta: Annotated[float, Field(ge=0.0)]
    # Also stop once the run's overfitting is clear as evaluate reads it (pipeline.stopping).
    stop_on_clear_overfit: bool


class ReduceLRConfig(_Frozen):
    enabled: bool
    factor: Annotated[float, Field(gt=0.0, lt=1.0)]
    patience: Annotated[int, Field(ge=1)]


class ThreadsConfig(_Frozen):
    intra_op: Annotated[int, Field(ge=0, le=1024)]  # 0 = TensorFlow's default (all cores)
    inter_op: Annotated[int, Field(ge=0, le=1024)]


class TrainConfig(_Frozen):
    epochs: Annotated[int, Field(ge=1, le=10_000)]
    batch_size: Annotated[int, Field(ge=1, le=65_536)]
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)]
    early_stopping: EarlyStoppingConfig
    reduce_lr: ReduceLRConfig
    class_weight: Literal["off", "on", "auto"]
    # `dvc exp run -S train.class_weight=on` writes a bare on, which YAML 1.1 reads
    # as true: read true/false as on/off.
    _class_weight_words = field_validator("class_weight", mode="before")(
        lambda value: (
            {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
        )
    )
    # seed + seeds - 1 must stay a valid NumPy/TensorFlow seed (below 2**32)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    # How many seeds each variant trains (seed, seed + 1, ...). The bound keeps
    # a typo (100 for 10) from silently multiplying the training time.
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)]
    # tf.distribute strategy of the fit (pipeline.distribute).
    strategy: Literal["none", "mirrored", "multi_worker_mirrored"]
    # Floating-point policy of the fit (pipeline.precision).
    precision: Literal["float32", "mixed_bfloat16", "auto"]
    # TensorFlow's thread pools for the stage's process (pipeline.distribute.set_threads).
    threads: ThreadsConfig


class VariantOverrides(_Frozen):
    """What a variant may change: parts of `model` and `train`, nothing else.

    The empty defaults are structure, not knobs: `baseline: {}` overrides nothing.
    """

    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class EvaluateConfig(_Frozen):
    """Verdict thresholds (documented in params.yaml, which holds their values)."""

    noise_z: Annotated[float, Field(gt=0.0, le=10.0)]
    # Effect sizes (Cohen's h) of a train - val gap: overfitting from mild_overfit_effect,
    # clear from clear_overfit_effect; a val-loss rise is clear from clear_loss_rise (nats).
    mild_overfit_effect: Annotated[float, Field(gt=0.0, le=2.0)]
    clear_overfit_effect: Annotated[float, Field(gt=0.0, le=2.0)]
    clear_overfit_gap: Annotated[float, Field(gt=0.0, le=1.0)]  # ...and in accuracy points
    clear_loss_rise: Annotated[float, Field(gt=0.0, le=10.0)]
    onset_tolerance: Annotated[float, Field(ge=0.0)]
    smoothing_window: Annotated[int, Field(ge=1, le=50)]
    min_noise_z: Annotated[float, Field(ge=0.0)]
    memorization_min_rise: Annotated[float, Field(gt=0.0, le=1.0)]
    underfit_chance_margin: Annotated[float, Field(ge=0.0, le=1.0)]
    underfit_gap_to_best: Annotated[float, Field(gt=0.0, le=1.0)]
    min_effect: Annotated[float, Field(ge=0.0, le=1.0)]
    feature_map_images: Annotated[int, Field(ge=1, le=16)]
    feature_map_layers: Annotated[int, Field(ge=1, le=8)]

    @model_validator(mode="after")
    def _mild_below_clear(self) -> EvaluateConfig:
        if self.mild_overfit_effect >= self.clear_overfit_effect:
            raise ValueError(
                f"mild_overfit_effect ({self.mild_overfit_effect}) must be below "
                f"clear_overfit_effect ({self.clear_overfit_effect}): a mild overfit is the "
                "smaller one"
            )
        return self

    @property
    def mild_score(self) -> float:
        """Where mild overfitting starts on the overfitting score (1 = clear)."""
        return self.mild_overfit_effect / self.clear_overfit_effect


class RegistryConfig(_Frozen):
    model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    # Register the best model of a `dvc exp run` too (DVC sets DVC_EXP_NAME); off:
    # experiments try settings, and only `dvc repro` / retrain feed the registry.
    register_experiments: bool


class RetrainConfig(_Frozen):
    require_validation_success: bool
    reject_overfitting: bool
    accuracy_tolerance: Annotated[float, Field(ge=0.0, le=1.0)]
    max_gap: Annotated[float, Field(gt=0.0, le=1.0)]
    # Champion and challenger are compared only on test images neither trained or
    # validated on; fewer than this many such images and the gate refuses.
    min_clean_test_images: Annotated[int, Field(ge=1)]
    lock_stale_seconds: Annotated[int, Field(ge=1)]


class LearningCurveConfig(_Frozen):
    """Train `variant` on nested subsets of the train split ("would more data help?")."""

    variant: str = Field(min_length=1)
    # The full-data point (1.0) is the variant's own train stage, never trained twice.
    fractions: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = Field(min_length=1)

    _fractions_tuple = field_validator("fractions", mode="before")(_list_to_tuple)

    @field_validator("fractions")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(
                "must be unique and strictly increasing, e.g. [0.25, 0.5] "
                "(the full data, 1.0, is the train stage itself and is not listed)"
            )
        return value


class MlflowConfig(_Frozen):
    experiment: str = Field(min_length=1)
    system_metrics: bool


class Config(_Frozen):
    data: DataConfig
    validate_: ValidateConfig = Field(alias="validate")
    model: ModelConfig
    train: TrainConfig
    variants: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")], VariantOverrides] = Field(
        min_length=1
    )
    evaluate: EvaluateConfig
    registry: RegistryConfig
    retrain: RetrainConfig
    learning_curve: LearningCurveConfig
    mlflow: MlflowConfig

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _variants_resolve(self) -> Config:
        for name in self.variants:
            self.variant(name)  # raises with the variant's key path on a bad override
        curve_variant = self.learning_curve.variant
        if curve_variant not in self.variants:
            raise ConfigError(
                f"invalid params.yaml:\n  learning_curve.variant = {curve_variant!r}: "
                "must be a key of `variants` (" + ", ".join(sorted(self.variants)) + ")"
            )
        if LEARNING_CURVE_DIR in self.variants:
            # models/learning_curve/ holds the learning curve's outputs.
            raise ConfigError(
                f"invalid params.yaml:\n  variants.{LEARNING_CURVE_DIR}: the name is reserved "
                "for the learning curve's outputs (models/learning_curve/); rename the variant"
            )
        return self

    def learning_curve_fraction(self, fraction: float) -> float:
        """`fraction` if params.yaml `learning_curve.fractions` lists it; else ConfigError."""
        if fraction not in self.learning_curve.fractions:
            allowed = ", ".join(str(f) for f in self.learning_curve.fractions)
            raise ConfigError(
                f"fraction {fraction!r} is not in params.yaml learning_curve.fractions "
                f"(allowed: {allowed}); add it there to train it"
            )
        return fraction

    def variant(self, name: str) -> VariantConfig:
        """The effective model and train settings of one variant."""
        if name not in self.variants:
            raise ConfigError(
                f"unknown variant {name!r}; params.yaml `variants` defines: "
                + ", ".join(sorted(self.variants))
            )
        overrides = self.variants[name]
        model = merge(self.model.model_dump(), overrides.model)
        train = merge(self.train.model_dump(), overrides.train)
        sections = {}
        for section, cls, values in (("model", ModelConfig, model), ("train", TrainConfig, train)):
            try:
                sections[section] = cls(**values)
            except ValidationError as exc:
                # The prefix names the override's own key, e.g. variants.x.model.dropout.
                raise ConfigError(_describe(exc, prefix=f"variants.{name}.{section}.")) from None
        return VariantConfig(name=name, **sections)

    def params_hash(self) -> str:
        """A short stable hash of the whole effective configuration."""
        return hash_dict(self.model_dump(mode="json", by_alias=True))


class VariantConfig(_Frozen):
    name: str
    model: ModelConfig
    train: TrainConfig

    def flat(self) -> dict[str, Any]:
        """`model.*` and `train.*` flattened to dotted keys, for MLflow params."""
        return flatten({"model": self.model.model_dump(), "train": self.train.model_dump()})

    def params_hash(self) -> str:
        return hash_dict(self.model_dump(mode="json"))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, recursively for mappings (neither is changed)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and tuples become strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


def hash_dict(tree: dict[str, Any]) -> str:
    payload = json.dumps(tree, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


# Keys an older params.yaml may still hold, and what replaced them.
_EFFECT = (
    "a gap is graded as an effect size and in points: set evaluate.mild_overfit_effect, "
    "clear_overfit_effect and clear_overfit_gap (params.yaml documents them)"
)
RENAMED = {
    "evaluate.overfit_gap": _EFFECT,
    "evaluate.good_fit_max_gap": _EFFECT,
    "evaluate.divergence_share": "a val-loss rise is judged in nats above its minimum: set "
    "evaluate.clear_loss_rise",
    "evaluate.divergence_gap_widening": _EFFECT,
}


def _describe(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else prefix.rstrip(".")
        key = key.replace("validate_", "validate")
        value = err.get("input")
        if err["type"] == "extra_forbidden" and key in RENAMED:
            lines.append(f"{key}: no longer a key; {RENAMED[key]}")
        elif err["type"] == "extra_forbidden":
            lines.append(
                f"{key}: unknown key (value {value!r}); "
                "check the spelling against params.yaml's documented keys"
            )
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif isinstance(err.get("ctx", {}).get("error"), ConfigError):
            # Already phrased for the user (a bad variant override): don't wrap it twice.
            lines.append(str(err["ctx"]["error"]).removeprefix("invalid params.yaml:\n  "))
        elif isinstance(value, dict):
            # A cross-field rule of a whole section: its message names the keys.
            lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key} = {value!r}: {msg}")
    return "invalid params.yaml:\n  " + "\n  ".join(lines)


def parse_config(raw: Any) -> Config:
    """Validate an already-parsed params mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("invalid params.yaml: the top level must be a mapping of sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in the YAML gives one key twice."""


class AliasError(yaml.YAMLError):
    """The YAML uses an alias (``*name``): refused, see _UniqueKeyLoader."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, and aliases.

    PyYAML keeps the last value silently; DVC, which reads params.yaml too,
    rejects the file. Merge keys (``<<``) may still be overridden.

    An alias (``*name``, with its ``&name`` anchor) is refused outright: nested
    aliases expand exponentially (the "billion laughs"), and a settings file
    needs none. Refusing them is simpler and safer than capping the expansion.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise AliasError(
                f"line {event.start_mark.line + 1}: the alias *{event.anchor} is not allowed; "
                "write the value out (YAML anchors and aliases can expand without bound)"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                earlier = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader explains it below
                continue
            if earlier is not None:
                raise DuplicateKeyError(
                    f"duplicate key {key!r} on line {line} (first on line {earlier}); "
                    "DVC rejects a key given twice"
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def read_params(path: Path) -> Any:
    """params.yaml parsed (safe, no aliases, no repeated keys); ConfigError otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except (DuplicateKeyError, AliasError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: Path | str = "params.yaml") -> Config:
    """Read and validate params.yaml; raises ConfigError on any problem."""
    path = Path(path)
    raw = read_params(path)
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("params.yaml", str(path), 1)) from None


def load_evaluate_config(path: Path | str) -> EvaluateConfig:
    """Only the `evaluate` section of a params file (the verdict thresholds), for the
    public API, which diagnoses runs outside a project."""
    path = Path(path)
    raw = read_params(path)
    section = raw.get("evaluate") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: no `evaluate` section (the verdict thresholds)")
    try:
        return EvaluateConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(
            _describe(exc, "evaluate.").replace("params.yaml", str(path), 1)
        ) from None
