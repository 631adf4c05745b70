"""Stage `source`: a content fingerprint of `data.source`, the dependency of prepare.

Inputs: params.yaml `data.source` and every file under it. Output:
data/source.json, a small summary (file count, bytes, one sha256 over every
file's relative name and content) that prepare depends on in place of the
source folder itself.

Why a stage of its own: DVC hashes a stage's dependencies before running it,
and its hashing stops on trees that prepare handles file by file: a symlink
loop, a dangling link, a file name that is not UTF-8, `~` in the path. This
stage runs on every `dvc repro` (`always_changed`), never fails on what it
finds (an unreadable entry becomes part of the fingerprint, and prepare records
why it is unusable), and rewrites data/source.json only when the listing or a
file's content changed, so prepare reruns exactly then.

Content hashes are reused while a file's size, mtime and inode are unchanged
(a cache in .pipeline_state/, not a DVC output), so a rerun on an unchanged
folder reads no image; a fresh clone hashes everything once, and its
fingerprint matches the original's.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cli import run_stage
from pipeline.config import load_config
from pipeline.io import write_json_atomic
from pipeline.paths import Paths

CACHE_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One name under the source: a regular file (with its stat) or why it is not one."""

    rel: bytes
    # "file", "dangling", "loop", "missing", "special", "outside:<link>", "link:<link>"
    # or "unreadable:<errno>"
    kind: str
    st: os.stat_result | None = None


def _why(exc: OSError, is_link: bool) -> str:
    if exc.errno == errno.ELOOP:
        return "loop"
    if exc.errno == errno.ENOENT:
        return "dangling" if is_link else "missing"
    return f"unreadable:{errno.errorcode.get(exc.errno or 0, exc.errno)}"


def walk(root: Path) -> Iterator[Entry]:
    """Every visible name under `root`, depth first in byte order, as prepare reads it.

    Names are bytes, so a name that is not UTF-8 is listed like any other.
    Symlinks are handled as prepare handles them, and never lead out of the
    source: a link whose target is outside `root` is listed as "outside:<target>"
    and not read (a link to /proc or /usr must neither hang nor hash a system);
    a link to a folder inside `root` is listed as "link:<target>" and not walked
    (its target is walked where it is); a link to a file inside `root` is hashed.
    A folder reached a second time (a bind mount) is listed once as "loop".
    Hidden names (leading dot) are skipped, as prepare skips them. Special files
    (FIFOs, devices, sockets) are listed, never opened.
    """
    seen: set[tuple[int, int]] = set()
    base = os.fsencode(root)
    root_real = os.path.realpath(base)

    def visit(path: bytes, rel: bytes) -> Iterator[Entry]:
        unfollowed = _unfollowed_link(path, root_real) if rel else None
        if unfollowed is not None:
            yield Entry(rel, unfollowed)
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            yield Entry(rel, _why(exc, os.path.islink(path)))
            return
        if stat.S_ISREG(st.st_mode):
            yield Entry(rel, "file", st)
            return
        if not stat.S_ISDIR(st.st_mode):  # a FIFO or a device: opening it could block
            yield Entry(rel, "special")
            return
        if (st.st_dev, st.st_ino) in seen:
            yield Entry(rel, "loop")
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(path) as listing:
                names = sorted(e.name for e in listing if not e.name.startswith(b"."))
        except OSError as exc:
            yield Entry(rel, _why(exc, False))
            return
        for name in names:
            yield from visit(os.path.join(path, name), rel + b"/" + name if rel else name)

    yield from visit(base, b"")


def _unfollowed_link(path: bytes, root_real: bytes) -> str | None:
    """The kind of a symlink walk() lists without following it: "outside:<link>" for a
    target outside the source, "link:<link>" for a folder inside it; else None."""
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    shown = os.readlink(path).decode("utf-8", "backslashreplace")
    if not (target == root_real or target.startswith(root_real.rstrip(b"/") + b"/")):
        return f"outside:{shown}"
    return f"link:{shown}" if os.path.isdir(path) else None


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _digest(path: bytes) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return _why(exc, False)


def fingerprint(root: Path, cache: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, new cache) for the tree at `root`.

    `cache` maps a name (bytes as latin-1) to [size, mtime_ns, inode, digest]
    from an earlier run; a file whose stat still matches is not read again.
    """
    total = hashlib.sha256()
    new_cache: dict[str, Any] = {}
    files = size = odd = 0
    base = os.fsencode(root)
    for entry in walk(root):
        key = entry.rel.decode("latin-1")
        if entry.kind == "file" and entry.st is not None:
            stat_key = _stat_key(entry.st)
            hit = cache.get(key)
            digest = (
                hit[3] if hit and hit[:3] == stat_key else _digest(os.path.join(base, entry.rel))
            )
            new_cache[key] = [*stat_key, digest]
            files += 1
            size += entry.st.st_size
        else:
            digest = entry.kind
            odd += 1
        total.update(entry.rel + b"\0" + digest.encode() + b"\n")
    summary = {"files": files, "bytes": size, "not_regular": odd, "sha256": total.hexdigest()}
    return summary, new_cache


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: hash everything again
    if not isinstance(cached, dict) or cached.get("version") != CACHE_VERSION:
        return {}
    entries = cached.get("entries")
    return entries if isinstance(entries, dict) else {}


def changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, int]:
    """Counts of added, removed and changed files between two caches."""
    changed = sum(1 for k in new.keys() & old.keys() if new[k][3] != old[k][3])
    return {
        "added": len(new.keys() - old.keys()),
        "removed": len(old.keys() - new.keys()),
        "changed": changed,
    }


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    config = load_config(paths.params)
    root = paths.source_dir(config.data.source)
    cache_file = paths.state_dir / "source_hashes.json"
    old = _read_cache(cache_file)
    summary, new = fingerprint(root, old)
    write_json_atomic(paths.source_json, {"source": config.data.source, **summary})
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_file, {"version": CACHE_VERSION, "entries": new})
    moved = changes(old, new) if old else None
    what = (
        "first fingerprint"
        if moved is None
        else ", ".join(f"{n} {k}" for k, n in moved.items() if n) or "unchanged"
    )
    odd = f", {summary['not_regular']} not regular files" if summary["not_regular"] else ""
    print(
        f"source: {summary['files']} files ({summary['bytes'] / 2**20:.1f} MB{odd}) "
        f"under {config.data.source}: {what} -> {paths.source_json}"
    )
    return 0


if __name__ == "__main__":
    run_stage(main)
