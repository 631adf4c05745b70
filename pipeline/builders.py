"""Whose model a variant trains: the built-in Conv-MaxPool builder, a Keras Applications
backbone, or the user's own function (`model.builder` in params.yaml).

    model.builder: builtin                                # pipeline.models.build_model
    model.builder: keras_applications:MobileNetV3Small    # a backbone + a softmax head
    model.builder: examples/seed_model.py:build           # a file in the project
    model.builder: mypackage.models:build                 # a module importable from the root

A user's builder is called as `function(input_shape, n_classes, seed)` and
returns a `keras.Model` taking float32 pixels in 0-255 of `input_shape`
(height, width, channels) and giving `n_classes` softmax probabilities. The
variants' knobs still apply to it:

- `augmentation`: the random layers go in front of the model;
- `l2`: an L2 penalty on every Conv and Dense kernel;
- `dropout`: a Dropout layer before the classifier head (the last Dense layer);
- `conv_dropout`: a Dropout layer after each conv block (Sequential models).

A builder that takes a knob as a keyword parameter (say `dropout`) handles it
itself and receives its value; `conv_filters`, `kernel_size`, `dense_units`,
`batch_norm` and `head` describe the built-in network only, so
a variant that changes one of them applies to a user's model only when its
builder takes that keyword. A variant that cannot be applied fails before
training, naming the variant and the reason (`check_variant`).

No I/O besides importing the user's module (with its own folder on sys.path,
so helpers beside it import). pipeline.model_source fingerprints that one file
so that editing it retrains; a helper module it imports is not fingerprinted
(list it as a dep of the train stages in dvc.yaml if it changes).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cli import StageError
from pipeline.config import BUILTIN_BUILDER, KERAS_APPLICATIONS, ModelConfig

# Knobs the pipeline can put on any functional or Sequential model.
GENERIC_KNOBS = ("augmentation", "l2", "dropout", "conv_dropout")
# Knobs that only describe the built-in network (a user's builder must take them).
BUILTIN_ONLY_KNOBS = (
    "conv_filters",
    "kernel_size",
    "dense_units",
    "batch_norm",
    "head",
)
KNOBS = (*GENERIC_KNOBS, *BUILTIN_ONLY_KNOBS)
# The smallest input each backbone accepts (Keras checks 32x32 for all four).
BACKBONE_MIN_SIZE = 32


class BuilderError(StageError):
    """A model.builder that cannot be found, imported or applied."""


@dataclass(frozen=True)
class BuildContext:
    """What building a variant's network needs beyond the variant's own settings."""

    base: ModelConfig  # params.yaml's own `model` section (what a variant changed)
    root: Path  # the project root: a builder's file or module is found from it


def source_sha(spec: str, root: Path) -> str:
    """sha256 of a user's builder file ("" for the built-in builder and backbones):
    part of a training state's fingerprint, so editing the file starts afresh."""
    source = source_file(spec, root)
    return hashlib.sha256(source.read_bytes()).hexdigest() if source else ""


def builder_kind(spec: str) -> str:
    """builtin | keras_applications | user."""
    if spec == BUILTIN_BUILDER:
        return "builtin"
    if spec.startswith(f"{KERAS_APPLICATIONS}:"):
        return "keras_applications"
    return "user"


def split_spec(spec: str) -> tuple[str, str]:
    """'path/file.py:function' or 'module:function' -> (target, function)."""
    target, _, function = spec.rpartition(":")
    return target, function


def source_file(spec: str, root: Path) -> Path | None:
    """The file that defines a user's builder, found without running it (None for
    builtin and keras_applications builders).

    Raises:
        BuilderError: no such file or module.
    """
    if builder_kind(spec) != "user":
        return None
    target, _ = split_spec(spec)
    if target.endswith(".py"):
        path = (root / target).resolve()
        if not path.is_file():
            raise BuilderError(f"model.builder {spec!r}: file {root / target} not found")
        return path
    sys.path.insert(0, str(root))
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        raise BuilderError(
            f"model.builder {spec!r}: cannot find module {target!r}: {exc}"
        ) from None
    finally:
        sys.path.remove(str(root))
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise BuilderError(
            f"model.builder {spec!r}: no module {target!r} importable from {root} "
            "(give a path instead: path/to/file.py:function)"
        )
    return Path(found.origin)


def load_builder(spec: str, root: Path) -> Callable[..., Any]:
    """Import a user's builder function.

    Raises:
        BuilderError: the file or module is missing, fails to import, or has no such
            callable.
    """
    target, function = split_spec(spec)
    path = source_file(spec, root)
    assert path is not None, spec
    module_name = f"_pipeline_builder_{path.stem}" if target.endswith(".py") else target
    try:
        if target.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look it up
            # Its own folder first, as `python file.py` would: helpers beside it import.
            sys.path.insert(0, str(path.parent))
            try:
                module_spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            sys.path.insert(0, str(root))
            try:
                module = importlib.import_module(target)
            finally:
                sys.path.remove(str(root))
    except Exception as exc:  # noqa: BLE001 - the user's code: report, don't crash
        raise BuilderError(
            f"model.builder {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
        ) from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise BuilderError(
            f"model.builder {spec!r}: {path} has no function {function!r}"
            + (f" (found {type(fn).__name__})" if fn is not None else "")
        )
    return fn


def declared_knobs(fn: Callable[..., Any]) -> set[str]:
    """The knobs a builder takes as keyword parameters (it handles those itself)."""
    params = inspect.signature(fn).parameters
    return {name for name in KNOBS if name in params}


def declared_in_source(path: Path, function: str) -> set[str] | None:
    """declared_knobs read from the builder's source without importing it (None when
    the file does not define `function` with a plain `def`, e.g. it re-exports one)."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            args = node.args
            names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
            return {name for name in KNOBS if name in names}
    return None


def check_variant(variant: str, model: ModelConfig, base: ModelConfig, declared: set[str]) -> None:
    """Refuse a variant a user's model cannot take, before anything trains.

    `base` is params.yaml's own `model` section: a built-in-only knob a variant
    changes from it means nothing to a builder that does not take that keyword.

    Raises:
        BuilderError: naming the variant, the knob and what to do.
    """
    for knob in BUILTIN_ONLY_KNOBS:
        if knob in declared or getattr(model, knob) == getattr(base, knob):
            continue
        raise BuilderError(
            f"variant {variant!r} sets model.{knob} = {getattr(model, knob)!r}, which "
            f"describes the built-in network only: model.builder {model.builder!r} does "
            f"not take a {knob!r} keyword. Add one to the builder, or remove the variant "
            "from params.yaml"
        )
