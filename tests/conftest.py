"""Shared fixtures: a project directory in tmp_path and tiny real datasets.

`project` copies the real params.yaml (made small and fast) into a temp dir,
chdirs there and points MLflow at a sqlite file inside it, so every test uses
the real backends without touching the developer's mlflow.db.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import tracking
from pipeline.config import Config, load_config, merge, parse_config
from pipeline.paths import Paths
from pipeline.prepared import SPLITS, manifest_frame, write_prepared

REPO = Path(__file__).resolve().parent.parent
# DVC's usage analytics spawn a daemon per command that tries the network (offline here).
os.environ["DVC_NO_ANALYTICS"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: each worker's TensorFlow (and its stage subprocesses')
    # runs one thread per pool instead of two pools of two oversubscribing the cores.
    for _key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_key, "1")


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def real_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def small_params(**sections) -> dict:
    """The real params with fast training, and per-section overrides merged in."""
    params = real_params()
    params["train"]["epochs"] = 3
    params["train"]["batch_size"] = 32
    params["model"]["conv_filters"] = [4]
    params["model"]["dense_units"] = 16
    params["variants"] = {"baseline": {}, "dropout": {"model": {"dropout": 0.5}}}
    for section, values in sections.items():
        if (
            isinstance(values, dict)
            and isinstance(params.get(section), dict)
            and section != "variants"
        ):
            params[section] = merge(params[section], values)
        else:
            params[section] = values
    if params["learning_curve"]["variant"] not in params["variants"]:
        # Tests that define their own variants get the curve on the first one.
        params["learning_curve"]["variant"] = next(iter(params["variants"]))
    return params


def shipped(section: str, **overrides):
    """One section of the shipped params.yaml as its typed config, `overrides` merged in.

    Tests build configs this way, never from code defaults (there are none), so
    they test the numbers the product ships.
    """
    params = real_params()
    params[section] = merge(params[section], overrides)
    cfg = parse_config(params)
    return getattr(cfg, "validate_" if section == "validate" else section)


def retrain_config():
    """The retrain gates on, with a 1-point accuracy tolerance and a 10-point gap limit."""
    return shipped(
        "retrain",
        require_validation_success=True,
        reject_overfitting=True,
        accuracy_tolerance=0.01,
        max_gap=0.1,
    )


class Project:
    """A throwaway project root with its own params.yaml and mlflow.db."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = Paths(root)

    def write_params(self, params: dict) -> Config:
        self.paths.params.write_text(yaml.safe_dump(params, sort_keys=False))
        return parse_config(params)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    proj = Project(root)
    proj.write_params(small_params())
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proj.tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("PIPELINE_REPRO_ID", raising=False)
    # mlflow.set_registry_uri() exports MLFLOW_REGISTRY_URI, and tracking.configure
    # respects an exported one: without this, every later test shares the first
    # test's registry.
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield proj


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bare sqlite tracking store in tmp_path, the working directory: no project, as a
    user's own script or notebook has (the public API, the callback, `overfit`)."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    return tmp_path


# --------------------------------------------------------------------------- tiers

# The quick tier (`bash scripts/test.sh --quick`, i.e. `-m "not slow"`): no training, no
# dvc repro, no server, no browser (a stage subprocess that exits early is fine). A test
# that does any of these is marked `slow`; one that trains without the mark fails in the
# quick tier, naming it.
QUICK_TIER = "not slow"


# Fixtures that run dvc repro, train, or start a server or a browser: a test using one is
# slow whatever its own body does.
SLOW_FIXTURES = frozenset(
    {"pipeline_repo", "own_repo", "keras_models", "team_server", "tracking_server", "mlflow_ui"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        items[:] = worksteal_order(items, workers)


def worksteal_order(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The collection ordered for pytest-xdist's worksteal, which hands worker k the next
    len(rest) // (workers - k) tests in order and later lets an idle worker take the tail
    of the longest queue.

    Worker 0's share starts with the tests that need the shared repro'd repo (it builds
    it once; another worker needing it would wait on the lock doing nothing, 70 s
    measured), the others' with the remaining slow tests; every share ends with quick
    tests, so the last minutes balance in small steps instead of one worker finishing
    alone on a long test. Each group keeps the collection's order, which every worker
    computes the same (xdist requires identical collections)."""
    repo = [i for i in items if "pipeline_repo" in getattr(i, "fixturenames", ())]
    in_repo = {id(i) for i in repo}
    slow = [i for i in items if i.get_closest_marker("slow") and id(i) not in in_repo]
    quick = [i for i in items if not i.get_closest_marker("slow")]
    shares: list[list[pytest.Item]] = [repo] + [[] for _ in range(workers - 1)]
    for n, item in enumerate(slow):  # round-robin over the workers that build nothing
        shares[1 + n % (workers - 1)].append(item)
    left = len(items)
    for k, share in enumerate(shares):
        size = left // (workers - k)
        left -= size
        fill = max(0, size - len(share))
        share.extend(quick[:fill])
        del quick[:fill]
    return [item for share in shares for item in share] + quick


def in_quick_tier(config: pytest.Config) -> bool:
    return (config.getoption("markexpr", "") or "").strip() == QUICK_TIER


@pytest.fixture(autouse=True)
def _quick_tier_trains_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if not in_quick_tier(request.config):
        return

    def refuse(*args, **kwargs):
        pytest.fail(
            f"{request.node.nodeid} trains a model: mark it @pytest.mark.slow "
            "(the quick tier trains nothing)",
            pytrace=False,
        )

    from pipeline import fitting

    monkeypatch.setattr(fitting, "_fit", refuse)
    if "keras" in sys.modules:  # tests that fit a Keras model of their own
        monkeypatch.setattr(sys.modules["keras"].Model, "fit", refuse)


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
needs_fashion = pytest.mark.skipif(
    not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed"
)


def fashion_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` real Fashion-MNIST training images (uint8, n x 28 x 28 x 1), drawn at random."""
    from pipeline.datasets import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

    x = read_idx(FASHION / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC).astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    return x[idx][..., None], y[idx]


def digits_arrays(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's real digits as uint8 (n, size, size, 1) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    if size != 8:
        from PIL import Image

        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
        )
    return images[..., None], digits.target.astype(np.int64)


def make_prepared(
    out_dir: Path,
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    seed: int = 0,
    fractions: tuple[float, float] = (0.7, 0.15),
) -> None:
    """Write a prepared dataset from arrays with a stratified random split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    train_idx, rest = train_test_split(
        index, train_size=fractions[0], stratify=y, random_state=seed
    )
    val_share = fractions[1] / (1.0 - fractions[0])
    val_idx, test_idx = train_test_split(
        rest, train_size=val_share, stratify=y[rest], random_state=seed
    )
    parts = {"train": train_idx, "val": val_idx, "test": test_idx}
    rows = []
    arrays = {}
    for split in SPLITS:
        idx = np.sort(parts[split])
        arrays[split] = (x[idx], y[idx])
        for pos, i in enumerate(idx):
            pixels = x[i]
            rows.append(
                {
                    "id": f"img{i:05d}",
                    "path": f"/synthetic/{classes[y[i]]}/img{i:05d}.png",
                    "label": classes[y[i]],
                    "label_index": int(y[i]),
                    "split": split,
                    "source_split": "",
                    "width": x.shape[2],
                    "height": x.shape[1],
                    "mode": "L" if x.shape[3] == 1 else "RGB",
                    "bytes": int(pixels.nbytes),
                    "pixel_hash": __import__("hashlib").sha256(pixels.tobytes()).hexdigest(),
                    "phash": f"{i:016x}",
                    "pixel_mean": float(pixels.mean()),
                    "pixel_std": float(pixels.std()),
                    "status": "ok",
                    "error": "",
                    "array_index": pos,
                }
            )
    meta = {
        "classes": classes,
        "image_size": [int(x.shape[1]), int(x.shape[2])],
        "channels": int(x.shape[3]),
        "source": "synthetic",
        "format": "arrays",
    }
    write_prepared(out_dir, manifest_frame(rows), arrays, meta)


@pytest.fixture
def digits_prepared(project: Project) -> Project:
    """The project with data/prepared/ holding the real digits (8x8, 70/15/15)."""
    x, y = digits_arrays()
    make_prepared(project.paths.prepared_dir, x, y, [str(c) for c in range(10)])
    params = small_params(data={"image_size": [8, 8]})
    project.write_params(params)
    return project


def write_png_folder(
    root: Path,
    per_class: int = 5,
    classes: tuple[str, ...] = ("a", "b"),
    size: int = 8,
    seed: int = 0,
) -> Path:
    """A root/<class>/<png> folder of small distinct random images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i:03d}.png")
    return root


def copy_project_tree(dest: Path) -> Path:
    """The repo's pipeline code, dvc.yaml and params.yaml in `dest` (for dvc tests)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", ".dvc"):
        if (REPO / name).exists():
            shutil.copytree(
                REPO / name,
                dest / name,
                ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"),
            )
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    return dest


__all__ = [
    "pd",
    "Project",
    "small_params",
    "digits_arrays",
    "make_prepared",
    "write_png_folder",
    "copy_project_tree",
    "REPO",
]


# --------------------------------------------------------------------------- dvc

BIN = Path(sys.executable).parent


def dvc_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment `dvc` runs the stages in: this venv first, the repo's own MLflow."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # stages call `python -m ...`
    env.pop("MLFLOW_RUN_ID", None)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    return {**env, **extra}


def dvc(root: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run `dvc <args>` in `root`; `env` overrides variables (e.g. MLFLOW_TRACKING_URI)."""
    result = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=root,
        env=dvc_env(root, **env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def init_repo(root: Path, params: dict) -> Path:
    copy_project_tree(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.email", "t@example.com"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "t"], cwd=root, check=True)
    if not (root / ".dvc").exists():
        dvc(root, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=root, check=True)
    return root


# dvc.yaml's always-changed stages: they run on every `dvc repro` by design.
# The always_changed stages (fingerprints of things outside the repo: data.source,
# model.builder's file): they run on every repro and change nothing downstream.
ALWAYS_RUNS = {
    name
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
    if stage.get("always_changed")
}


def ran_stages(output: str) -> set[str]:
    """The stages `dvc repro` reran, not counting ALWAYS_RUNS."""
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    } - ALWAYS_RUNS


# --------------------------------------------------------------------------- shared helpers


def write_validation(project, success: bool = True, errors=(), warnings=()) -> None:
    """reports/validation.json (and the flags train reads), as validate writes them."""
    from pipeline.catalog.validation import write_validation as write

    checks = [
        {"name": "label_set", "success": True, "severity": "error", "observed": {}, "examples": []},
        {
            "name": "class_balance",
            "success": "class_balance" not in warnings,
            "severity": "warning",
            "observed": {},
            "examples": [],
        },
    ]
    report = {
        "success": success,
        "checks": checks,
        "warnings": list(warnings),
        "errors": list(errors),
    }
    write(project.paths, report)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    """Real IDX files: big-endian magic, dimension sizes, then unsigned bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    n, rows, cols = images.shape
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as handle:
        handle.write(struct.pack(">IIII", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as handle:
        handle.write(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def idx_folder(root: Path, gz: bool, n_train: int = 12, n_test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    write_idx(root, "train", rng.integers(0, 256, (n_train, 5, 4)), np.arange(n_train) % 3, gz)
    if n_test:
        write_idx(root, "t10k", rng.integers(0, 256, (n_test, 5, 4)), np.arange(n_test) % 3, gz)
    return root


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_holder(path: Path, pid: int, started_at: float, host: str | None = None) -> None:
    host = host or socket.gethostname()
    path.write_text(json.dumps({"pid": pid, "host": host, "started_at": started_at}))


STAMP_STAGE = textwrap.dedent(
    """\
    stages:
      stand_in:
        # Stands in for the pipeline; records the repro id it was given.
        cmd: >-
          python -c "import os; open('stamp.txt', 'w')
          .write(os.environ.get('PIPELINE_REPRO_ID', ''))"
        deps:
          - params.yaml
        outs:
          - stamp.txt:
              cache: false
    """
)


GOOD_TAGS = {
    "variant": "baseline",
    "verdict": "good_fit",
    "gap_accuracy": "0.02",
    "validation_success": "true",
}


def registry(project):
    import mlflow

    tracking.configure(project.paths)
    return mlflow.MlflowClient(), load_config(project.paths.params).registry.model_name


def save_mlflow_model(model, path: Path, sample=None) -> Path:
    """`model`'s weights saved as an MLflow model at `path` (signature from `sample`,
    default digits), without optimizer state: an unfit one's warns on every load."""
    import keras
    import mlflow
    from mlflow.models import infer_signature

    if sample is None:
        sample = digits_arrays()[0][:4].astype("float32")
    served = keras.models.clone_model(model)
    served.set_weights(model.get_weights())
    mlflow.keras.save_model(
        served,
        str(path),  # mlflow's keras flavour takes a str path only
        pip_requirements=["keras"],
        signature=infer_signature(sample, served.predict(sample, verbose=0)),
    )
    return path


def register(project, model_uri: Path | str, alias: str | None = None, **tags) -> str:
    """Register the MLflow model at `model_uri` (saved once) as a new version, tag it."""
    import mlflow

    from pipeline import tracking

    client, name = registry(project)
    version = mlflow.register_model(str(model_uri), name).version
    # Trained on the current data unless a test says otherwise: its test split is clean
    # for this version (no trained_on record, as before the records existed).
    current = {"data_version": tracking.data_version(project.paths)}
    for key, value in {**GOOD_TAGS, **current, **tags}.items():
        client.set_model_version_tag(name, version, key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


# --------------------------------------------------------------------------- a repro'd repo


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Path, str]:
    """A temp git repo where the real `dvc repro` ran the whole pipeline once, on a small
    slice of the configuration (digits at 8x8, two variants, two epochs); with its output.

    Built once per suite run: under pytest-xdist the first worker that needs it builds
    it while the other waits on a file lock, then both read the same repo. It is never
    written after that: a test that runs anything in it, dvc included, uses `own_repo`.
    """
    if worker_id == "master":  # no xdist
        return build_pipeline_repo(tmp_path_factory.mktemp("e2e") / "repo")
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "e2e-shared"
    done = shared / "repro-output.txt"
    with FileLock(f"{shared}.lock"):
        if not done.exists():
            root, output = build_pipeline_repo(shared / "repo")
            done.write_text(output)
    return shared / "repo", done.read_text()


def build_pipeline_repo(root: Path) -> tuple[Path, str]:
    params = small_params(
        data={"image_size": [8, 8]},
        variants={"baseline": {}, "dropout": {"model": {"dropout": 0.5}}},
    )
    params["train"]["epochs"] = 2
    init_repo(root, params)
    first = dvc(root, "repro")
    return root, first.stdout


@pytest.fixture
def own_repo(pipeline_repo, tmp_path: Path) -> Path:
    """A copy of the repro'd repo for a test that changes it; the shared one stays
    pristine, so no test depends on another having run first."""
    copy = tmp_path / "repo"
    shutil.copytree(pipeline_repo[0], copy, symlinks=True)
    return copy


def mount_tmpfs(where: Path, size: str) -> None:
    """A tmpfs of `size` (e.g. "3m") at `where`; skips the test where it cannot be mounted
    (root only). The caller unmounts it (`umount_tmpfs`)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


def umount_tmpfs(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "3m")
    try:
        yield disk
    finally:
        umount_tmpfs(disk)
