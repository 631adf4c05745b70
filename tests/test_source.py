"""pipeline.source: the fingerprint of data.source that prepare depends on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import source
from pipeline.source import changes, fingerprint, walk

from .conftest import REPO, write_png_folder


def test_a_copy_with_new_mtimes_has_the_same_fingerprint(tmp_path: Path):
    """A fresh clone or `dvc pull` rewrites every file: only content and names count."""
    first = write_png_folder(tmp_path / "a", per_class=3, classes=("x", "y"))
    second = tmp_path / "b"
    shutil.copytree(first, second)  # new inodes; mtimes copied...
    for path in second.rglob("*.png"):
        os.utime(path, ns=(1, 1))  # ...and then changed
    summary, _ = fingerprint(first, {})
    assert summary["files"] == 6 and summary["not_regular"] == 0
    assert fingerprint(second, {})[0] == summary


def test_content_names_and_additions_change_it(tmp_path: Path):
    root = write_png_folder(tmp_path / "a", per_class=3, classes=("x", "y"))
    base, cache = fingerprint(root, {})
    (root / "x" / "000.png").write_bytes(b"other bytes")
    edited, edited_cache = fingerprint(root, cache)
    assert edited["sha256"] != base["sha256"]
    assert changes(cache, edited_cache) == {"added": 0, "removed": 0, "changed": 1}
    (root / "x" / "000.png").rename(root / "x" / "zzz.png")
    renamed, renamed_cache = fingerprint(root, edited_cache)
    assert renamed["sha256"] not in (base["sha256"], edited["sha256"])
    assert changes(edited_cache, renamed_cache) == {"added": 1, "removed": 1, "changed": 0}
    (root / "x" / ".DS_Store").write_bytes(b"hidden: prepare skips it, so does the fingerprint")
    assert fingerprint(root, renamed_cache)[0] == renamed


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, monkeypatch):
    root = write_png_folder(tmp_path / "a", per_class=3, classes=("x", "y"))
    summary, cache = fingerprint(root, {})
    read: list[bytes] = []
    real = source._digest
    monkeypatch.setattr(source, "_digest", lambda path: read.append(path) or real(path))
    assert fingerprint(root, cache)[0] == summary
    assert read == []
    os.utime(root / "y" / "001.png", ns=(5, 5))  # touched: read again, same content
    assert fingerprint(root, cache)[0] == summary
    assert [os.path.basename(p) for p in read] == [b"001.png"]


def test_trees_that_stop_dvcs_hashing_are_listed_not_fatal(tmp_path: Path):
    root = write_png_folder(tmp_path / "a", per_class=2, classes=("x",))
    (root / "x" / "loop").symlink_to("..")
    (root / "x" / "gone.png").symlink_to("nowhere.png")
    with open(os.fsencode(root / "x") + b"/caf\xe9.png", "wb") as f:
        f.write(b"latin-1 name")
    os.mkfifo(root / "x" / "pipe.png")  # opening it to hash it would block forever
    kinds = {e.rel: e.kind for e in walk(root)}
    assert kinds[b"x/pipe.png"] == "special"
    assert kinds[b"x/loop"] == "link:.."  # a folder link inside: listed, not walked again
    assert kinds[b"x/gone.png"] == "dangling"
    assert kinds[b"x/caf\xe9.png"] == "file"
    summary, _ = fingerprint(root, {})
    assert summary["files"] == 3 and summary["not_regular"] == 3
    assert [e.kind for e in walk(tmp_path / "absent")] == ["missing"]


def test_the_stage_writes_the_summary_and_says_what_changed(tmp_path: Path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_png_folder(root / "data" / "digits", per_class=2, classes=("0", "1"))

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.source"],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
        )
        return done.stdout

    first = run()
    assert "4 files" in first and "first fingerprint" in first
    summary = json.loads((root / "data" / "source.json").read_text())
    assert summary["source"] == "data/digits" and summary["files"] == 4
    assert "unchanged" in run()
    (root / "data" / "digits" / "1" / "000.png").write_bytes(b"x")
    assert "1 changed" in run()
