"""Decode, convert, resize and hash every record of a source, in worker processes.

Each image becomes a uint8 array of the prepared size, written into a scratch
memory-mapped array at the record's position, plus its facts
(pipeline.imagecheck: status, size, hashes, brightness). Pixels never need to
fit in RAM at once.

Inputs: a `datasets.Source` and the target size and colour mode. Outputs: the
scratch array (filled in place) and one facts dict per record.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import DataConfig
from pipeline.datasets import Source
from pipeline.imagecheck import ImageFacts, check_array, check_file

log = logging.getLogger(__name__)

# The image facts that become manifest columns.
FACT_FIELDS = (
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
        facts.append({name: getattr(fact, name) for name in FACT_FIELDS})
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
