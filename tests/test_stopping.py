"""pipeline.stopping: stop once overfitting is clear, replayed on every recorded real run.

The recordings (tests/data/known_truth and tests/data/sweep) are real training
runs with patience 12, some with no early stopping at all. Cutting each
history where the clear-overfitting stop would have ended it gives the run the
rule would have produced: the same epochs up to the cut, the same saved model
as long as the cut comes after the best epoch. The tests check that it always
does, and that every recorded verdict survives the cut.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pandas as pd
import pytest

from pipeline import fitting
from pipeline.config import parse_config
from pipeline.prepared import load_prepared
from pipeline.stopping import ClearOverfitStop

from . import known_truth as kt
from .conftest import small_params

EVALUATE = parse_config(small_params()).evaluate


def rows(val_loss, loss=None, acc=None, val_acc=None) -> pd.DataFrame:
    n = len(val_loss)
    return pd.DataFrame(
        {
            "epoch": np.arange(1, n + 1),
            "loss": loss if loss is not None else np.linspace(1.0, 0.1, n),
            "accuracy": acc if acc is not None else np.linspace(0.7, 0.99, n),
            "val_loss": val_loss,
            "val_accuracy": val_acc if val_acc is not None else np.full(n, 0.9),
            "learning_rate": np.full(n, 1e-3),
            "epoch_seconds": np.full(n, 1.0),
        }
    )


def diverging(n: int = 30, turn: int = 8, slope: float = 0.04) -> pd.DataFrame:
    """Val loss falls to epoch `turn`, then climbs `slope` nats an epoch; train keeps falling."""
    epochs = np.arange(1, n + 1)
    val = np.where(epochs <= turn, 0.6 - 0.03 * epochs, 0.6 - 0.03 * turn + slope * (epochs - turn))
    wobble = 0.002 * np.sin(epochs * 1.7)
    return rows(val + wobble)


def test_a_clear_divergence_stops_a_few_epochs_after_the_minimum():
    rule = ClearOverfitStop(EVALUATE, n_train=50_000, n_val=9_000)
    stop = rule.first_epoch(diverging())
    # 0.1 nats (clear_loss_rise) at 0.04 an epoch, read through a centred 5-epoch window,
    # and held for CONFIRM_EPOCHS epochs.
    assert stop is not None and 8 < stop <= 8 + 8


def test_a_plateau_never_stops_by_this_rule():
    epochs = np.arange(1, 41)
    settle = np.exp(-epochs / 3)
    wobble = 0.004 * np.sin(epochs * 2.1)
    # Both sides level off together: no rise, no widening gap (a regularized run).
    plateau = rows(
        0.3 + 0.3 * settle + wobble,
        loss=0.25 + 0.3 * settle,
        acc=0.93 - 0.2 * settle,
        val_acc=0.91 - 0.2 * settle + wobble,
    )
    rule = ClearOverfitStop(EVALUATE, n_train=50_000, n_val=9_000)
    assert rule.first_epoch(plateau) is None


def test_a_rise_within_the_val_loss_noise_does_not_stop():
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 41)
    # The same mild upward drift, buried in 0.15-nat epoch-to-epoch noise (a tiny val split).
    val = 0.5 + 0.004 * epochs + rng.normal(0, 0.15, len(epochs))
    flat = np.full(len(epochs), 0.85)
    rule = ClearOverfitStop(EVALUATE, n_train=300, n_val=60)
    assert rule.first_epoch(rows(val, acc=flat, val_acc=flat)) is None
    # The same drift on a quiet curve (a large val split) is clear.
    quiet = 0.5 + 0.004 * epochs + rng.normal(0, 0.002, len(epochs))
    assert rule.first_epoch(rows(quiet, acc=flat, val_acc=flat)) is not None


def test_pure_noise_rarely_stops_a_run():
    """The stop looks at every epoch: it must not be fooled where the verdict's single
    reading of the whole run sometimes is (a flat curve with 0.1-nat noise)."""
    rng = np.random.default_rng(1)
    flat = np.full(40, 0.85)
    stops = 0
    for _ in range(50):
        val = 0.5 + rng.normal(0, 0.1, 40)
        rule = ClearOverfitStop(EVALUATE, n_train=300, n_val=60)
        stops += rule.first_epoch(rows(val, acc=flat, val_acc=flat)) is not None
    assert stops <= 3


def test_nothing_is_read_before_one_smoothing_window():
    rule = ClearOverfitStop(EVALUATE, n_train=50_000, n_val=9_000)
    steep = rows(np.array([0.2, 0.1, 1.5, 3.0, 5.0]))
    assert len(steep) < rule.min_epochs
    assert not rule.clear(steep) and not rule.fires(steep)


def test_a_resumed_run_knows_the_rule_already_stopped_it():
    cfg = parse_config(small_params())
    vcfg = cfg.variant("baseline")
    history = diverging()
    rule = ClearOverfitStop(cfg.evaluate, n_train=50_000, n_val=9_000)
    stop = rule.first_epoch(history)
    records = history.iloc[:stop].to_dict("records")
    assert fitting.stopped_early(records, vcfg, rule)
    assert not fitting.stopped_early(records[:-1], vcfg, rule)
    # Without the rule (stop_on_clear_overfit off), only patience can have stopped it.
    assert not fitting.stopped_early(records, vcfg, None)


def test_the_switch_turns_the_rule_off():
    on = parse_config(small_params())
    off = parse_config(small_params(train={"early_stopping": {"stop_on_clear_overfit": False}}))

    class Data:
        def y(self, split):
            return np.zeros(100 if split == "train" else 20)

    assert fitting.stop_rule(on.variant("baseline"), Data(), on.evaluate) is not None
    assert fitting.stop_rule(off.variant("baseline"), Data(), off.evaluate) is None
    assert fitting.stop_rule(on.variant("baseline"), Data(), None) is None


# ------------------------------------------------------------- the recordings


ALL_RECORDINGS = kt.recordings() + kt.recordings(root=kt.SWEEP)


@functools.cache
def cut(path) -> tuple[kt.Recording, dict[str, int | None]]:
    """The recording, and per variant the epoch the rule stops its history at."""
    rec = kt.read_recording(path)
    stops = {}
    for name, art in rec.inputs["artifacts"].items():
        scores = rec.inputs["evaluations"][name].scores
        rule = ClearOverfitStop(rec.cfg.evaluate, scores["train"]["n"], scores["val"]["n"])
        stops[name] = rule.first_epoch(art.history)
    return rec, stops


def truncated(rec: kt.Recording, stops: dict[str, int | None]) -> kt.Recording:
    """The run the rule would have produced: each history cut at its stop epoch."""
    artifacts = dict(rec.inputs["artifacts"])
    for name, stop in stops.items():
        if stop is None:
            continue
        art = artifacts[name]
        metrics = {**art.train_metrics, "epochs_run": stop, "stopped_epoch": stop}
        history = art.history[art.history["epoch"] <= stop].reset_index(drop=True)
        artifacts[name] = dataclasses.replace(art, history=history, train_metrics=metrics)
    return dataclasses.replace(rec, inputs={**rec.inputs, "artifacts": artifacts})


@pytest.mark.parametrize("path", ALL_RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_stop_never_comes_before_the_best_epoch(path):
    """So the saved model, and every score the verdict reads of it, is the recorded one."""
    rec, stops = cut(path)
    for name, stop in stops.items():
        best = rec.inputs["artifacts"][name].train_metrics["best_epoch"]
        assert stop is None or stop > best, f"{name}: stops at {stop}, best epoch {best}"


@pytest.mark.parametrize("path", ALL_RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recorded_verdict_survives_the_earlier_stop(path):
    rec, stops = cut(path)
    full = kt.replay(rec)["variants"]
    short = kt.replay(truncated(rec, stops))["variants"]
    for name in full:
        assert short[name]["label"] == full[name]["label"], (
            f"{path.name}/{name}: stopped at epoch {stops[name]} of "
            f"{len(rec.inputs['artifacts'][name].history)}, the verdict moved from "
            f"{full[name]['label']!r} to {short[name]['label']!r}"
        )


def test_the_rule_saves_epochs_on_the_recordings():
    """Not a speed claim (benchmarks/bench_pipeline.py measures that): the rule fires on
    the recorded runs that diverge, and only after their best epoch."""
    saved, fired = 0, 0
    for path in ALL_RECORDINGS:
        rec, stops = cut(path)
        for name, stop in stops.items():
            if stop is not None:
                fired += 1
                saved += len(rec.inputs["artifacts"][name].history) - stop
    assert fired >= 10 and saved > 0


@pytest.mark.slow
def test_real_training_stops_once_memorization_is_clear(project):
    """Shuffled labels can only be memorized: with patience out of reach (50 epochs) only
    the clear-overfitting stop can end the run before the 40-epoch limit, and it must."""

    cfg = kt.train_for_real(
        project,
        {"baseline": {}},
        shuffle_labels=True,
        train={"epochs": 40, "early_stopping": {"patience": 50}},
    )
    metrics = json.loads(project.paths.train_metrics("baseline").read_text())
    assert metrics["stopped_by"] == fitting.STOPPED_BY_CLEAR_OVERFIT, metrics
    assert metrics["best_epoch"] < metrics["stopped_epoch"] == metrics["epochs_run"] < 40
    history = pd.read_csv(project.paths.history_csv("baseline"))
    assert len(history) == metrics["epochs_run"]
    # The stop is the rule's own reading of the recorded curve, epoch for epoch.
    data = load_prepared(project.paths.prepared_dir)
    rule = fitting.stop_rule(cfg.variant("baseline"), data, cfg.evaluate)
    assert rule is not None and rule.first_epoch(history) == metrics["epochs_run"]
