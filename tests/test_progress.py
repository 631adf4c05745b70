"""pipeline.progress: a bar on a terminal, one log line per step in a pipe or log."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline import progress


def test_off_a_terminal_each_step_is_one_log_line_and_no_bar(monkeypatch, caplog, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        seen = list(progress.steps(["baseline", "dropout"], "evaluate: scoring", "variant"))
    assert seen == ["baseline", "dropout"]
    assert [r.getMessage() for r in caplog.records] == [
        "evaluate: scoring baseline (1 of 2)",
        "evaluate: scoring dropout (2 of 2)",
    ]
    assert "\r" not in capsys.readouterr().err


def test_on_a_terminal_a_bar_counts_the_steps_and_names_the_current_one(monkeypatch, caplog):
    terminal = io.StringIO()
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    items = [("baseline", 1), ("dropout", 2)]
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        seen = list(progress.steps(items, "evaluate: scoring", "variant", label=lambda i: i[0]))
    assert seen == items
    drawn = terminal.getvalue()
    assert "evaluate: scoring" in drawn and "1/2" in drawn and "dropout]" in drawn
    assert not caplog.records  # the bar replaces the log lines


def test_a_failing_step_stops_the_loop_and_propagates(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    done = []
    with pytest.raises(ValueError):
        for item in progress.steps([1, 2, 3], "validate: checking", "table"):
            if item == 2:
                raise ValueError("bad table")
            done.append(item)
    assert done == [1]
