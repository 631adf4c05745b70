"""Benchmark: the whole default pipeline (`dvc repro`) on Fashion-MNIST, or a subset of it.

Copies this working tree into a temp folder (git init + commit there, so DVC
has its repository), writes a stratified subset of Fashion-MNIST's IDX files
(a fixed share of the train file and of the t10k file, every class in
proportion; `--subset 0` uses all 70,000 images as they are), points
params.yaml at it (28x28, `split_leakage: warning`, plus any `--set` override)
and times a real `dvc repro` with MLflow logging to the clone's sqlite store.

While the stages run, a sampler follows dvc's process tree every 0.2 s: each
stage's wall time (first to last sight of its `python -m pipeline.<stage>`)
and its peak RSS (the stage process and its children, summed).

Then, in one more process (one TensorFlow start-up), a bare `model.fit` per
training stage on the same prepared arrays: the same model (the variant's
builder and seed), batch size, learning rate and epoch count as the stage
ran, with the val split as validation_data, no callbacks, no MLflow. The ratio
is the training stages' summed wall time (start-up, checkpoints, MLflow, the
scoring at the end: everything a stage does) over the bare fits' sum.

The projection to all 70,000 images (printed with its terms):
- a training stage = its time outside the epochs (start-up, MLflow, model
  logging, final scoring: counted as fixed) + its epochs' seconds x the image
  ratio, at the epoch count of the subset run; early stopping decides how many
  epochs the full data takes, so the line says so;
- digits and source: as measured (neither depends on the images' number);
- every other stage (prepare, validate, evaluate, report: 70 s in all on the
  full data when last timed) = as measured on the subset; the upper bound
  takes its imports (a fresh `python -c 'import ...'`) as fixed and the rest
  as linear in the images.

Prints a per-stage table, the bare-fit comparison, the CPU (model, bf16 and
AMX flags), and, last, one JSON line with wall_s, bare_fit_s, ratio,
best_small_test_accuracy (the best test accuracy of a variant under 100K
parameters), projected_full_wall_s, subset, cpu and the per-stage figures.

Inputs: /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
Outputs: stdout; --json-out also writes the last line to a file; --keep
keeps the temp project (its MLflow UI, reports) and prints where it is.

Run: .venv/bin/python benchmarks/bench_pipeline.py --subset 3500
     .venv/bin/python benchmarks/bench_pipeline.py --subset 7000 --set train.batch_size=256
     .venv/bin/python benchmarks/bench_pipeline.py --subset 0 --no-bare \
         --params examples/params-fashion.yaml --variants baseline,compact
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
FULL_IMAGES = 70_000
SMALL_PARAMS = 100_000  # "a variant under 100K parameters"
SAMPLE_SECONDS = 0.2
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# ------------------------------------------------------------------ the machine


def cpu_info() -> dict[str, Any]:
    """CPU model, logical cores and the flags that decide bf16 speed."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx_vnni")
    return {
        "model": model,
        "cores": os.cpu_count(),
        "flags": {flag: flag in flags for flag in wanted},
    }


# ------------------------------------------------------------------ the subset


def write_idx(path: Path, array) -> None:
    """An MNIST-style IDX file of unsigned bytes, gzipped."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + array.tobytes())


def stratified_rows(labels, keep: int, seed: int):
    """Sorted rows: `keep` of them, each class in proportion (largest remainders)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * keep / len(labels)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: keep - int(take.sum())]:
        take[i] += 1
    rows = [
        rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(rows))


def write_subset(out: Path, subset: int, seed: int) -> dict[str, int]:
    """The same share of Fashion-MNIST's train and t10k files, stratified; {file: images}."""
    sys.path.insert(0, str(REPO))
    from pipeline.datasets import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

    out.mkdir(parents=True)
    counts = {}
    for prefix, (images_name, labels_name) in IDX_FILES.items():
        x = read_idx(FASHION / images_name, IDX_IMAGES_MAGIC)
        y = read_idx(FASHION / labels_name, IDX_LABELS_MAGIC)
        rows = stratified_rows(y, round(len(y) * subset / FULL_IMAGES), seed)
        write_idx(out / images_name, x[rows])
        write_idx(out / labels_name, y[rows])
        counts[prefix] = len(rows)
    return counts


# ------------------------------------------------------------------ the project


def copy_project(dest: Path) -> str:
    """This working tree's files (tracked and untracked, not ignored) in a new git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "bench"], cwd=dest, check=True)
    return head + ("+uncommitted" if dirty else "")


def parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def configure(
    project: Path,
    source: Path,
    overrides: list[str],
    params_file: Path | None = None,
    variants: list[str] | None = None,
) -> dict[str, Any]:
    """params.yaml (the project's, or `params_file`) pointed at the Fashion-MNIST files,
    with --set overrides applied, then its variants cut to `variants` when given."""
    import yaml

    path = params_file or project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    missing = [
        k
        for k in ("data", "validate", "variants", "learning_curve")
        if not isinstance(params, dict) or not isinstance(params.get(k), dict)
    ]
    if missing:
        raise SystemExit(f"{path}: not a whole params.yaml: no section {', '.join(missing)}")
    params["data"].update(source=str(source), format="idx", image_size=[28, 28])
    params["validate"].setdefault("severity", {})["split_leakage"] = "warning"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key.path=value")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--set {item!r}: params.yaml has no section {part!r}")
            node = node[part]
        node[leaf] = parse_value(value)
    if variants:
        unknown = [name for name in variants if name not in params["variants"]]
        if unknown:
            raise SystemExit(
                f"--variants {', '.join(map(repr, unknown))}: not in the params' variants "
                f"({', '.join(params['variants'])})"
            )
        kept = params["learning_curve"].get("variant")
        if kept not in variants:
            raise SystemExit(
                f"--variants must keep learning_curve.variant {kept!r}, "
                "which the learning-curve stages train"
            )
        params["variants"] = {k: v for k, v in params["variants"].items() if k in variants}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


# ------------------------------------------------------------------ the sampler


def stage_key(cmdline: list[str]) -> str | None:
    """`python -m pipeline.train --variant X [--fraction F]` -> 'train@X' / 'learning_curve@F'."""
    if "-m" not in cmdline:
        return None
    module = cmdline[cmdline.index("-m") + 1] if cmdline.index("-m") + 1 < len(cmdline) else ""
    if not module.startswith("pipeline."):
        return None
    stage = module.split(".", 1)[1]

    def flag(name: str) -> str | None:
        return cmdline[cmdline.index(name) + 1] if name in cmdline[:-1] else None

    if flag("--fraction"):
        return f"learning_curve@{flag('--fraction')}"
    if flag("--variant"):
        return f"{stage}@{flag('--variant')}"
    return stage


@dataclass
class StageSample:
    first: float
    last: float
    peak_rss: int = 0


@dataclass
class Sampler:
    """Each stage's first and last sighting and peak RSS, from dvc's process tree."""

    root_pid: int
    stages: dict[str, StageSample] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.root_pid)
        roots: dict[int, str | None] = {}
        while not self.stop.is_set():
            now, rss = time.perf_counter(), {}
            try:
                procs = root.children(recursive=True)
            except psutil.Error:
                break
            for proc in procs:
                try:
                    key = self._owner(proc, roots)
                    if key:
                        rss[key] = rss.get(key, 0) + proc.memory_info().rss
                except psutil.Error:
                    continue
            for key, total in rss.items():
                sample = self.stages.setdefault(key, StageSample(now, now))
                sample.last, sample.peak_rss = now, max(sample.peak_rss, total)
            self.stop.wait(SAMPLE_SECONDS)

    def _owner(self, proc, roots: dict[int, str | None]) -> str | None:
        if proc.pid not in roots:
            roots[proc.pid] = stage_key(proc.cmdline())
            if roots[proc.pid] is None:
                for parent in proc.parents():
                    if parent.pid in roots and roots[parent.pid]:
                        roots[proc.pid] = roots[parent.pid]
                        break
        return roots[proc.pid]


def run_repro(project: Path, log: Path) -> tuple[float, dict[str, StageSample]]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=out, stderr=out)
        sampler = Sampler(proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        code = proc.wait()
    wall = time.perf_counter() - start
    sampler.stop.set()
    thread.join()
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"dvc repro failed (exit {code}); the end of {log}:\n{tail}")
    return wall, sampler.stages


def import_seconds(project: Path, modules: str) -> float:
    """Wall time of a fresh `python -c 'import <modules>'`: a stage's fixed start-up."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", f"import {modules}"],
        cwd=project,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


# ------------------------------------------------------------------ bare fits


def bare_fits(project: str, only: list[str] | None = None) -> dict[str, float]:
    """Run inside `project`: one bare model.fit per training stage (or per stage in
    `only`); {stage: seconds}."""
    os.chdir(project)
    sys.path.insert(0, project)
    import numpy as np

    from pipeline import precision
    from pipeline.config import load_config
    from pipeline.fitting import compile_model, set_determinism
    from pipeline.models import build_model
    from pipeline.paths import Paths
    from pipeline.prepared import load_prepared
    from pipeline.train_input import fraction_subset

    paths, cfg = Paths.here(), load_config(Path(project) / "params.yaml")
    full = load_prepared(paths.prepared_dir)
    n_classes = len(full.meta["classes"])
    x_val, y_val = np.asarray(full.x("val"), np.float32), full.y("val")
    jobs = [(f"train@{name}", name, full) for name in cfg.variants]
    lc = cfg.learning_curve
    for fraction in lc.fractions:
        key = f"learning_curve@{fraction:g}"
        jobs.append((key, lc.variant, fraction_subset(full, fraction, cfg.data.seed)))
    seconds = {}
    for key, name, data in jobs:
        record = stage_record(paths, key)
        if record is None or (only and key not in only):
            continue
        vcfg = cfg.variant(name)
        x, y = np.asarray(data.x("train"), np.float32), data.y("train")
        set_determinism(vcfg.train.seed)
        precision.apply(vcfg.train.precision)
        model = build_model(vcfg.model, x.shape[1:], n_classes, seed=vcfg.train.seed)
        compile_model(model, vcfg.train.learning_rate)
        start = time.perf_counter()
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            batch_size=vcfg.train.batch_size,
            epochs=record["epochs_run"],
            shuffle=True,
            verbose=0,
        )
        seconds[key] = time.perf_counter() - start
    return seconds


def stage_record(paths, key: str) -> dict[str, Any] | None:
    """A training stage's own figures: metrics.json, or result.json's `training`."""
    stage, _, name = key.partition("@")
    if stage == "train":
        path = paths.root / "models" / name / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else None
    for candidate in (paths.root / "models" / "learning_curve").glob("*/result.json"):
        result = json.loads(candidate.read_text())
        if f"{result['fraction']:g}" == name:
            return {**result["training"], "val_accuracy": result["val"]["accuracy"]}
    return None


def run_bare(project: Path, log: Path, only: list[str]) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # The project's own copy of this script, so it matches the pipeline code it imports
    # even when the working tree changes while the benchmark runs.
    with log.open("a") as err:
        out = subprocess.run(
            [
                sys.executable,
                str(project / "benchmarks" / Path(__file__).name),
                "--bare-fits",
                str(project),
                *(["--bare-stages", ",".join(only)] if only else []),
            ],  # fmt: skip
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    if out.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"bare fits failed (exit {out.returncode}):\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the report


def stage_rows(
    project: Path, samples: dict[str, StageSample], variants_metrics: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    from pipeline.paths import Paths

    paths = Paths(project)
    rows = {}
    for key, sample in sorted(samples.items(), key=lambda kv: kv[1].first):
        row: dict[str, Any] = {
            "wall_s": round(sample.last - sample.first, 1),
            "peak_rss_mb": round(sample.peak_rss / 2**20),
        }
        record = stage_record(paths, key) if "@" in key else None
        if record:
            row.update(
                epochs=record["epochs_run"],
                best_epoch=record["best_epoch"],
                train_s=round(record["train_seconds"], 1),
                s_per_epoch=round(record["train_seconds"] / record["epochs_run"], 2),
                params=record["params"],
                val_accuracy=record.get("val_accuracy", record["best_val_accuracy"]),
            )
            variant = key.partition("@")[2]
            if key.startswith("train@") and variant in variants_metrics:
                row["val_accuracy"] = variants_metrics[variant]["val_accuracy"]
                row["test_accuracy"] = variants_metrics[variant]["test_accuracy"]
                row["train_accuracy"] = variants_metrics[variant].get("train_accuracy")
                row["gap"] = variants_metrics[variant].get("gap")
                row["verdict"] = variants_metrics[variant].get("label")
        rows[key] = row
    return rows


# What a stage imports before it reads any data: its fixed start-up cost.
STAGE_IMPORTS = {
    "prepare": "pipeline.prepare, PIL.Image, numpy, pandas",
    "validate": "pipeline.validate, great_expectations, pandas",
    "evaluate": "pipeline.evaluate, tensorflow, keras, mlflow, matplotlib.pyplot",
    "report": "pipeline.report, jinja2",
}
UNSCALED = ("digits", "source")  # the embedded digits, and a hash of 4 IDX files


def project_full(
    rows: dict[str, dict[str, Any]], imports: dict[str, float], image_ratio: float
) -> tuple[float, float, list[str]]:
    """Projected wall time on all 70,000 images (and an upper bound), with one line per
    stage saying how.

    A training stage: everything outside its epochs (start-up, MLflow, model
    logging, the final scoring) is counted as fixed, its epochs' seconds scale
    with the images. Any other stage: as measured, and for the upper bound its
    imports fixed and the rest linear in the images (their per-run work, figures
    and MLflow logging, does not grow with the images, so the truth is nearer
    the lower figure).
    """
    total, upper, how = 0.0, 0.0, []
    for key, row in rows.items():
        stage = key.partition("@")[0]
        if "train_s" in row:
            fixed = row["wall_s"] - row["train_s"]
            projected = bound = fixed + row["train_s"] * image_ratio
            what = (
                f"{fixed:5.1f} s outside epochs + {row['train_s']:.1f} s of epochs "
                f"x {image_ratio:.2f} = {projected:7.1f} s"
            )
        else:
            fixed = min(imports.get(stage, row["wall_s"]), row["wall_s"])
            projected, bound = row["wall_s"], fixed + (row["wall_s"] - fixed) * image_ratio
            what = f"{projected:5.1f} s as measured, at most {bound:.1f} s"
            if stage in UNSCALED:
                bound, what = projected, f"{projected:5.1f} s, independent of the images"
        how.append(f"  {key:24s} {what}")
        total, upper = total + projected, upper + bound
    return total, upper, how


def _cell(row: dict[str, Any], name: str, fmt: str, width: int) -> str:
    return format(row[name], fmt).rjust(width) if name in row else "-".rjust(width)


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'stage':24s} {'wall s':>7s} {'epochs':>6s} {'best':>4s} {'s/epoch':>7s} "
        f"{'params':>8s} {'val acc':>7s} {'test acc':>8s} {'peak RSS MB':>11s}  verdict"
    )
    lines = [head]
    for key, r in rows.items():
        lines.append(
            f"{key:24s} {r['wall_s']:7.1f} {_cell(r, 'epochs', 'd', 6)} "
            f"{_cell(r, 'best_epoch', 'd', 4)} {_cell(r, 's_per_epoch', '.2f', 7)} "
            f"{_cell(r, 'params', ',d', 8)} {_cell(r, 'val_accuracy', '.4f', 7)} "
            f"{_cell(r, 'test_accuracy', '.4f', 8)} {r['peak_rss_mb']:11d}  "
            f"{r.get('verdict') or ''}"
        )
    return "\n".join(lines)


@dataclass
class Measured:
    commit: str
    wall: float
    rows: dict[str, dict[str, Any]]
    imports: dict[str, float]
    bare: dict[str, float]
    variants: list[str]


def measure(args: argparse.Namespace, cpu: dict[str, Any]) -> Measured:
    """Copy the project, write the subset, run dvc repro and the bare fits."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline."))
    project, log = tmp / "project", tmp / "repro.log"
    project.mkdir()
    try:
        commit = copy_project(project)
        if args.subset:
            source = tmp / "fashion-subset"
            counts = write_subset(source, args.subset, args.seed)
        else:
            source, counts = FASHION, {"train": 60_000, "t10k": 10_000}
        variants = list(
            configure(project, source, args.set, args.params, args.variants)["variants"]
        )
        subprocess.run(
            ["git", "-c", "user.name=b", "-c", "user.email=b@l", "commit", "-qam", "params"],
            cwd=project,
            check=True,
        )
        print(
            f"Fashion-MNIST {'subset ' + str(args.subset) if args.subset else 'all'}: "
            f"{counts['train']} from the train file, {counts['t10k']} from t10k; "
            f"project {commit}; params {args.params or 'params.yaml'}; "
            f"variants {','.join(args.variants) or 'all'}; overrides {args.set or 'none'}"
        )
        print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {cpu['flags']}", flush=True)
        wall, samples = run_repro(project, log)
        variants_metrics = json.loads((project / "reports" / "metrics.json").read_text())
        rows = stage_rows(project, samples, variants_metrics)
        imports = {
            stage: import_seconds(project, modules) for stage, modules in STAGE_IMPORTS.items()
        }
        print(table(rows), flush=True)
        bare = {} if args.no_bare else run_bare(project, log, args.bare_stages)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return Measured(commit, wall, rows, imports, bare, variants)


def report(args: argparse.Namespace, cpu: dict[str, Any], m: Measured) -> dict[str, Any]:
    """Print the table, the bare-fit ratio and the projection; return the JSON result."""
    n_images = args.subset or FULL_IMAGES
    rows, bare = m.rows, m.bare
    train_keys = [k for k in rows if k.startswith(("train@", "learning_curve@"))]
    train_wall = sum(rows[k]["wall_s"] for k in train_keys)
    bare_s = sum(bare.values())
    # The ratio compares like with like: the stages that have a bare fit.
    compared = sum(rows[k]["wall_s"] for k in bare if k in rows)
    ratio = compared / bare_s if bare_s else None
    print(f"dvc repro wall: {m.wall:.1f} s; training stages {train_wall:.1f} s")
    if bare:
        print(f"bare model.fit, same model/batch/epochs, summed: {bare_s:.1f} s")
        for key in train_keys:
            if key in bare:
                print(f"  {key:24s} stage {rows[key]['wall_s']:7.1f} s  bare {bare[key]:7.1f} s")
        which = "training stages" if len(bare) == len(train_keys) else ", ".join(bare)
        print(f"ratio, {which} / bare fits: {ratio:.3f} (target <= 1.10)")
    floor, floor_how = early_stopping_floor(m.wall, rows, train_keys)
    print(floor_how)
    image_ratio = FULL_IMAGES / n_images
    projected, upper, how = project_full(rows, m.imports, image_ratio)
    print(
        f"projection to {FULL_IMAGES} images: {projected:.0f} s ({projected / 60:.1f} min), "
        f"at most {upper:.0f} s ({upper / 60:.1f} min). "
        "A training stage's time outside its epochs is fixed and its epochs scale with "
        f"the images (x {image_ratio:.2f}), at the epoch counts of this run, which early "
        "stopping may change on more data; another stage counts as measured, and at "
        "most its imports (a fresh python -c 'import ...') plus the rest x the ratio:"
    )
    print("\n".join(how))
    small = [
        r["test_accuracy"]
        for r in rows.values()
        if r.get("params", SMALL_PARAMS) < SMALL_PARAMS and "test_accuracy" in r
    ]
    return {
        "subset": args.subset,
        "images": n_images,
        "params": str(args.params or "params.yaml"),
        "variants": m.variants,
        "overrides": args.set,
        "commit": m.commit,
        "wall_s": round(m.wall, 1),
        "training_stages_s": round(train_wall, 1),
        "bare_fit_s": round(bare_s, 1) if bare else None,
        "ratio": round(ratio, 3) if ratio else None,
        "best_small_test_accuracy": max(small) if small else None,
        "bare_stages": sorted(bare),
        "floor_s": round(floor, 1),
        "projected_full_wall_s": round(projected),
        "projected_full_wall_upper_s": round(upper),
        "cpu": cpu,
        "stages": rows,
    }


def early_stopping_floor(
    wall: float, rows: dict[str, dict[str, Any]], train_keys: list[str]
) -> tuple[float, str]:
    """The wall time had every fit stopped at its best epoch, with no epoch spent
    confirming it: no stopping rule can do better with these models, batches and
    learning rates. Each stage's epochs after the best are taken off at its s/epoch."""
    after = {
        k: (rows[k]["epochs"] - rows[k]["best_epoch"]) * rows[k]["s_per_epoch"]
        for k in train_keys
        if {"epochs", "best_epoch", "s_per_epoch"} <= rows[k].keys()
    }
    floor = wall - sum(after.values())
    spent = sum(rows[k]["epochs"] - rows[k]["best_epoch"] for k in train_keys if k in after)
    return floor, (
        f"floor, had every fit stopped at its best epoch: {floor:.1f} s "
        f"({spent} epochs after a best one cost {sum(after.values()):.1f} s)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subset",
        type=int,
        help="required: images in all, train and t10k files in the same share, "
        "stratified; 0 = all 70,000",
    )
    parser.add_argument("--seed", type=int, default=0, help="which subset")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml override, e.g. train.batch_size=256 (repeatable)",
    )
    parser.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help="start from this params file instead of the project's params.yaml "
        "(e.g. examples/params-fashion.yaml); data.source is still the Fashion-MNIST files",
    )
    parser.add_argument(
        "--variants",
        type=lambda text: [k.strip() for k in text.split(",") if k.strip()],
        default=[],
        metavar="NAME,NAME",
        help="train only these variants (e.g. baseline,compact); must keep learning_curve.variant",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare fits")
    parser.add_argument(
        "--bare-stages",
        type=lambda text: [k for k in text.split(",") if k],
        default=[],
        metavar="KEY,KEY",
        help="bare fits for these stages only (e.g. train@baseline,train@small), "
        "to measure the ratio at full size in less time",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp project")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    parser.add_argument("--bare-fits", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subset is None and not args.bare_fits:
        parser.error("--subset N is required (0 = all 70,000 images)")
    return args


def main() -> int:
    args = parse_args()
    if args.bare_fits:
        print(json.dumps(bare_fits(args.bare_fits, args.bare_stages)))
        return 0
    if not (FASHION / IDX_FILES["train"][0]).exists():
        print(f"{FASHION}: not found; apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    if not 0 <= args.subset <= FULL_IMAGES or 0 < args.subset < 1000:
        print(f"--subset {args.subset}: 0 (all) or 1000 to {FULL_IMAGES}", file=sys.stderr)
        return 2
    if args.params and not args.params.is_file():
        print(f"--params {args.params}: no such file", file=sys.stderr)
        return 2
    cpu = cpu_info()
    line = json.dumps(report(args, cpu, measure(args, cpu)))
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
