"""Stage `model_source`: a fingerprint of the user's model builder files, so that editing
one retrains.

DVC cannot name the file in dvc.yaml: it is wherever params.yaml's
`model.builder` points (path/to/file.py:function, or a module importable from
the project root). This stage runs on every `dvc repro` (always_changed, well
under a second: it finds and hashes the file without importing it) and rewrites
data/model_source.json only when the file's content or the builder changes;
the train and learning-curve stages depend on that file, so DVC retrains
exactly when the builder's code changed. For the built-in builder and Keras
Applications backbones the file records just the builder.

It also refuses, before anything trains, a variant that sets a knob of the
built-in network (conv_filters, dense_units, ...) which the builder's function
does not take (pipeline.builders.check_variant), reading its signature from
the source without importing it.

Inputs: params.yaml (model.builder, variants) and the builder's file.
Output: data/model_source.json {"builders": {spec: {"file", "sha256"}}}, one
entry per builder params.yaml's `model` section and its variants name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.builders import (
    check_variant,
    declared_in_source,
    source_file,
    source_sha,
    split_spec,
)
from pipeline.cli import run_stage
from pipeline.config import Config, load_config
from pipeline.io import write_json_atomic
from pipeline.paths import Paths


def builder_record(spec: str, root: Path) -> dict[str, str | None]:
    """Where one builder's file is and its content's hash (None for the built-in ones)."""
    source = source_file(spec, root)
    if source is None:
        return {"file": None, "sha256": None}
    inside = source.is_relative_to(root.resolve())
    return {
        "file": str(source.relative_to(root.resolve())) if inside else str(source),
        "sha256": source_sha(spec, root),
    }


def check_variants(cfg: Config, root: Path) -> None:
    """Refuse, before anything trains, a variant whose builder does not take a knob of the
    built-in network the variant changes (the signature read from the source)."""
    for name in cfg.variants:
        model = cfg.variant(name).model
        source = source_file(model.builder, root)
        declared = declared_in_source(source, split_spec(model.builder)[1]) if source else None
        if declared is not None:
            check_variant(name, model, cfg.model, declared)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    specs = dict.fromkeys(
        [cfg.model.builder, *(cfg.variant(n).model.builder for n in cfg.variants)]
    )
    check_variants(cfg, paths.root)
    record = {"builders": {spec: builder_record(spec, paths.root) for spec in specs}}
    write_json_atomic(paths.model_source_json, record)
    shown = [
        f"{spec} ({r['file']}, sha256 {r['sha256'][:12]})" if r["file"] else spec
        for spec, r in record["builders"].items()
    ]
    print(f"model_source: {'; '.join(shown)} -> {paths.model_source_json}")
    return 0


if __name__ == "__main__":
    run_stage(main)
