"""Validate stage: a Great Expectations suite over the prepared dataset.

Inputs: data/prepared/ (manifest.parquet, meta.json, <split>_x.npy) and
params.yaml `validate`.
Outputs: reports/validation.json (contract: success, checks[name, success,
severity, observed, examples], warnings, errors; no timestamps, so it is
byte-identical when nothing changed), reports/data_docs/ (GX Data Docs; open
index.html) and an MLflow run tagged stage=validate. Exit code 1 when an
error-severity check fails (the JSON is still written).

Project code only derives the columns that GX checks; GX does the checking,
on four in-memory pandas tables:

- `manifest`: every row (corrupt_images: status must be "ok").
- `images`: rows in train/val/test (unused and unusable rows are left out),
  with derived `duplicate_key`, `hash_label_count` and `leaked_from`.
- `split_classes`: one row per split and class: count, share.
- `splits`: one row per split: imbalance ratio, Jensen-Shannon distance of
  its label distribution to train's.

Split leakage: a val/test image whose prepared pixels equal a train image's
(pixel_hash), or whose 64-bit phash is within near_duplicate_distance of one
(found by hash-band bucketing, not all pairs) *and* whose prepared pixels
differ by at most near_duplicate_max_pixel_diff on average: phashes of small
images collide across different pictures (24 candidate pairs in the digits,
none of them copies), so the phash alone would flag clean data.

Every expectation carries `meta.check`; a check succeeds iff all of its
expectations do. Examples are GX's unexpected rows' `path`, capped at
validate.max_examples.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, ValidateConfig, load_config
from pipeline.io import write_json_atomic
from pipeline.paths import Paths
from pipeline.prepared import SPLITS, STATUS_OK, PreparedDataset, load_prepared, staging_dir

log = logging.getLogger(__name__)

CHECKS = (
    "label_set",
    "class_balance",
    "min_images_per_class",
    "corrupt_images",
    "image_properties",
    "duplicates",
    "split_leakage",
)
HASH_BITS = 64
# Candidate pairs handled per numpy step: bounds memory whatever the bucket sizes.
PAIR_CHUNK = 2_000_000
# Pixel comparisons beyond this many are skipped (logged), so a degenerate
# dataset (thousands of blank images sharing one phash) cannot stall the stage.
MAX_PIXEL_COMPARISONS = 5_000_000
EVAL_SPLITS = tuple(s for s in SPLITS if s != "train")
_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/ ]")


# --------------------------------------------------------------------------
# Near-duplicate search on 64-bit perceptual hashes


def phash_to_uint64(hexes: Iterable[str]) -> np.ndarray:
    """16-hex-digit phashes -> uint64 array (vectorised via one bytes.fromhex)."""
    values = list(hexes)
    if not values:
        return np.zeros(0, dtype=np.uint64)
    bad = [h for h in values if not isinstance(h, str) or len(h) != 16]
    if bad:
        raise ValueError(f"phash must be 16 hex digits, got {bad[0]!r}")
    return np.frombuffer(bytes.fromhex("".join(values)), dtype=">u8").astype(np.uint64)


def hash_bands(max_distance: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 disjoint bands covering all bits.

    Pigeonhole: two hashes within Hamming distance d differ in at most d bits,
    so at least one of d + 1 disjoint bands is identical in both.
    """
    n = max_distance + 1
    if n > bits:
        raise ValueError(f"max_distance {max_distance} needs more bands than {bits} bits")
    widths = [bits // n + (1 if i < bits % n else 0) for i in range(n)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [(int(s), int(w)) for s, w in zip(shifts, widths, strict=True)]


def _band(values: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (values >> np.uint64(shift)) & mask


def near_pairs(
    query: np.ndarray, reference: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with popcount(query[i] ^ reference[j]) <= max_distance.

    Bucketed by hash bands instead of comparing all pairs: candidates share
    one band exactly, are verified with numpy bit counts, and a pair found in
    an earlier band is not reported again. Work is chunked so one huge bucket
    (many images with the same band, e.g. blank-ish images) only costs time,
    never unbounded memory.

    Returns:
        (query indices, reference indices, distances), sorted by query index,
        then distance, then reference index.
    """
    query = np.asarray(query, dtype=np.uint64)
    reference = np.asarray(reference, dtype=np.uint64)
    found_q, found_r, found_d = [], [], []
    if len(query) and len(reference):
        bands = hash_bands(max_distance)
        q_bands = [_band(query, s, w) for s, w in bands]
        r_bands = [_band(reference, s, w) for s, w in bands]
        for b in range(len(bands)):
            order = np.argsort(r_bands[b], kind="stable")
            sorted_band = r_bands[b][order]
            lo = np.searchsorted(sorted_band, q_bands[b], side="left")
            counts = np.searchsorted(sorted_band, q_bands[b], side="right") - lo
            for qi, ri in _expand_buckets(lo, counts, order):
                dist = np.bitwise_count(query[qi] ^ reference[ri])
                close = dist <= max_distance
                qi, ri, dist = qi[close], ri[close], dist[close]
                # a pair sharing an earlier band was reported there (checked
                # on the few close pairs only: cheaper than on all candidates)
                keep = np.ones(len(qi), dtype=bool)
                for e in range(b):
                    keep &= q_bands[e][qi] != r_bands[e][ri]
                found_q.append(qi[keep])
                found_r.append(ri[keep])
                found_d.append(dist[keep].astype(np.int64))
    if not found_q:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    qi, ri, dist = (np.concatenate(a).astype(np.int64) for a in (found_q, found_r, found_d))
    order = np.lexsort((ri, dist, qi))
    return qi[order], ri[order], dist[order]


def _expand_buckets(lo: np.ndarray, counts: np.ndarray, order: np.ndarray):
    """Yield (query idx, reference idx) candidate arrays of about PAIR_CHUNK pairs."""
    nonzero = np.flatnonzero(counts)
    if not len(nonzero):
        return
    ends = np.cumsum(counts[nonzero])
    start = 0
    while start < len(nonzero):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + PAIR_CHUNK, side="right"))
        stop = max(stop, start + 1)
        idx = nonzero[start:stop]
        c = counts[idx]
        qi = np.repeat(idx, c)
        within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        ri = order[np.repeat(lo[idx], c) + within]
        yield qi, ri
        start = stop


def brute_force_pairs(
    query: np.ndarray, reference: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-pairs reference implementation of near_pairs (tests, benchmark)."""
    query = np.asarray(query, dtype=np.uint64)
    reference = np.asarray(reference, dtype=np.uint64)
    found = []
    for start in range(0, len(query), 256):
        block = np.bitwise_count(query[start : start + 256, None] ^ reference[None, :])
        qi, ri = np.nonzero(block <= max_distance)
        found.append((qi + start, ri, block[qi, ri].astype(np.int64)))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    qi, ri, dist = (np.concatenate([f[k] for f in found]).astype(np.int64) for k in range(3))
    order = np.lexsort((ri, dist, qi))
    return qi[order], ri[order], dist[order]


# --------------------------------------------------------------------------
# Derived tables (the columns GX validates)

PixelLoader = Callable[[str, np.ndarray], np.ndarray]


def split_images(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows in train/val/test: split checks ignore unused and unusable rows."""
    rows = manifest[manifest["split"].isin(SPLITS) & (manifest["status"] == STATUS_OK)]
    return rows.reset_index(drop=True)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count vectors."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def class_tables(images: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-class and per-split tables.

    split_classes: split, label, count, share. splits: split, images,
    imbalance_ratio, js_distance.

    Every split x class appears, with count 0 when the class is missing. The
    imbalance ratio is over the classes present (a missing class is
    label_set's finding); the JS distance compares with train's distribution.
    """
    counts = (
        images.groupby(["split", "label"], observed=True).size().astype("int64")
        if len(images)
        else pd.Series(dtype="int64")
    )
    grid = pd.MultiIndex.from_product([list(SPLITS), classes], names=["split", "label"])
    table = counts.reindex(grid, fill_value=0).rename("count").reset_index()
    totals = table.groupby("split")["count"].transform("sum")
    table["share"] = np.where(totals > 0, table["count"] / totals.where(totals > 0, 1), 0.0)
    train_counts = table.loc[table["split"] == "train", "count"].to_numpy()
    rows = []
    for split in SPLITS:
        c = table.loc[table["split"] == split, "count"].to_numpy()
        present = c[c > 0]
        rows.append(
            {
                "split": split,
                "images": int(c.sum()),
                "imbalance_ratio": float(present.max() / present.min()) if len(present) else None,
                "js_distance": round(js_distance(c, train_counts), 6),
            }
        )
    table = table.astype({"split": "string", "label": "string"})
    return table, pd.DataFrame(rows).astype({"split": "string", "imbalance_ratio": "float64"})


@dataclass(frozen=True)
class Leaks:
    """Per row of `images`: the train image it duplicates (or NA) and how close."""

    leaked_from: pd.Series  # train path, <NA> when the row does not leak
    phash_distance: pd.Series  # Int64, <NA> when no leak
    pixel_diff: pd.Series  # float, NaN when no leak
    pixel_comparisons: int
    skipped_comparisons: int


def find_leaks(images: pd.DataFrame, vcfg: ValidateConfig, pixels: PixelLoader | None) -> Leaks:
    """Val/test rows that are the same image as a train row.

    Exact: identical prepared pixels (pixel_hash). Near: phash within
    near_duplicate_distance, confirmed when the prepared pixels' mean absolute
    difference is <= near_duplicate_max_pixel_diff (without `pixels`, the
    phash alone decides).
    """
    n = len(images)
    leaked_from = pd.Series(pd.NA, index=images.index, dtype="string")
    phash_dist = pd.Series(pd.NA, index=images.index, dtype="Int64")
    pixel_diff = pd.Series(np.nan, index=images.index, dtype="float64")
    if n == 0:
        return Leaks(leaked_from, phash_dist, pixel_diff, 0, 0)
    split = images["split"].to_numpy(dtype=object)
    is_train = split == "train"
    is_other = np.isin(split, EVAL_SPLITS)

    # Exact copies: first train row per pixel_hash.
    train_rows = images[is_train]
    first_train = train_rows.drop_duplicates("pixel_hash")
    by_hash = pd.Series(first_train["path"].to_numpy(), index=first_train["pixel_hash"].to_numpy())
    exact_partner = images["pixel_hash"].map(by_hash)
    exact = is_other & exact_partner.notna().to_numpy()
    leaked_from[exact] = exact_partner[exact].astype("string")
    phash_dist[exact] = 0
    pixel_diff[exact] = 0.0

    # Near copies among the rest; train deduplicated by pixels (identical
    # images need comparing once).
    q_rows = np.flatnonzero(is_other & ~exact)
    r_rows = first_train.index.to_numpy()
    compared = skipped = 0
    if len(q_rows) and len(r_rows):
        ph = phash_to_uint64(
            images["phash"].to_numpy(dtype=object)[np.concatenate([q_rows, r_rows])]
        )
        qi, ri, dist = near_pairs(
            ph[: len(q_rows)], ph[len(q_rows) :], vcfg.near_duplicate_distance
        )
        qrow, rrow = q_rows[qi], r_rows[ri]
        if pixels is not None and len(qrow):
            diff, compared, skipped = _pixel_diffs(images, qrow, rrow, pixels)
            ok = diff <= vcfg.near_duplicate_max_pixel_diff
        else:
            diff = np.full(len(qrow), np.nan)
            ok = np.ones(len(qrow), dtype=bool)
        qrow, rrow, dist, diff = qrow[ok], rrow[ok], dist[ok], diff[ok]
        # pairs are sorted by query then phash distance: the first is the closest
        _, first = np.unique(qrow, return_index=True)
        qrow, rrow, dist, diff = qrow[first], rrow[first], dist[first], diff[first]
        leaked_from.iloc[qrow] = images["path"].to_numpy(dtype=object)[rrow]
        phash_dist.iloc[qrow] = dist
        pixel_diff.iloc[qrow] = np.round(diff, 4)
    return Leaks(leaked_from, phash_dist, pixel_diff, compared, skipped)


def _pixel_diffs(
    images: pd.DataFrame, qrow: np.ndarray, rrow: np.ndarray, pixels: PixelLoader
) -> tuple[np.ndarray, int, int]:
    """Mean absolute pixel difference per candidate pair (inf when not compared)."""
    diff = np.full(len(qrow), np.inf)
    todo = min(len(qrow), MAX_PIXEL_COMPARISONS)
    if todo < len(qrow):
        log.warning(
            "split_leakage: %d perceptual-hash candidates; comparing pixels of the first %d",
            len(qrow),
            todo,
        )
    split = images["split"].to_numpy(dtype=object)
    index = images["array_index"].to_numpy()
    step = 20_000  # pairs per numpy step: two (step, h, w, c) blocks stay small
    for start in range(0, todo, step):
        q, r = qrow[start : start + step], rrow[start : start + step]
        a = _gather(q, split, index, pixels)
        b = _gather(r, split, index, pixels)
        diff[start : start + len(q)] = (
            np.abs(a.astype(np.int16) - b).reshape(len(q), -1).mean(axis=1)
        )
    return diff, todo, len(qrow) - todo


def _gather(
    rows: np.ndarray, split: np.ndarray, index: np.ndarray, pixels: PixelLoader
) -> np.ndarray:
    out = None
    for name in np.unique(split[rows]):
        mask = split[rows] == name
        block = pixels(str(name), index[rows[mask]])
        if out is None:
            out = np.empty((len(rows), *block.shape[1:]), dtype=np.uint8)
        out[mask] = block
    return out


def images_table(images: pd.DataFrame, leaks: Leaks) -> pd.DataFrame:
    """`images` with the derived columns GX validates."""
    table = images[["path", "split", "label", "pixel_hash", "pixel_std", "mode"]].copy()
    table["size"] = images["width"].astype(str) + "x" + images["height"].astype(str)
    # Exact duplicates within a split share split + pixel_hash.
    table["duplicate_key"] = images["split"] + ":" + images["pixel_hash"]
    table["hash_label_count"] = (
        images.groupby("pixel_hash")["label"].transform("nunique").astype("int64")
    )
    table["leaked_from"] = leaks.leaked_from
    table["leak_phash_distance"] = leaks.phash_distance
    table["leak_pixel_diff"] = leaks.pixel_diff
    return table


# --------------------------------------------------------------------------
# The GX suite


@dataclass(frozen=True)
class Spec:
    check: str
    table: str
    expectation: Any  # a gx Expectation


def build_specs(vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
    """Every expectation, tagged with its check, on the table it runs on."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity
    from great_expectations.expectations.row_conditions import Column

    def sev(check: str) -> FailureSeverity:
        error = getattr(vcfg.severity, check) == "error"
        return FailureSeverity.CRITICAL if error else FailureSeverity.WARNING

    def spec(check: str, table: str, cls: type, description: str, **kwargs: Any) -> Spec:
        exp = cls(meta={"check": check}, description=description, severity=sev(check), **kwargs)
        return Spec(check, table, exp)

    def mostly(max_fraction: float) -> float:
        return round(1.0 - max_fraction, 12)

    return [
        spec("label_set", "split_classes", gxe.ExpectColumnValuesToBeBetween,
             "label_set: every split holds every class", column="count", min_value=1),
        spec("label_set", "images", gxe.ExpectColumnValuesToBeInSet,
             "label_set: labels are the dataset's classes", column="label", value_set=classes),
        spec("class_balance", "split_classes", gxe.ExpectColumnValuesToBeBetween,
             "class_balance: each class's share of its split", column="share",
             min_value=vcfg.min_class_share),
        spec("class_balance", "splits", gxe.ExpectColumnValuesToBeBetween,
             "class_balance: largest / smallest class per split", column="imbalance_ratio",
             max_value=vcfg.max_imbalance_ratio),
        spec("class_balance", "splits", gxe.ExpectColumnValuesToBeBetween,
             "class_balance: Jensen-Shannon distance to train's labels", column="js_distance",
             max_value=vcfg.max_label_divergence),
        spec("min_images_per_class", "split_classes", gxe.ExpectColumnValuesToBeBetween,
             "min_images_per_class: training images per class", column="count",
             min_value=vcfg.min_images_per_class, row_condition=Column("split") == "train"),
        spec("corrupt_images", "manifest", gxe.ExpectColumnValuesToBeInSet,
             "corrupt_images: files prepare could decode", column="status",
             value_set=[STATUS_OK], mostly=mostly(vcfg.max_corrupt_fraction)),
        spec("image_properties", "images", gxe.ExpectColumnValuesToBeBetween,
             "image_properties: pixel std (below = blank / near-constant image)",
             column="pixel_std", min_value=vcfg.blank_std_threshold,
             mostly=mostly(vcfg.max_blank_fraction)),
        # Informational: images are resized and converted, mixed originals are fine.
        spec("image_properties", "images", gxe.ExpectColumnUniqueValueCountToBeBetween,
             "image_properties: distinct original sizes (informational)", column="size",
             min_value=0),
        spec("image_properties", "images", gxe.ExpectColumnUniqueValueCountToBeBetween,
             "image_properties: distinct original modes (informational)", column="mode",
             min_value=0),
        spec("duplicates", "images", gxe.ExpectColumnValuesToBeUnique,
             "duplicates: identical pixels within a split", column="duplicate_key",
             mostly=mostly(vcfg.max_duplicate_fraction)),
        spec("duplicates", "images", gxe.ExpectColumnValuesToBeBetween,
             "duplicates: identical pixels under different labels", column="hash_label_count",
             max_value=1),
        spec("split_leakage", "images", gxe.ExpectColumnValuesToBeNull,
             "split_leakage: val/test images that duplicate a train image",
             column="leaked_from"),
    ]  # fmt: skip


def _context(docs_dir: Path | None) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["local_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suite(
    tables: dict[str, pd.DataFrame], specs: list[Spec], max_examples: int, docs_dir: Path | None
) -> list[tuple[Spec, Any]]:
    """Validate each table with GX; optionally build Data Docs into docs_dir.

    Returns (spec, ExpectationValidationResult) in spec order.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = _context(docs_dir)
    run_id = RunIdentifier(run_name="validate")  # one run: Data Docs group the tables
    source = context.data_sources.add_pandas("prepared")
    by_table: dict[str, list[Spec]] = {}
    for s in specs:
        by_table.setdefault(s.table, []).append(s)
    for position, s in enumerate(specs):
        s.expectation.meta = {**(s.expectation.meta or {}), "spec": position}
    outcome: dict[int, Any] = {}
    for table, table_specs in by_table.items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        for s in table_specs:
            suite.add_expectation(s.expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=suite)
        )
        index_columns = [c for c in ("path", "split", "label") if c in tables[table].columns][:2]
        result = definition.run(
            batch_parameters={"dataframe": tables[table]},
            run_id=run_id,
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": index_columns,
                "partial_unexpected_count": max_examples,
                "return_unexpected_index_query": False,
            },
        )
        # GX reorders results: match them to specs by the position in meta
        for r in result.results:
            outcome[int(r.expectation_config.meta["spec"])] = r
    if docs_dir is not None:
        context.build_data_docs()
    return [(s, outcome[int(s.expectation.meta["spec"])]) for s in specs]


# --------------------------------------------------------------------------
# Summaries


def _unexpected(result: Any) -> list[dict[str, Any]]:
    return list(result.result.get("partial_unexpected_index_list") or [])


def _paths(results: list[Any], cap: int) -> list[str]:
    paths: list[str] = []
    for r in results:
        for row in _unexpected(r):
            p = row.get("path")
            if p is not None and p not in paths:
                paths.append(str(p))
    return paths[:cap]


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _counts(series: pd.Series, top: int = 10) -> dict[str, int]:
    counts = series.value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    return {str(k): int(v) for k, v in counts.head(top).items()}


def observe(
    check: str,
    tables: dict[str, pd.DataFrame],
    manifest: pd.DataFrame,
    leaks: Leaks,
    classes: list[str],
    vcfg: ValidateConfig,
) -> dict[str, Any]:
    """The observed values reported for one check (facts, not verdicts)."""
    images, sc, splits = tables["images"], tables["split_classes"], tables["splits"]
    cap = vcfg.max_examples
    if check == "label_set":
        missing = {
            s: sc.loc[(sc["split"] == s) & (sc["count"] == 0), "label"].astype(str).tolist()
            for s in SPLITS
        }
        return {
            "classes": len(classes),
            "missing": {s: v for s, v in missing.items() if v},
            "unknown_label_images": int((~images["label"].isin(classes)).sum()),
        }
    if check == "class_balance":
        observed = {}
        for row in splits.itertuples():
            ratio = row.imbalance_ratio
            observed[f"{row.split}_imbalance_ratio"] = None if pd.isna(ratio) else round(ratio, 4)
        for row in splits.itertuples():
            if row.split != "train":
                observed[f"{row.split}_js_distance"] = row.js_distance
        shares = sc.groupby("split")["share"].min()
        for split in SPLITS:
            observed[f"{split}_min_class_share"] = round(float(shares.get(split, 0.0)), 6)
        return observed
    if check == "min_images_per_class":
        train = sc[sc["split"] == "train"]
        below = train[train["count"] < vcfg.min_images_per_class]
        return {
            "train_min_count": int(train["count"].min()) if len(train) else 0,
            "classes_below": {str(r.label): int(r.count) for r in below.itertuples()},
        }
    if check == "corrupt_images":
        bad = manifest[manifest["status"] != STATUS_OK]
        return {
            "unusable": len(bad),
            "fraction": _fraction(len(bad), len(manifest)),
            "by_status": _counts(bad["status"]),
            "reasons": {
                str(r.path): f"{r.status}: {r.error}".rstrip(": ")
                for r in bad.head(cap).itertuples()
            },
        }
    if check == "image_properties":
        blank = int((images["pixel_std"] < vcfg.blank_std_threshold).sum())
        return {
            "blank": blank,
            "blank_fraction": _fraction(blank, len(images)),
            "sizes": _counts(images["size"]),
            "modes": _counts(images["mode"]),
        }
    if check == "duplicates":
        dup = images["duplicate_key"].duplicated(keep=False)
        extra = images["duplicate_key"].duplicated(keep="first")
        conflicts = images["hash_label_count"] > 1
        return {
            "duplicate_images": int(dup.sum()),
            "redundant_copies": int(extra.sum()),
            "duplicate_fraction": _fraction(int(dup.sum()), len(images)),
            "label_conflict_images": int(conflicts.sum()),
        }
    if check == "split_leakage":
        leaking = images[images["leaked_from"].notna()]
        return {
            "leaking_images": len(leaking),
            **{f"{s}_leaking": int((leaking["split"] == s).sum()) for s in EVAL_SPLITS},
            "exact": int((leaking["leak_pixel_diff"] == 0).sum()),
            "near": int((leaking["leak_pixel_diff"] != 0).sum()),
            "pixel_comparisons": leaks.pixel_comparisons,
            "skipped_comparisons": leaks.skipped_comparisons,
            "pairs": [
                {
                    "path": str(r.path),
                    "train_path": str(r.leaked_from),
                    "phash_distance": int(r.leak_phash_distance),
                    "pixel_diff": float(r.leak_pixel_diff),
                }
                for r in leaking.head(cap).itertuples()
            ],
        }
    raise ValueError(f"unknown check {check!r}")


def summarise(
    outcomes: list[tuple[Spec, Any]],
    tables: dict[str, pd.DataFrame],
    manifest: pd.DataFrame,
    leaks: Leaks,
    classes: list[str],
    vcfg: ValidateConfig,
) -> dict[str, Any]:
    """GX results -> the validation.json payload (deterministic: no times or ids)."""
    checks = []
    for name in CHECKS:
        results = [r for s, r in outcomes if s.check == name]
        success = all(bool(r.success) for r in results)
        observed = observe(name, tables, manifest, leaks, classes, vcfg)
        # files GX found offending (row-level tables; the same file counted once per expectation)
        observed["offending_files"] = sum(
            int(r.result.get("unexpected_count") or 0)
            for s, r in outcomes
            if s.check == name and s.table in ("manifest", "images")
        )
        checks.append(
            {
                "name": name,
                "success": success,
                "severity": getattr(vcfg.severity, name),
                "observed": observed,
                "examples": _paths(results, vcfg.max_examples),
            }
        )
    failed = [c for c in checks if not c["success"]]
    errors = [c["name"] for c in failed if c["severity"] == "error"]
    return {
        "success": not errors,
        "checks": checks,
        "warnings": [c["name"] for c in failed if c["severity"] == "warning"],
        "errors": errors,
    }


def validate_dataset(
    dataset: PreparedDataset, vcfg: ValidateConfig, docs_dir: Path | None = None
) -> dict[str, Any]:
    """Run every check on a prepared dataset; returns the validation.json payload."""
    manifest = dataset.manifest
    classes = dataset.classes
    images = split_images(manifest)
    cache: dict[str, np.ndarray] = {}

    def pixels(split: str, rows: np.ndarray) -> np.ndarray:
        if split not in cache:
            cache[split] = dataset.x(split)
        return np.asarray(cache[split][rows])

    leaks = find_leaks(images, vcfg, pixels)
    split_classes, splits = class_tables(images, classes)
    tables = {
        "manifest": manifest[["path", "status", "error", "split"]].reset_index(drop=True),
        "images": images_table(images, leaks),
        "split_classes": split_classes,
        "splits": splits,
    }
    outcomes = run_suite(tables, build_specs(vcfg, classes), vcfg.max_examples, docs_dir)
    return summarise(outcomes, tables, manifest, leaks, classes, vcfg)


def numeric_observations(report: dict[str, Any]) -> dict[str, float]:
    """validate.<check>.success and every numeric observed value, as MLflow metrics."""
    metrics: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            metrics[prefix] = float(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            if np.isfinite(value):
                metrics[prefix] = float(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{_METRIC_UNSAFE.sub('_', str(key))}", item)

    for check in report["checks"]:
        metrics[f"validate.{check['name']}.success"] = float(check["success"])
        if check["name"] != "corrupt_images":  # reasons are text keyed by path
            walk(f"validate.{check['name']}", check["observed"])
        else:
            for key in ("unusable", "fraction"):
                walk(f"validate.corrupt_images.{key}", check["observed"][key])
    return metrics


def data_docs_artifacts(docs_dir: Path) -> list[tuple[Path, str]]:
    """(file, artifact folder) of the Data Docs pages worth keeping per run.

    GX's static images and fonts (4 MB of logos, GIFs and fonts) are left out
    of MLflow: the pages read fine without them, and every run would store them.
    """
    files = []
    for file in sorted(docs_dir.rglob("*")):
        rel = file.relative_to(docs_dir)
        if file.is_file() and rel.parts[:2] not in (("static", "images"), ("static", "fonts")):
            files.append((file, str(Path("data_docs") / rel.parent).rstrip("/.")))
    return files


def _dataset_level(check: dict[str, Any]) -> str:
    """What a failed check without offending files found, in a few words."""
    observed = check["observed"]
    if check["name"] == "label_set":
        missing = "; ".join(f"{s}: {', '.join(v)}" for s, v in observed["missing"].items())
        return f"classes missing from {missing}"
    if check["name"] == "min_images_per_class":
        below = ", ".join(f"{k} ({v})" for k, v in observed["classes_below"].items())
        return f"train images per class: {below}"
    if check["name"] == "class_balance":
        shown = {k: v for k, v in observed.items() if k != "offending_files" and v is not None}
        return ", ".join(f"{k} {v:g}" for k, v in shown.items() if "share" not in k)
    return "dataset-level"


def failure_summary(report: dict[str, Any], where: Path) -> str:
    """A few lines for stderr: failed checks, how many files each, the report."""
    lines = []
    for check in report["checks"]:
        if check["success"]:
            continue
        n = check["observed"].get("offending_files", 0)
        what = f"{n} file(s), e.g. {check['examples'][0]}" if n else _dataset_level(check)
        lines.append(f"  {check['severity']}: {check['name']} failed ({what})")
    lines.append(f"details: {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    cfg: Config = load_config(paths.params)
    vcfg = cfg.validate_
    dataset = load_prepared(paths.prepared_dir)

    import mlflow

    from pipeline import tracking

    with staging_dir(paths.data_docs_dir) as docs_tmp:
        report = validate_dataset(dataset, vcfg, docs_dir=docs_tmp)
    write_json_atomic(paths.validation_json, report)

    with tracking.stage_run(
        paths, cfg, stage="validate",
        extra_tags={"validation_success": str(report["success"]).lower()},
    ):  # fmt: skip
        mlflow.log_metrics(numeric_observations(report))
        mlflow.log_artifact(str(paths.validation_json))
        for file, folder in data_docs_artifacts(paths.data_docs_dir):
            mlflow.log_artifact(str(file), artifact_path=folder)

    docs = paths.data_docs_dir / "index.html"
    if report["errors"]:
        print(
            f"validate: FAILED ({', '.join(report['errors'])})\n"
            + failure_summary(report, paths.validation_json),
            file=sys.stderr,
        )
        return 1
    warned = f"; warnings: {', '.join(report['warnings'])}" if report["warnings"] else ""
    print(f"validate: passed{warned}. Report {paths.validation_json}, Data Docs {docs}")
    return 0


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
