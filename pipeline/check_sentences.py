"""Each data check of reports/validation.json in one plain-English sentence with its numbers.

Input: a check's `name`, `observed` dict (pipeline.checks, one `observe` per
check) and `limits` dict (the params `validate` thresholds it was judged
against; absent in files written before validate recorded them). Output: a
string for the report's data-checks table. Pure: no I/O, no GX.

One function per check in `SENTENCES`. A check this module does not know, or
an observed dict missing a key its function reads (an older validation.json),
falls back to a compact "key: value" text, so the page never breaks on
validate's output changing shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Observed = Mapping[str, Any]
Limits = Mapping[str, Any]

# Every check's observed dict carries it; the report lists the files separately.
COMMON_KEYS = ("offending_files",)
FALLBACK_ITEMS = 8  # a compact text shows at most this many entries of a dict


def _pct(share: float) -> str:
    """A share as a percentage, with the decimals a small share needs (0.17%, 1%, 12%)."""
    percent = share * 100
    return f"{percent:.0f}%" if percent == 0 or percent >= 10 else f"{percent:.2g}%"


def _allowed(limits: Limits, key: str, words: str) -> str:
    """' (words <limit>)' when the limit was recorded, else ''."""
    return f" ({words} {limits[key]:g})" if key in limits else ""


def _allowed_share(limits: Limits, key: str) -> str:
    """' (allowed <limit as a percentage>)' when the limit was recorded, else ''."""
    return f" (allowed {_pct(limits[key])})" if key in limits else ""


def _counts(counts: Mapping[str, Any]) -> str:
    """{'8x8': 1797, '16x16': 3} -> '8x8 (1,797), 16x16 (3)'."""
    return ", ".join(f"{k} ({v:,})" for k, v in counts.items())


def label_set(observed: Observed, limits: Limits) -> str:
    n = observed["classes"]
    missing = observed["missing"]
    gaps = "; ".join(f"{split}: {', '.join(names)}" for split, names in missing.items())
    text = (
        f"Classes missing from {gaps} (of {n}; every split must hold every class)"
        if missing
        else f"All {n} classes appear in train, val and test"
    )
    unknown = observed["unknown_label_images"]
    if unknown:
        text += f"; {unknown} images carry a label outside the class list"
    clashes = observed.get("class_clashes") or []
    if clashes:
        text += (
            "; class folders clash (compared after Unicode NFC and stripping spaces): "
            + "; ".join(clashes)
        )
    return text + "."


def class_balance(observed: Observed, limits: Limits) -> str:
    if "train_imbalance_ratio" not in observed:
        raise KeyError("train_imbalance_ratio")  # another shape: describe() falls back
    splits = [
        k.removesuffix("_imbalance_ratio") for k in observed if k.endswith("_imbalance_ratio")
    ]
    ratios = ", ".join(
        f"{observed[f'{s}_imbalance_ratio']:.2f} in {s}"
        if observed[f"{s}_imbalance_ratio"] is not None
        else f"undefined in {s} (the split has no images)"
        for s in splits
    )
    text = f"Largest class / smallest class: {ratios}" + _allowed(
        limits, "max_imbalance_ratio", "allowed up to"
    )
    distances = {
        k.removesuffix("_js_distance"): v for k, v in observed.items() if k.endswith("_js_distance")
    }
    if distances:
        worst = max(distances.values())
        limit = limits.get("max_label_divergence")
        allowed = "" if limit is None else f"; allowed up to {limit:g}"
        text += (
            f"; {' and '.join(distances)} label mix within {worst:.2g} of train's"
            f" (Jensen-Shannon distance{allowed})"
        )
    if limits.get("min_class_share"):
        smallest = min(v for k, v in observed.items() if k.endswith("_min_class_share"))
        text += (
            f"; smallest class share {_pct(smallest)} (at least {_pct(limits['min_class_share'])})"
        )
    return text + "."


def min_images_per_class(observed: Observed, limits: Limits) -> str:
    text = f"Fewest training images in a class: {observed['train_min_count']:,}"
    if "min_images_per_class" in limits:
        text += f" (at least {limits['min_images_per_class']:,} required)"
    below = observed["classes_below"]
    if below:
        text += f"; below it: {_counts(below)}"
    return text + "."


def corrupt_images(observed: Observed, limits: Limits) -> str:
    n = observed["unusable"]
    allowed = _allowed_share(limits, "max_corrupt_fraction")
    if not n:
        return f"No unusable file: prepare decoded every one{allowed}."
    kinds = ", ".join(f"{v} {k}" for k, v in observed["by_status"].items())
    return (
        f"{n:,} files prepare could not use, {_pct(observed['fraction'])} of all{allowed}: {kinds}."
    )


def image_properties(observed: Observed, limits: Limits) -> str:
    n = observed["blank"]
    what = (
        f"{n:,} blank or near-constant images, {_pct(observed['blank_fraction'])}"
        if n
        else ("No blank or near-constant image")
    )
    rule = []
    if "blank_std_threshold" in limits:
        rule.append(f"pixel std below {limits['blank_std_threshold']:g}")
    if "max_blank_fraction" in limits:
        rule.append(f"allowed {_pct(limits['max_blank_fraction'])} of images")
    rule_text = f" ({'; '.join(rule)})" if rule else ""
    return (
        f"{what}{rule_text}; original sizes {_counts(observed['sizes'])},"
        f" modes {_counts(observed['modes'])}: mixed ones are fine,"
        " images are resized and converted."
    )


def duplicates(observed: Observed, limits: Limits) -> str:
    n = observed["duplicate_images"]
    text = (
        f"{n:,} images share their pixels with another in the same split"
        f" ({observed['redundant_copies']} redundant copies, {_pct(observed['duplicate_fraction'])}"
        " of images)"
        if n
        else "No image appears twice within a split"
    ) + _allowed_share(limits, "max_duplicate_fraction")
    conflicts = observed["label_conflict_images"]
    text += (
        f"; {conflicts} images have the same pixels under different labels"
        if conflicts
        else "; none appears under two labels"
    )
    return text + "."


def split_leakage(observed: Observed, limits: Limits) -> str:
    rule = ""
    if "near_duplicate_distance" in limits:
        rule = (
            f" (identical, or a perceptual hash within {limits['near_duplicate_distance']} bits"
            f" and a mean pixel difference of at most {limits['near_duplicate_max_pixel_diff']:g}"
            " of 255)"
        )
    n = observed["leaking_images"]
    if n:
        per_split = ", ".join(
            f"{k.removesuffix('_leaking')} {v}"
            for k, v in observed.items()
            if k.endswith("_leaking")
        )
        text = (
            f"{n:,} val/test images are the same image as a train image{rule}: {per_split};"
            f" {observed['exact']} exact, {observed['near']} near"
        )
    else:
        text = f"No val or test image is the same image as a train image{rule}"
    text += f"; {observed['pixel_comparisons']:,} candidate pairs compared pixel by pixel"
    skipped = observed["skipped_comparisons"]
    if skipped:
        text += f", {skipped:,} skipped (too many candidates)"
    return text + "."


SENTENCES: dict[str, Callable[[Observed, Limits], str]] = {
    "label_set": label_set,
    "class_balance": class_balance,
    "min_images_per_class": min_images_per_class,
    "corrupt_images": corrupt_images,
    "image_properties": image_properties,
    "duplicates": duplicates,
    "split_leakage": split_leakage,
}


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        items = list(value.items())
        shown = ", ".join(f"{k} {_compact(v)}" for k, v in items[:FALLBACK_ITEMS])
        return shown + (f", … ({len(items)} in all)" if len(items) > FALLBACK_ITEMS else "")
    if isinstance(value, list):
        return f"{len(value)} items"
    return str(value)


def compact(observed: Any) -> str:
    """'key: value; key: value' of an observed dict (nested dicts inline, lists counted)."""
    if not isinstance(observed, Mapping):
        return _compact(observed)
    return "; ".join(f"{k}: {_compact(v)}" for k, v in observed.items() if k not in COMMON_KEYS)


def describe(name: str, observed: Any, limits: Any = None) -> str:
    """The check's sentence, or its compact "key: value" text when it has no sentence."""
    sentence = SENTENCES.get(name)
    if sentence is None or not isinstance(observed, Mapping):
        return compact(observed)
    try:
        return sentence(observed, limits if isinstance(limits, Mapping) else {})
    except (KeyError, TypeError, ValueError):
        # An observed dict of another shape (an older or newer validate): show what it holds.
        return compact(observed)
