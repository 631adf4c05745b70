"""pipeline.config: the real params.yaml loads; every kind of bad value is named."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import Config, ConfigError, load_config, parse_config

from .conftest import REPO, real_params


def test_real_params_yaml_loads_and_every_variant_resolves() -> None:
    config = load_config(REPO / "params.yaml")
    assert isinstance(config, Config)
    assert config.data.source == "data/digits"
    assert "baseline" in config.variants
    for name in config.variants:
        variant = config.variant(name)
        assert variant.name == name
    assert config.variant("dropout").model.dropout == 0.5
    assert config.variant("dropout").model.conv_filters == config.model.conv_filters


def test_params_hash_is_stable_and_sensitive() -> None:
    raw = real_params()
    assert parse_config(raw).params_hash() == parse_config(copy.deepcopy(raw)).params_hash()
    raw["train"]["epochs"] += 1
    assert parse_config(raw).params_hash() != parse_config(real_params()).params_hash()


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


BAD = [
    # (id, edit, fragments the message must contain: the key and the value)
    ("unknown_top_key", _set("bogus", 1), ["bogus", "unknown key", "1"]),
    ("unknown_nested_key", _set("model.dropuot", 0.5), ["model.dropuot", "unknown key", "0.5"]),
    (
        "replaced_key",  # an older params.yaml: the key that replaced it is named
        _set("evaluate.overfit_gap", 0.08),
        ["evaluate.overfit_gap", "no longer a key", "clear_overfit_gap"],
    ),
    (
        "mild_not_below_clear",
        _set("evaluate.mild_overfit_effect", 0.3),
        ["mild_overfit_effect", "must be below", "clear_overfit_effect"],
    ),
    ("unknown_deep_key", _set("validate.severity.speling", "error"), ["validate.severity.speling"]),
    ("wrong_type", _set("train.epochs", "many"), ["train.epochs", "'many'", "integer"]),
    (
        "wrong_type_bool",
        _set("model.augmentation.flip", "maybe"),
        ["model.augmentation.flip", "'maybe'"],
    ),
    ("dropout_too_big", _set("model.dropout", 1.5), ["model.dropout", "1.5", "less than 1"]),
    ("negative_epochs", _set("train.epochs", -3), ["train.epochs", "-3"]),
    ("image_size_zero", _set("data.image_size", [0, 16]), ["data.image_size", "0"]),
    ("image_size_short", _set("data.image_size", [16]), ["data.image_size"]),
    ("bad_format", _set("data.format", "zip"), ["data.format", "'zip'", "'idx'"]),
    (
        "bad_severity",
        _set("validate.severity.label_set", "fatal"),
        ["validate.severity.label_set", "'fatal'"],
    ),
    ("bad_color_mode", _set("data.color_mode", "cmyk"), ["data.color_mode", "'cmyk'"]),
    ("train_fraction_zero", _set("data.train_fraction", 0), ["data.train_fraction", "0"]),
    (
        "bad_model_name",
        _set("registry.model_name", "has space"),
        ["registry.model_name", "'has space'"],
    ),
    (
        "fractions_sum_to_one",
        lambda raw: raw["data"].update(val_fraction=0.5, test_fraction=0.5),
        ["data.val_fraction + data.test_fraction = 1", "less than 1"],
    ),
    (
        "fractions_sum_above_one",
        lambda raw: raw["data"].update(val_fraction=0.6, test_fraction=0.5),
        ["= 1.1"],
    ),
    ("missing_section", lambda raw: raw.pop("data"), ["data", "missing"]),
    ("no_variants", _set("variants", {}), ["variants"]),
    (
        "variant_bad_value",
        _set("variants.x", {"model": {"dropout": 2}}),
        ["variants.x.model.dropout", "2", "less than 1"],
    ),
    (
        "variant_unknown_key",
        _set("variants.x", {"model": {"nope": 2}}),
        ["variants.x.model.nope", "unknown key"],
    ),
    (
        "variant_nested_bad_value",
        _set("variants.x", {"model": {"augmentation": {"zoom": 5}}}),
        ["variants.x.model.augmentation.zoom", "5"],
    ),
    (
        "variant_bad_train",
        _set("variants.x", {"train": {"epochs": 0}}),
        ["variants.x.train.epochs", "0"],
    ),
    (
        "variant_overrides_other_section",
        _set("variants.x", {"data": {"seed": 2}}),
        ["variants.x.data", "unknown key"],
    ),
    ("variant_bad_name", _set("variants", {"has space": {}}), ["variants.has space"]),
    (
        "learning_curve_unknown_variant",
        _set("learning_curve.variant", "nosuch"),
        ["learning_curve.variant", "'nosuch'", "key of `variants`", "baseline"],
    ),
    (
        "learning_curve_fraction_one",
        _set("learning_curve.fractions", [0.5, 1.0]),
        ["learning_curve.fractions.1", "1.0", "less than 1"],
    ),
    (
        "learning_curve_fraction_zero",
        _set("learning_curve.fractions", [0.0, 0.5]),
        ["learning_curve.fractions.0", "0.0", "greater than 0"],
    ),
    (
        "learning_curve_not_increasing",
        _set("learning_curve.fractions", [0.5, 0.25]),
        ["learning_curve.fractions", "strictly increasing"],
    ),
    (
        "learning_curve_duplicate",
        _set("learning_curve.fractions", [0.25, 0.25]),
        ["learning_curve.fractions", "unique"],
    ),
    (
        "learning_curve_missing",
        lambda raw: raw.pop("learning_curve"),
        ["learning_curve", "missing"],
    ),
    (
        "learning_curve_missing_fractions",
        lambda raw: raw["learning_curve"].pop("fractions"),
        ["learning_curve.fractions", "missing"],
    ),
    (
        "variant_named_like_the_curve_dir",
        _set("variants.learning_curve", {}),
        ["variants.learning_curve", "reserved"],
    ),
    # Strings that merely look like numbers or booleans are mistakes, not values.
    ("numeric_string", _set("train.epochs", "10"), ["train.epochs", "'10'", "integer"]),
    ("yes_string", _set("model.augmentation.enabled", "yes"), ["augmentation.enabled", "'yes'"]),
    ("zero_seeds", _set("train.seeds", 0), ["train.seeds", "0", "greater than or equal to 1"]),
    ("too_many_seeds", _set("train.seeds", 21), ["train.seeds", "21", "less than or equal to 20"]),
    ("float_seeds", _set("train.seeds", 2.0), ["train.seeds", "2.0", "integer"]),
    ("missing_seeds", lambda raw: raw["train"].pop("seeds"), ["train.seeds", "required"]),
    (
        "variant_bad_seeds",
        _set("variants.x", {"train": {"seeds": 0}}),
        ["variants.x.train.seeds", "0"],
    ),
    ("nan_rate", _set("train.learning_rate", float("nan")), ["train.learning_rate", "finite"]),
    ("inf_l2", _set("model.l2", float("inf")), ["model.l2", "finite"]),
]


@pytest.mark.parametrize("edit,fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_values_fail_naming_key_and_value(edit, fragments: list[str]) -> None:
    raw = real_params()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert message.startswith("invalid params.yaml:")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "invalid params.yaml" not in message[len("invalid params.yaml:") :], "nested twice"


def test_unknown_variant_lists_the_known_ones() -> None:
    config = parse_config(real_params())
    with pytest.raises(ConfigError, match=r"unknown variant 'nosuch'.*baseline"):
        config.variant("nosuch")


def test_learning_curve_fraction_must_be_listed() -> None:
    config = parse_config(real_params())
    assert config.learning_curve_fraction(0.25) == 0.25
    with pytest.raises(
        ConfigError, match=r"0\.3 is not in .*learning_curve\.fractions.*0\.25, 0\.5"
    ):
        config.learning_curve_fraction(0.3)


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["data"])


def test_config_is_frozen() -> None:
    config = parse_config(real_params())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is internal
        config.data.seed = 1  # type: ignore[misc]


def test_load_config_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
    bad_yaml = tmp_path / "params.yaml"
    bad_yaml.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad_yaml}: not valid YAML"):
        load_config(bad_yaml)
    raw = real_params()
    raw["model"]["dropout"] = 1.5

    bad_yaml.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"invalid {bad_yaml}:\n  model.dropout = 1.5"):
        load_config(bad_yaml)


def _line_of(prefix: str) -> int:
    """The 1-based number of the real params.yaml's first line starting with `prefix`."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.startswith(prefix))


def _with_duplicate(tmp_path: Path, after: str, duplicate: str) -> tuple[Path, int]:
    """The real params.yaml with line `duplicate` inserted after the first line starting
    with `after`; the inserted line's number."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    at = _line_of(after)
    lines.insert(at, duplicate)
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, at + 1


@pytest.mark.parametrize(
    ("after", "duplicate", "first"),
    [
        ("  batch_size:", "  batch_size: 32", "  batch_size:"),  # nested: train.batch_size
        ("  system_metrics:", "data: {}", "data:"),  # top level, at the end; DVC rejects both
    ],
)
def test_a_duplicate_key_is_rejected_naming_it_and_its_line(
    tmp_path: Path, after: str, duplicate: str, first: str
) -> None:
    path, line = _with_duplicate(tmp_path, after, duplicate)
    key = first.strip().rstrip(":")
    message = re.escape(f"{path}: duplicate key '{key}' on line {line} (first on line ")
    message += rf"{_line_of(first)}\)"
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_duplicate_key_is_one_line_and_exit_2_from_the_command_line(tmp_path: Path) -> None:
    path, line = _with_duplicate(tmp_path, "  epochs:", "  epochs: 3")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.retrain"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: duplicate key 'epochs' on line {line} "
        f"(first on line {_line_of('  epochs:')}); DVC rejects a key given twice"
    ]


def test_seeds_default_lives_in_params_yaml_and_a_variant_may_override_it() -> None:
    from pipeline.config import TrainConfig

    assert TrainConfig.model_fields["seeds"].is_required()  # no second default in code
    raw = real_params()
    assert raw["train"]["seeds"] == 1
    raw["variants"]["dropout"]["train"] = {"seeds": 3}
    config = parse_config(raw)
    assert config.variant("dropout").train.seeds == 3
    assert config.variant("baseline").train.seeds == 1


def _knob_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field of the config tree under `model`, with its dotted params.yaml key."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        yield key, field
        for arg in (field.annotation, *get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _knob_fields(arg, prefix=f"{key}.")


def test_no_knob_has_a_default_in_code_so_params_yaml_is_the_only_one() -> None:
    """A default written in config.py and in params.yaml drifts (epochs 40 vs 100 once)."""
    keys = dict(_knob_fields(Config))
    assert {"train.epochs", "train.early_stopping.patience", "evaluate.noise_z"} <= set(keys)
    # A variant's override sections default to "override nothing": structure, not a knob.
    structure = {"variants.model", "variants.train"}
    with_default = [k for k, f in keys.items() if not f.is_required() and k not in structure]
    assert with_default == [], f"defaults in code (move them to params.yaml): {with_default}"


@pytest.mark.parametrize("key", ["train.epochs", "validate.severity.split_leakage", "retrain"])
def test_a_missing_key_is_named(key: str) -> None:
    raw = real_params()
    *parents, leaf = key.split(".")
    section = raw
    for part in parents:
        section = section[part]
    del section[leaf]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: required key is missing"):
        parse_config(raw)
