"""The real `dvc repro prepare` on a user's PNG folder: no-op reruns, reruns on change.

A temp git repo holds the project's code, dvc.yaml and a small params.yaml
whose data.source is a folder of PNGs inside the repo (data/digits is the
digits stage's output, so it is not edited by hand here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from .conftest import dvc, init_repo, ran_stages, small_params, write_png_folder

pytestmark = pytest.mark.slow


def _manifest(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "data/prepared/manifest.parquet").set_index("id")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    params = small_params(data={"source": "images", "image_size": [8, 8], "workers": 1})
    write_png_folder(root / "images", per_class=6, classes=("a", "b"))
    init_repo(root, params)
    return root


def test_repro_prepare_reruns_exactly_when_the_source_changes(repo: Path) -> None:
    first = dvc(repo, "repro", "prepare")
    # digits runs too: the source stage is ordered after it (it fingerprints a user
    # folder as well), and the fingerprint is what prepare depends on.
    assert ran_stages(first.stdout) == {"digits", "prepare"}
    assert "source: 12 files" in first.stdout
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["classes"] == ["a", "b"] and meta["source"] == "images"
    hash_before = meta["manifest_hash"]

    again = dvc(repo, "repro", "prepare")
    assert ran_stages(again.stdout) == set()
    assert "didn't change" in again.stdout and "unchanged" in again.stdout
    assert "up to date" in dvc(repo, "status", "prepare").stdout

    # modify one image: the fingerprint stage sees it, then `dvc status` does
    changed = repo / "images/a/000.png"
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8), mode="L").save(changed)
    assert "1 changed" in dvc(repo, "repro", "source").stdout
    status = dvc(repo, "status", "prepare").stdout
    assert "changed deps" in status and "data/source.json" in status
    old_hash = _manifest(repo).loc["a/000.png", "pixel_hash"]
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == {"prepare"}
    assert _manifest(repo).loc["a/000.png", "pixel_hash"] != old_hash
    assert (
        json.loads((repo / "data/prepared/meta.json").read_text())["manifest_hash"] != hash_before
    )

    # the same bytes written again (a new mtime): hashed again, nothing reruns
    changed.write_bytes(changed.read_bytes())
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == set()

    # add one image
    Image.fromarray(np.full((8, 8), 99, dtype=np.uint8), mode="L").save(repo / "images/b/new.png")
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == {"prepare"}
    assert "b/new.png" in _manifest(repo).index

    # remove one image
    (repo / "images/b/001.png").unlink()
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == {"prepare"}
    assert "b/001.png" not in _manifest(repo).index
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == set()


def test_repro_prepare_reruns_on_data_params_only(repo: Path) -> None:
    dvc(repo, "repro", "prepare")
    params = small_params(data={"source": "images", "image_size": [8, 8], "workers": 1})
    # a knob of another section does not touch prepare
    params["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == set()
    params["data"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(dvc(repo, "repro", "prepare").stdout) == {"prepare"}


def test_failed_prepare_leaves_nothing_half_written(repo: Path) -> None:
    dvc(repo, "repro", "prepare")
    before = (repo / "data/prepared/manifest.parquet").read_bytes()
    for path in (repo / "images").rglob("*.png"):
        path.write_bytes(b"")  # every image now unusable
    result = dvc(repo, "repro", "prepare", check=False)
    assert result.returncode != 0
    assert "at least 2 are needed" in result.stderr + result.stdout
    # The output persists (DVC leaves it in place) and prepare swaps in a new
    # dataset only when it is complete: the last good one is still there, whole.
    assert (repo / "data/prepared/manifest.parquet").read_bytes() == before
    assert [p.name for p in (repo / "data").iterdir() if p.name.startswith(".prepared")] == []
    # ...and the DVC cache holds it too.
    (repo / "data/prepared/manifest.parquet").unlink()
    dvc(repo, "checkout", "data/prepared")
    assert (repo / "data/prepared/manifest.parquet").read_bytes() == before
