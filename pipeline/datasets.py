"""Sources -> records: which images exist, their labels, and why some are unusable.

Inputs: `data.source` and `data.format` from params.yaml. Outputs: a `Source`
(records in a deterministic order, plus the pixel arrays of IDX files); no
pixels are decoded here and nothing is written.

Two layouts are understood:

- **Image folder** `root/<class>/<files>`: the class is the top-level folder
  name; files in sub-folders of a class folder belong to that class (as in
  Keras's `image_dataset_from_directory`). Image extensions are
  `IMAGE_EXTENSIONS`, case-insensitive. Other files in a class folder become
  `not_image` rows; a class folder without a single image file becomes one
  `empty_class` row; a symlink whose target lies outside the source root is
  not followed and becomes a `symlink_outside` row. Hidden files and folders
  (names starting with ".") and loose files directly in the root are ignored.
- **MNIST-style IDX** files in one folder: `train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte` and optionally `t10k-*` (each may be gzipped).
  The source's own split is kept in `source_split` ("train" / "test"). Class
  names are the label numbers as text, unless a `classes.txt` beside the
  files names them, one per line in label order (for Fashion-MNIST:
  T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag,
  Ankle boot). The files carry no names, so none are guessed.

Names are bytes on Linux and need not be UTF-8 (a latin-1 "café.png"). Ids,
labels and the paths the manifest shows pass through `printable_name`: bytes
that are not UTF-8 become ``\\xNN`` escapes, so parquet and JSON can hold them,
while a UTF-8 name keeps exactly its text (and so its id and split).
`SourceRecord.path` stays the name as the OS has it, for opening the file.
"""

from __future__ import annotations

import errno
import gzip
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import StageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
IDX_PATTERN = re.compile(r"^(train|t10k)-(images|labels)[.-]idx([13])-ubyte(\.gz)?$")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_SPLITS = {"train": "train", "t10k": "test"}
CLASSES_FILE = "classes.txt"
LAYOUTS_HELP = (
    "allowed layouts: an image folder <source>/<class>/<image files> "
    f"({', '.join(sorted(IMAGE_EXTENSIONS))}), or a folder of MNIST-style IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], optional t10k-*)"
)


@dataclass(frozen=True)
class SourceRecord:
    """One source item. `status` is preset ("" = decode it) for items known to be unusable."""

    id: str
    path: str
    label: str
    source_split: str = ""
    status: str = ""
    error: str = ""
    idx_file: str = ""  # IDX: key into Source.arrays
    idx_pos: int = -1  # IDX: record number in that file


@dataclass
class Source:
    """Everything prepare needs from a source: records, plus IDX pixel arrays."""

    root: Path
    format: str
    records: list[SourceRecord]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Class folders that name one class, or look like one: [{"class", "folders", "why"}]
    clashes: list[dict[str, Any]] = field(default_factory=list)


def class_sort_key(name: str) -> tuple[int, int, str]:
    """Numeric class names sort as numbers ("2" before "10"), others alphabetically.

    Only ASCII digits count: "①" is a digit to str.isdigit but not to int().
    """
    if name.isascii() and name.isdigit():
        return (0, int(name), name)
    return (1, 0, name)


def class_label(folder: str) -> str:
    """The class a folder name gives: printable (non-UTF-8 bytes as ``\\xNN``),
    Unicode NFC (so an NFD "café" from macOS is the same class as an NFC one) and
    without surrounding whitespace (" cat" is "cat")."""
    text = unicodedata.normalize("NFC", printable_name(folder))
    return text.strip() or text  # a name of only spaces stays what it is


def _looks_like(folder: str) -> str:
    """What a folder name looks like on screen: non-UTF-8 bytes read as latin-1
    (the one rule for them: every byte is a latin-1 character), NFC, invisible
    format characters (zero-width space, joiners) dropped, whitespace stripped."""
    raw = os.fsencode(folder)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = unicodedata.normalize("NFC", text)
    return "".join(c for c in text if not _has_invisible(c)).strip()


def shown_folder(folder: str) -> str:
    """A folder name as a Python literal: " cat" and "cat" differ on screen, and a
    non-UTF-8 name shows as its bytes (b'caf\\xe9'), unlike a literal backslash."""
    try:
        folder.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(folder))
    if unicodedata.normalize("NFC", folder) != folder or _has_invisible(folder):
        return ascii(folder)  # decomposed or invisible characters, spelled out
    return repr(folder)


def _has_invisible(text: str) -> bool:
    return any(unicodedata.category(c) == "Cf" for c in text)


def class_clashes(folders: list[str]) -> list[dict[str, Any]]:
    """Groups of class folders that give the same class, or look identical.

    Each is {"class": the label, "folders": the folders as `shown_folder` gives
    them, "why": "same class" | "look identical"}; a group of the same folders
    is given once.
    """
    by_label: dict[str, list[str]] = {}
    by_look: dict[str, list[str]] = {}
    for folder in folders:
        by_label.setdefault(class_label(folder), []).append(folder)
        by_look.setdefault(_looks_like(folder), []).append(folder)
    clashes: list[dict[str, Any]] = []
    seen: set[frozenset[str]] = set()
    for why, groups in (("same class", by_label), ("look identical", by_look)):
        for members in groups.values():
            if len(members) > 1 and frozenset(members) not in seen:
                seen.add(frozenset(members))
                clashes.append(
                    {
                        "class": class_label(members[0]),
                        "folders": [shown_folder(m) for m in members],
                        "why": why,
                    }
                )
    return clashes


def detect_format(root: Path, fmt: str = "auto") -> str:
    """'auto' -> 'idx' when the folder holds *-idx3-ubyte* files, else 'folder'."""
    if fmt != "auto":
        return fmt
    if root.is_dir() and any(
        IDX_PATTERN.match(p.name) and "idx3" in p.name for p in root.iterdir()
    ):
        return "idx"
    return "folder"


def load_source(root: Path, fmt: str = "auto") -> Source:
    """Resolve `data.source` into records; raises StageError when it cannot be read at all."""
    if not root.exists():
        raise StageError(f"data.source {root} does not exist; {LAYOUTS_HELP}")
    if not root.is_dir():
        raise StageError(f"data.source {root} is not a folder; {LAYOUTS_HELP}")
    fmt = detect_format(root, fmt)
    if fmt == "idx":
        return idx_source(root)
    records = folder_records(root)
    folders = [e.name for e in root.iterdir() if e.is_dir() and not _is_hidden(e.name)]
    return Source(
        root=root, format="folder", records=records, clashes=class_clashes(sorted(folders))
    )


def explain_empty_source(root: Path) -> str:
    """The error for a source that yielded no records: what it holds instead, and why."""
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    visible = [printable_name(p.name) for p in entries if not _is_hidden(p.name)]
    idx = [name for name in visible if IDX_PATTERN.match(name)]
    images = [name for name in visible if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    if any("idx3" in name for name in idx):
        found = f"IDX files ({', '.join(idx)}) read as an image folder; set data.format to idx"
    elif idx:
        found = (
            f"IDX labels file {', '.join(idx)} but no train-images-idx3-ubyte[.gz] "
            "beside it; an IDX source needs both"
        )
    elif images:
        found = (
            f"{_count(images, 'image file')} directly in {root} (e.g. {images[0]}) and no class "
            "folders; put each image in a folder named after its class"
        )
    elif visible:
        found = f"{_count(visible, 'file')} (e.g. {visible[0]}), no class folders and no images"
    else:
        found = f"{root} is empty (hidden entries, names starting with '.', are ignored)"
    return f"data.source {root} holds no class folders: found {found}; {LAYOUTS_HELP}"


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


# ---------------------------------------------------------------- image folders


def printable_name(name: str) -> str:
    """A file name (or path) as text that UTF-8 writers (parquet, JSON) accept.

    Python holds the bytes of a non-UTF-8 name as lone surrogates, which no
    UTF-8 writer accepts. Such a name becomes its bytes with each non-UTF-8
    byte written ``\\xNN`` and each backslash doubled (reversible, and the same
    bytes always give the same text); any other name is returned unchanged.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name).replace(b"\\", b"\\\\")
        return raw.decode("utf-8", "backslashreplace")
    return name


def shown_path(path: Path) -> str:
    """The path as the manifest records it: relative to the project root when
    inside it (so the data version does not depend on where the repo is
    cloned), else absolute."""
    absolute = path.absolute()
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(absolute)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _outside(path: Path, root_real: Path) -> bool:
    target = Path(os.path.realpath(path))
    return target != root_real and root_real not in target.parents


def folder_records(root: Path) -> list[SourceRecord]:
    """Records of a root/<class>/<files> folder in sorted, deterministic order."""
    root_real = Path(os.path.realpath(root))
    records: list[SourceRecord] = []
    for entry in sorted(root.iterdir(), key=lambda p: class_sort_key(p.name)):
        if _is_hidden(entry.name):
            continue
        if not entry.is_dir():
            log.info("ignoring %s: files directly in the source root have no class", entry)
            continue
        label = class_label(entry.name)
        if entry.is_symlink() and _outside(entry, root_real):
            records.append(_symlink_row(entry, f"{label}/", label))
            continue
        class_rows = _class_records(root, entry, label, root_real)
        if all(r.status == "not_image" for r in class_rows):
            class_rows.append(
                SourceRecord(
                    id=f"{label}/",
                    path=shown_path(entry),
                    label=label,
                    status="empty_class",
                    error=f"class folder {label!r} holds no image files",
                )
            )
        records.extend(class_rows)
    return records


def _class_records(root: Path, class_dir: Path, label: str, root_real: Path) -> list[SourceRecord]:
    """One record per visible file under a class folder, subfolders included, in sorted order."""
    rows: list[SourceRecord] = []
    # followlinks=False: a symlinked folder inside the root is walked where it
    # really lives (no double counting, no loops); one outside is reported.
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        here = Path(dirpath)
        kept, link_rows = _subfolders(root, here, dirnames, label, root_real)
        rows.extend(link_rows)
        # os.walk descends only into the folders left in dirnames.
        dirnames[:] = kept
        for name in sorted(filenames):
            if not _is_hidden(name):
                rows.append(_file_record(root, here / name, label, root_real))
    return rows


def _subfolders(
    root: Path, here: Path, dirnames: list[str], label: str, root_real: Path
) -> tuple[list[str], list[SourceRecord]]:
    """The visible, real subfolders to walk, and a row per symlinked one pointing outside."""
    kept: list[str] = []
    rows: list[SourceRecord] = []
    for name in sorted(dirnames):
        if _is_hidden(name):
            continue
        sub = here / name
        if not sub.is_symlink():
            kept.append(name)
        elif _outside(sub, root_real):
            rows.append(_symlink_row(sub, _record_id(root, sub) + "/", label))
        else:
            log.info("not following %s: its target is already inside the source", sub)
    return kept, rows


def _file_record(root: Path, path: Path, label: str, root_real: Path) -> SourceRecord:
    """A file's record: an image, or why it is not one (link outside, extension, dangling)."""
    rel = _record_id(root, path)
    if path.is_symlink() and _outside(path, root_real):
        return _symlink_row(path, rel, label)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return SourceRecord(
            id=rel,
            path=shown_path(path),
            label=label,
            status="not_image",
            error=f"extension {path.suffix or '(none)'!r} is not an image type; "
            f"allowed: {', '.join(sorted(IMAGE_EXTENSIONS))}",
        )
    if not path.exists():
        return SourceRecord(
            id=rel, path=shown_path(path), label=label, status="corrupt", error=_missing_why(path)
        )
    return SourceRecord(id=rel, path=shown_path(path), label=label)


def _missing_why(path: Path) -> str:
    """Why a listed file cannot be opened: a symlink loop, a dangling symlink, or gone."""
    try:
        os.stat(path)
    except OSError as exc:
        if not path.is_symlink():
            return f"cannot read: {exc.strerror or exc}"
        target = printable_name(os.readlink(path))
        if exc.errno == errno.ELOOP:
            return f"symlink loop: {path.name} -> {target} leads back to itself, never to a file"
        return f"broken symlink: its target {target} does not exist"
    return "cannot read: it vanished while the source was listed"


def _record_id(root: Path, path: Path) -> str:
    """A file's id: its path below the source root, "/"-separated, printable."""
    return printable_name(path.relative_to(root).as_posix())


def _symlink_row(path: Path, rel: str, label: str) -> SourceRecord:
    return SourceRecord(
        id=rel,
        path=shown_path(path),
        label=label,
        status="symlink_outside",
        error=f"symlink to {printable_name(os.path.realpath(path))}, outside the source root; "
        "not followed",
    )


# ---------------------------------------------------------------- IDX files


def find_idx_files(root: Path) -> dict[str, dict[str, Path]]:
    """{"train": {"images": path, "labels": path}, "t10k": {...}}; plain files win over .gz."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
        match = IDX_PATTERN.match(path.name)
        if not match or not path.is_file():
            continue
        prefix, kind, ndim, _ = match.groups()
        if (kind == "images") != (ndim == "3"):
            continue
        slot = found.setdefault(prefix, {})
        if kind in slot:
            log.info("ignoring %s: %s is used", path.name, slot[kind].name)
            continue
        slot[kind] = path
    return found


def _open_idx(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise StageError(f"{path}: cannot read IDX file: {exc}") from None


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """An IDX file -> uint8 array; StageError naming the file on any format problem."""
    data = _open_idx(path)
    if len(data) < 4:
        raise StageError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        kind = "images, 3" if expect_magic == IDX_IMAGES_MAGIC else "labels, 1"
        raise StageError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x{expect_magic:08x} "
            f"({kind} dimension(s), unsigned bytes)"
        )
    ndim = expect_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise StageError(f"{path}: IDX header is truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and 0 in shape[1:]:
        raise StageError(
            f"{path}: header says images of {shape[1]}x{shape[2]} pixels; an image needs "
            "at least 1x1"
        )
    # Python ints: four 32-bit dimensions multiplied overflow NumPy's int64
    expected = math.prod(shape) + header
    if len(data) != expected:
        raise StageError(
            f"{path}: header says {shape[0]} items of shape {shape[1:]} ({expected} bytes) "
            f"but the file holds {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_class_names(path: Path) -> list[str]:
    """classes.txt: one name per line, in label order, UTF-8; each name NFC and
    stripped as a folder's class name is (`class_label`)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StageError(
            f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8, one class name per line"
        ) from None
    except OSError as exc:
        raise StageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    names = [unicodedata.normalize("NFC", line).strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise StageError(f"{path}: needs one non-empty class name per line, in label order")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StageError(
            f"{path}: class names must be unique (after Unicode NFC and stripping spaces); "
            f"repeated: {', '.join(map(repr, repeated))}"
        )
    return names


def idx_source(root: Path) -> Source:
    """Records of an MNIST-style IDX folder: train first, then t10k, in file order."""
    files = find_idx_files(root)
    if "train" not in files or "images" not in files["train"]:
        raise StageError(f"{root}: no train-images-idx3-ubyte[.gz] file; {LAYOUTS_HELP}")
    names = read_class_names(root / CLASSES_FILE) if (root / CLASSES_FILE).is_file() else None
    records: list[SourceRecord] = []
    arrays: dict[str, np.ndarray] = {}
    for prefix in ("train", "t10k"):
        if prefix not in files:
            continue
        pair = files[prefix]
        if "labels" not in pair:
            raise StageError(
                f"{pair['images']}: its labels file {prefix}-labels-idx1-ubyte[.gz] is missing"
            )
        if "images" not in pair:
            raise StageError(
                f"{pair['labels']}: its images file {prefix}-images-idx3-ubyte[.gz] is missing"
            )
        images = read_idx(pair["images"], IDX_IMAGES_MAGIC)
        labels = read_idx(pair["labels"], IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise StageError(
                f"{pair['images']} holds {len(images)} images but {pair['labels']} holds "
                f"{len(labels)} labels; they must match"
            )
        if names is not None and len(labels) and int(labels.max()) >= len(names):
            raise StageError(
                f"{root / CLASSES_FILE} names {len(names)} classes but {pair['labels']} "
                f"uses label {int(labels.max())}"
            )
        key = pair["images"].name
        arrays[key] = images
        split = IDX_SPLITS[prefix]
        base = shown_path(pair["images"])
        text = names if names is not None else [str(i) for i in range(256)]
        records.extend(
            SourceRecord(
                id=f"{key}#{i}",
                path=f"{base}#{i}",
                label=text[label],
                source_split=split,
                idx_file=key,
                idx_pos=i,
            )
            for i, label in enumerate(labels.tolist())
        )
    return Source(root=root, format="idx", records=records, arrays=arrays)
