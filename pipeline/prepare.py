"""Stage `prepare`: a source of images -> data/prepared/ (manifest, arrays, meta).

Inputs: params.yaml `data` (source, format, image_size, color_mode, fractions,
seed, workers) and the files under `data.source`. Outputs: data/prepared/ in
the format of pipeline/prepared.py, written atomically: it is built in a
staging folder and swapped in only when complete, so a failed run leaves the
previous dataset untouched.

Steps: list records (pipeline.datasets) -> decode, convert, resize and hash
each image in `data.workers` processes (pipeline.imagecheck) into a scratch
memory-mapped array -> split the usable images -> copy each split's pixels
into its own .npy. Pixels never need to fit in RAM at once.

Splits are stratified by class and deterministic for `data.seed`, and stable:
within a class, images are ordered by a hash of (seed, image id), so adding or
removing images leaves the others in their split (see `split_rank`).

- image folders: test = `test_fraction`, val = `val_fraction` of all usable
  images, the rest is train;
- IDX sources with a t10k part: test = the source's test images, val =
  `val_fraction` of the source's train images (`test_fraction` is ignored);
- then `train_fraction` < 1 keeps a stratified subsample of train; the rest
  gets split "unused".

A class too small to contribute to a split (one image, or fewer than
1 / fraction) keeps its images in train, with a warning; validate's label_set
check then reports the class missing from val or test.

The run fails (exit 2) only when nothing usable remains: the source is
missing or unreadable, or fewer than two classes have a usable image.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from tqdm import tqdm

from pipeline.cli import StageError, run_stage
from pipeline.config import Config, DataConfig, load_config
from pipeline.datasets import LAYOUTS_HELP, Source, class_sort_key, load_source
from pipeline.imagecheck import ImageFacts, check_array, check_file
from pipeline.paths import Paths
from pipeline.prepared import SPLITS, STATUS_OK, finish_prepared, manifest_frame, staging_dir

log = logging.getLogger(__name__)

COPY_CHUNK = 8192  # rows copied at a time from the scratch array into a split array
_FACT_FIELDS = (
    "status",
    "error",
    "width",
    "height",
    "mode",
    "bytes",
    "pixel_hash",
    "phash",
    "pixel_mean",
    "pixel_std",
)


# ---------------------------------------------------------------- decoding


def _decode_task(task: tuple[str, Any, tuple[int, int], str]) -> tuple[np.ndarray, list[dict]]:
    """Worker: one chunk of files or IDX images -> (pixels (k, h, w, c), facts without pixels)."""
    kind, items, image_size, color_mode = task
    channels = 1 if color_mode == "grayscale" else 3
    pixels = np.zeros((len(items), *image_size, channels), dtype=np.uint8)
    facts = []
    for i, item in enumerate(items):
        fact: ImageFacts = (
            check_file(item, image_size, color_mode)
            if kind == "files"
            else check_array(item, image_size, color_mode)
        )
        if fact.pixels is not None:
            pixels[i] = fact.pixels
        facts.append({name: getattr(fact, name) for name in _FACT_FIELDS})
    return pixels, facts


def _tasks(
    source: Source, todo: list[int], data: DataConfig, chunk: int
) -> Iterator[tuple[list[int], tuple]]:
    size = tuple(data.image_size)
    for start in range(0, len(todo), chunk):
        positions = todo[start : start + chunk]
        records = [source.records[p] for p in positions]
        if source.format == "idx":
            # Records of one chunk may span the train and t10k files.
            items: Any = [source.arrays[r.idx_file][r.idx_pos] for r in records]
            yield positions, ("arrays", items, size, data.color_mode)
        else:
            yield positions, ("files", [r.path for r in records], size, data.color_mode)


def resolve_workers(workers: int) -> int:
    """params' data.workers -> a process count (0 = one per CPU core this process may use)."""
    if workers > 0:
        return workers
    if hasattr(os, "sched_getaffinity"):  # respects taskset / container CPU limits
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_records(
    source: Source, data: DataConfig, scratch: np.ndarray, progress: bool = True
) -> list[dict[str, Any]]:
    """Decode every record into `scratch` (row = record position); returns per-record facts."""
    facts: list[dict[str, Any]] = [
        {"status": r.status, "error": r.error} if r.status else {} for r in source.records
    ]
    todo = [i for i, r in enumerate(source.records) if not r.status]
    workers = min(resolve_workers(data.workers), max(1, len(todo)))
    chunk = max(32, min(2048, math.ceil(len(todo) / (workers * 8)) if todo else 32))
    tasks = list(_tasks(source, todo, data, chunk))
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc="prepare",
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
    )
    with bar:
        if workers == 1:
            results = (_decode_task(task) for _, task in tasks)
            _collect(tasks, results, facts, scratch, bar)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                _collect(tasks, pool.map(_decode_task, [t for _, t in tasks]), facts, scratch, bar)
    return facts


def _collect(
    tasks: list[tuple[list[int], tuple]],
    results: Iterable[tuple[np.ndarray, list[dict]]],
    facts: list[dict[str, Any]],
    scratch: np.ndarray,
    bar: tqdm,
) -> None:
    """Store each chunk's pixels in the scratch array at its records' positions."""
    for (positions, _), (pixels, chunk_facts) in zip(tasks, results, strict=True):
        scratch[positions] = pixels
        for pos, fact in zip(positions, chunk_facts, strict=True):
            facts[pos] = fact
        bar.update(len(positions))


# ---------------------------------------------------------------- splitting


def split_rank(keys: Sequence[str], seed: int, what: str) -> np.ndarray:
    """A pseudo-random but stable sort key per item: sha256(seed, what, key).

    An item's rank depends only on its own key (its id in the source), not on
    which other items exist, so adding or removing images leaves every other
    image's relative order, and so its split, as it was (give or take the one
    image at each class's boundary). A retrained challenger and the champion
    can then be compared on a test set the champion never trained on.
    """
    return np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}:{what}:{key}".encode()).digest()[:8], "big")
            for key in keys
        ],
        dtype=np.uint64,
    )


def stratified_take(
    indices: np.ndarray,
    labels: np.ndarray,
    fraction: float,
    seed: int,
    what: str,
    keys: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (taken ~fraction, kept), stratified by `labels[indices]`.

    Per class, the images are ordered by `split_rank` of their key and the
    first round(n * fraction) are taken, always keeping at least one image of
    the class in the larger part (a class too small to split warns).

    Args:
        keys: a stable identifier per item of `labels` (the record ids); the
            position is used when omitted.
    """
    if fraction <= 0 or len(indices) == 0:
        return indices[:0], indices
    all_keys = [str(i) for i in range(len(labels))] if keys is None else keys
    rank = split_rank([all_keys[i] for i in indices], seed, what)
    strata = labels[indices]
    taken_parts, kept_parts, too_small = [], [], []
    for label in sorted(set(strata.tolist())):
        in_class = strata == label
        members = indices[in_class][np.argsort(rank[in_class], kind="stable")]
        n_take = min(int(round(len(members) * fraction)), len(members) - 1)
        if n_take == 0:
            too_small.append(label)
        taken_parts.append(members[:n_take])
        kept_parts.append(members[n_take:])
    if too_small:
        log.warning(
            "%s: stratified split not possible for class index(es) %s (too few images): "
            "none of their images go to %s",
            what,
            too_small,
            what,
        )
    return np.sort(np.concatenate(taken_parts)), np.sort(np.concatenate(kept_parts))


def assign_splits(
    labels: np.ndarray,
    source_split: np.ndarray,
    data: DataConfig,
    keys: Sequence[str] | None = None,
) -> np.ndarray:
    """Split names for usable images (parallel arrays of label index and source split).

    Args:
        keys: a stable id per image (the manifest id), so that an image keeps
            its split when others are added or removed; default: position.
    """
    n = len(labels)
    out = np.full(n, "train", dtype=object)
    everything = np.arange(n)
    own_test = source_split == "test"
    if own_test.any():
        test = everything[own_test]
        val, train = stratified_take(
            everything[~own_test], labels, data.val_fraction, data.seed, "val", keys
        )
    else:
        test, rest = stratified_take(
            everything, labels, data.test_fraction, data.seed, "test", keys
        )
        val_share = data.val_fraction / (1.0 - data.test_fraction)
        val, train = stratified_take(rest, labels, val_share, data.seed, "val", keys)
    out[test] = "test"
    out[val] = "val"
    if data.train_fraction < 1.0:
        unused, _ = stratified_take(
            train, labels, 1.0 - data.train_fraction, data.seed, "train_fraction", keys
        )
        out[unused] = "unused"
    for split in SPLITS:
        if not (out == split).any():
            log.warning("split %r is empty: too few usable images (%d) for the fractions", split, n)
    return out


# ---------------------------------------------------------------- writing


def _write_split_arrays(
    tmp: Path, scratch: np.ndarray, positions: np.ndarray, y: np.ndarray, split: str
) -> None:
    shape = (len(positions), *scratch.shape[1:])
    if len(positions) == 0:
        np.save(tmp / f"{split}_x.npy", np.zeros(shape, dtype=np.uint8))
    else:
        out = open_memmap(tmp / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=shape)
        for start in range(0, len(positions), COPY_CHUNK):
            out[start : start + COPY_CHUNK] = scratch[positions[start : start + COPY_CHUNK]]
        out.flush()
        del out
    np.save(tmp / f"{split}_y.npy", y.astype(np.int64))


def _unusable_summary(source: Source, facts: list[dict[str, Any]], examples: int = 3) -> str:
    bad = [(r, f) for r, f in zip(source.records, facts, strict=True) if f["status"] != STATUS_OK]
    counts = Counter(f["status"] for _, f in bad)
    summary = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "none"
    shown = "; ".join(f"{r.id} ({f['status']}: {f['error']})" for r, f in bad[:examples])
    return f"{summary}; e.g. {shown}" if shown else summary


def source_path(data: DataConfig, paths: Paths) -> Path:
    """data.source, relative paths taken from the project root."""
    path = Path(data.source).expanduser()
    return path if path.is_absolute() else paths.root / path


def prepare_dataset(config: Config, paths: Paths, progress: bool = True) -> dict[str, Any]:
    """Run the whole stage; returns the written meta plus `unusable` counts."""
    data = config.data
    root = source_path(data, paths)
    source = load_source(root, data.format)
    if not source.records:
        raise StageError(f"data.source {root} holds no class folders or images; {LAYOUTS_HELP}")
    height, width = data.image_size
    n = len(source.records)
    with staging_dir(paths.prepared_dir) as tmp:
        scratch_path = tmp / ".scratch_x.npy"
        scratch = open_memmap(
            scratch_path, mode="w+", dtype=np.uint8, shape=(n, height, width, data.channels)
        )
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
        if name in _FACT_FIELDS
    }
    rows = []
    for pos, record in enumerate(source.records):
        row = {**empty, **facts[pos]}
        row.update(
            id=record.id,
            path=record.path,
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
    summary = prepare_dataset(config, paths, progress=True)
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
