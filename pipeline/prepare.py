"""Stage `prepare`: a source of images -> data/prepared/ (manifest, arrays, meta).

Inputs: params.yaml `data` (source, format, image_size, color_mode, fractions,
seed, workers) and the files under `data.source`. Outputs: data/prepared/ in
the format of pipeline/prepared.py, written atomically: it is built in a
staging folder and swapped in only when complete, so a failed run leaves the
previous dataset untouched.

Steps: list records (pipeline.datasets) -> decode, convert, resize and hash
each image in `data.workers` processes (pipeline.decoding) into a scratch
memory-mapped array -> split the usable images -> copy each split's pixels
into its own .npy. Pixels never need to fit in RAM at once.

Splits: pipeline.splitting (stratified by class, deterministic for
`data.seed`, stable when images are added or removed).

The run fails (exit 2) only when nothing usable remains: the source is
missing or unreadable, or fewer than two classes have a usable image.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import progress
from pipeline.cli import StageError, run_stage
from pipeline.config import Config, DataConfig, load_config
from pipeline.datasets import (
    Source,
    class_sort_key,
    explain_empty_source,
    load_source,
    printable_name,
)
from pipeline.decoding import FACT_FIELDS, decode_records
from pipeline.imagecheck import ImageFacts, has_colour
from pipeline.io import open_reserved_npy, require_free_space
from pipeline.paths import Paths
from pipeline.prepared import SPLITS, STATUS_OK, finish_prepared, manifest_frame, staging_dir
from pipeline.splitting import assign_splits

log = logging.getLogger(__name__)

COPY_CHUNK = 8192  # rows copied at a time from the scratch array into a split array
# Beyond the pixels: the manifest (a few hundred bytes per image), meta, file-system slack.
SPACE_PER_IMAGE = 512
SPACE_MARGIN = 2**20


# ---------------------------------------------------------------- writing


def _write_split_arrays(
    tmp: Path, scratch: np.ndarray, positions: np.ndarray, y: np.ndarray, split: str
) -> None:
    shape = (len(positions), *scratch.shape[1:])
    if len(positions) == 0:
        np.save(tmp / f"{split}_x.npy", np.zeros(shape, dtype=np.uint8))
    else:
        out = open_reserved_npy(tmp / f"{split}_x.npy", shape)
        for start in range(0, len(positions), COPY_CHUNK):
            out[start : start + COPY_CHUNK] = scratch[positions[start : start + COPY_CHUNK]]
        out.flush()
        del out
    np.save(tmp / f"{split}_y.npy", y.astype(np.int64))


def resolve_color_mode(source: Source, color_mode: str) -> str:
    """params `data.color_mode`, with `auto` decided from the images: rgb as soon as one
    image file is in colour (its header or palette), else grayscale. IDX files hold
    one channel."""
    if color_mode != "auto":
        return color_mode
    if source.format == "folder":
        for record in source.records:
            if not record.status and has_colour(record.path):
                log.info("data.color_mode auto: %s is in colour, so rgb", record.id)
                return "rgb"
    return "grayscale"


def _unusable_summary(source: Source, facts: list[dict[str, Any]], examples: int = 3) -> str:
    bad = [(r, f) for r, f in zip(source.records, facts, strict=True) if f["status"] != STATUS_OK]
    counts = Counter(f["status"] for _, f in bad)
    summary = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "none"
    shown = "; ".join(f"{r.id} ({f['status']}: {f['error']})" for r, f in bad[:examples])
    return f"{summary}; e.g. {shown}" if shown else summary


def prepare_dataset(config: Config, paths: Paths, progress: bool = True) -> dict[str, Any]:
    """Run the whole stage; returns the written meta plus `unusable` counts."""
    data = config.data
    root = paths.source_dir(data.source)
    if paths.root.resolve().is_relative_to(root.resolve()):
        raise StageError(
            f"data.source {data.source!r} ({root}) holds this project ({paths.root}): its "
            "own data, models and reports would be read as images. Point data.source at "
            "a folder of images (<folder>/<class>/<images>) outside the project or in data/"
        )
    source = load_source(root, data.format)
    if not source.records:
        raise StageError(explain_empty_source(root))
    data = data.model_copy(update={"color_mode": resolve_color_mode(source, data.color_mode)})
    height, width = data.image_size
    n = len(source.records)
    shape = (n, height, width, data.channels)
    # The scratch array, then the split arrays copied from it: about twice the pixels.
    paths.prepared_dir.parent.mkdir(parents=True, exist_ok=True)
    needed = 2 * math.prod(shape) + SPACE_PER_IMAGE * n + SPACE_MARGIN
    require_free_space(paths.prepared_dir.parent, needed)
    with staging_dir(paths.prepared_dir) as tmp:
        scratch_path = tmp / ".scratch_x.npy"
        scratch = open_reserved_npy(scratch_path, shape)
        facts = decode_records(source, data, scratch, progress=progress)
        ok = np.array([f["status"] == STATUS_OK for f in facts], dtype=bool)
        classes = _usable_classes(root, source, facts, ok)
        class_index = {name: i for i, name in enumerate(classes)}
        split, array_index = _split_and_write(tmp, scratch, source, ok, class_index, data)
        del scratch
        scratch_path.unlink()

        manifest = build_manifest(source, facts, class_index, split, array_index)
        meta = {
            "source": data.source,
            "format": source.format,
            "classes": classes,
            "image_size": [height, width],
            "channels": data.channels,
            "color_mode": data.color_mode,
            "seed": data.seed,
            # class folders that give one class or look identical: validate's label_set
            "class_clashes": source.clashes,
        }
        finish_prepared(tmp, manifest, meta)
    counts = manifest["split"].value_counts().to_dict()
    unusable = manifest.loc[manifest["status"] != STATUS_OK, "status"].value_counts().to_dict()
    return {
        **meta,
        "counts": {k: int(v) for k, v in counts.items() if k},
        "unusable": unusable,
        "records": n,
    }


def _usable_classes(
    root: Path, source: Source, facts: list[dict[str, Any]], ok: np.ndarray
) -> list[str]:
    """The classes with at least one usable image, sorted; StageError when fewer than 2."""
    classes = sorted(
        {r.label for r, good in zip(source.records, ok, strict=True) if good},
        key=class_sort_key,
    )
    if len(classes) < 2:
        raise StageError(
            f"data.source {root}: {len(classes)} class(es) with usable images "
            f"({', '.join(classes) or 'none'}); at least 2 are needed. "
            f"Unusable files: {_unusable_summary(source, facts)}"
        )
    return classes


def _split_and_write(
    tmp: Path,
    scratch: np.ndarray,
    source: Source,
    ok: np.ndarray,
    class_index: dict[str, int],
    data: DataConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign the usable records to splits and write each split's arrays into `tmp`.

    Returns:
        (split, array_index), one entry per record: its split ("" when
        unusable) and its row in that split's arrays (-1 when unusable).
    """
    usable = np.flatnonzero(ok)
    labels = np.array([class_index[source.records[i].label] for i in usable], dtype=np.int64)
    source_split = np.array([source.records[i].source_split for i in usable], dtype=object)
    ids = [source.records[i].id for i in usable]
    split_of_usable = assign_splits(labels, source_split, data, keys=ids)

    n = len(source.records)
    split = np.full(n, "", dtype=object)
    split[usable] = split_of_usable
    array_index = np.full(n, -1, dtype=np.int64)
    for name in SPLITS:
        members = usable[split_of_usable == name]
        array_index[members] = np.arange(len(members))
        _write_split_arrays(tmp, scratch, members, labels[split_of_usable == name], name)
    return split, array_index


def build_manifest(
    source: Source,
    facts: list[dict[str, Any]],
    class_index: dict[str, int],
    split: np.ndarray,
    array_index: np.ndarray,
) -> pd.DataFrame:
    """One manifest row per record, in source order."""
    empty = {
        name: default
        for name, default in asdict(ImageFacts(status="")).items()
        if name in FACT_FIELDS
    }
    rows = []
    for pos, record in enumerate(source.records):
        row = {**empty, **facts[pos]}
        row.update(
            id=record.id,
            path=printable_name(record.path),
            error=printable_name(row["error"]),
            label=record.label,
            label_index=class_index.get(record.label, -1),
            split=split[pos],
            source_split=record.source_split,
            array_index=int(array_index[pos]),
        )
        rows.append(row)
    return manifest_frame(rows)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    config = load_config(paths.params)
    summary = prepare_dataset(config, paths, progress=progress.on_terminal())
    counts = summary["counts"]
    bad = sum(summary["unusable"].values())
    print(
        f"prepare: {summary['records']} records from {config.data.source} "
        f"({summary['format']}), {len(summary['classes'])} classes, {bad} unusable -> "
        f"{paths.prepared_dir} (train {counts.get('train', 0)}, val {counts.get('val', 0)}, "
        f"test {counts.get('test', 0)}, unused {counts.get('unused', 0)})"
    )
    return 0


if __name__ == "__main__":
    run_stage(main)
