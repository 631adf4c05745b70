"""Stage `model_source`: a fingerprint of the user's model builder file, so that editing
it retrains.

DVC cannot name the file in dvc.yaml: it is wherever params.yaml's
`model.builder` points (path/to/file.py:function, or a module importable from
the project root). This stage runs on every `dvc repro` (always_changed, well
under a second: it finds and hashes the file without importing it) and rewrites
models/model_source.json only when the file's content or the builder changes;
the train and learning-curve stages depend on that file, so DVC retrains
exactly when the builder's code changed. For the built-in builder and Keras
Applications backbones the file records just the builder.

It also refuses, before anything trains, a variant that sets a knob of the
built-in network (conv_filters, dense_units, ...) which the builder's function
does not take (pipeline.builders.check_variant), reading its signature from
the source without importing it.

Inputs: params.yaml (model.builder, variants) and the builder's file.
Output: models/model_source.json {"builder", "file", "sha256"}.
"""

from __future__ import annotations

import argparse
import hashlib

from pipeline.builders import check_variant, declared_in_source, source_file, split_spec
from pipeline.cli import run_stage
from pipeline.config import load_config
from pipeline.io import write_json_atomic
from pipeline.paths import Paths


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    builder = cfg.model.builder
    source = source_file(builder, paths.root)
    if source is not None:
        # Refuse a variant the builder cannot take now, before anything trains.
        declared = declared_in_source(source, split_spec(builder)[1])
        if declared is not None:
            for name in cfg.variants:
                check_variant(name, cfg.variant(name).model, cfg.model, declared)
    shown = None
    if source is not None:
        inside = source.is_relative_to(paths.root.resolve())
        shown = str(source.relative_to(paths.root.resolve())) if inside else str(source)
    record = {
        "builder": builder,
        "file": shown,
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest() if source else None,
    }
    write_json_atomic(paths.model_source_json, record)
    where = f"{record['file']} (sha256 {record['sha256'][:12]})" if source else "built in"
    print(f"model_source: {builder}: {where} -> {paths.model_source_json}")
    return 0


if __name__ == "__main__":
    run_stage(main)
