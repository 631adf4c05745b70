"""Scheduled retraining: lock -> dvc status -> dvc repro -> gate -> promote.

Run from the project root by cron, a systemd timer or CI as
``python -m pipeline.retrain`` (see deploy/ and the README). One run:

1. takes ``retrain.lock`` (`pipeline.lock`); a live retrain is never overlapped;
2. reruns the always-changed ``source`` stage (the fingerprint of data.source),
   asks ``dvc status --json`` whether data, params or code changed and only then
   runs ``dvc repro`` (`pipeline.dvc_runner`) under a fresh ``PIPELINE_REPRO_ID``,
   so every MLflow run of this retrain shares one ``repro_id`` tag;
3. stops up to date when there is nothing new to judge (`pipeline.judgement`):
   the challenger is the champion, retrain already decided on it, or nothing
   changed and there is only a champion. A challenger nobody decided on yet
   (e.g. from a manual ``dvc repro``) is judged even when nothing changed;
4. scores challenger and champion on the current test split, applies the gates
   of params.yaml ``retrain`` and moves alias ``champion`` only when all pass
   (`pipeline.promotion`, `pipeline.gates`);
5. writes reports/retrain.json, and an MLflow run unless there was nothing to
   do (`pipeline.outcome`).

Any failure after the lock (dvc fails, a model does not load, MLflow is down)
leaves the champion alias untouched and writes decision ``failed``.

Inputs: params.yaml (``retrain``, ``registry``, ``mlflow``), dvc.yaml and
dvc.lock, data/prepared/ (test split), reports/validation.json,
reports/evaluation.json, the registry aliases. Outputs: reports/retrain.json,
the ``champion`` alias and the challenger's decision tags, an MLflow run,
retrain.lock.

Exit codes (distinct, so a scheduler can tell outcomes apart):

    0   up to date: no new challenger, or one already decided on; nothing promoted
    1   failed: a step failed; champion untouched; see reports/retrain.json
    2   user error: invalid params.yaml or similar (pipeline.cli)
    3   promoted: the challenger is the new champion
    4   rejected: the challenger failed a gate; the champion (if any) stays
    75  locked (EX_TEMPFAIL): another retrain holds retrain.lock; try later

``--exit-zero`` maps 3 and 4 to 0 for launchers that treat any non-zero code
as a failed job (the MLproject entry point uses it). ``PIPELINE_DVC``
overrides the dvc command (default: this interpreter's ``python -m dvc``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Sequence

from pipeline import dvc_runner, promotion, tracking
from pipeline.cli import StageError, UserError, run_stage
from pipeline.config import Config, load_config
from pipeline.judgement import NoChallengerError, gates_fingerprint, needs_judgement
from pipeline.lock import LockHeldError, retrain_lock
from pipeline.outcome import (
    EXIT_LOCKED,
    EXIT_PROMOTED,
    EXIT_REJECTED,
    Outcome,
    RetrainError,
    now,
    record_outcome,
)
from pipeline.paths import Paths

log = logging.getLogger(__name__)

# Expected failures, whose message is written for the reader: logged as that one
# line. Others (bugs) get their type's name and a traceback.
EXPLAINED_FAILURES = (RetrainError, dvc_runner.DvcError, NoChallengerError, UserError)


def run_retrain(
    paths: Paths, cfg: Config, dvc: Sequence[str] | None = None, accept_new_schema: bool = False
) -> Outcome:
    """Steps 2-5 (the lock is the caller's). Never raises for a step failure:
    the outcome is then "failed" with the reason, and the champion is untouched."""
    repro_id = uuid.uuid4().hex[:12]
    outcome = Outcome(
        decision="failed", model_name=cfg.registry.model_name, repro_id=repro_id, started_at=now()
    )
    os.environ[tracking.REPRO_ID_ENV] = repro_id  # our own MLflow run shares it
    try:
        _run_steps(paths, cfg, list(dvc or dvc_runner.dvc_command()), outcome, accept_new_schema)
    except Exception as exc:  # any step: record it, never half-promote
        outcome.decision = "failed"
        explained = isinstance(exc, EXPLAINED_FAILURES)
        outcome.reasons = [str(exc) if explained else f"{type(exc).__name__}: {exc}"]
        if not explained:  # main() prints an expected failure's one line
            log.exception("retrain failed")
    outcome.finished_at = now()
    record_outcome(paths, cfg, outcome)
    return outcome


def _run_steps(
    paths: Paths, cfg: Config, dvc: list[str], outcome: Outcome, accept_new_schema: bool = False
) -> None:
    """dvc status, dvc repro when something changed, then judge and promote if there is
    anything new to judge; fills `outcome`."""
    env = dvc_runner.child_env(outcome.repro_id)
    dvc_runner.refresh(paths.root, dvc, env)
    outcome.dvc_changes = dvc_runner.dvc_status(paths.root, dvc, env)
    tracking.configure(paths)
    name = cfg.registry.model_name
    aliases = tracking.registered_aliases(name)
    champion = outcome.champion_version_after = aliases.get(tracking.CHAMPION)
    if outcome.dvc_changes:
        log.info("changed stages: %s", ", ".join(outcome.dvc_changes))
        dvc_runner.dvc_repro(paths.root, dvc, env)
        outcome.reproduced = True
        # Judged against the champion resolved before the repro: one run, one champion.
        aliases = {**tracking.registered_aliases(name), tracking.CHAMPION: champion}
    challenger = aliases.get(tracking.CHALLENGER)
    version = tracking.model_version(name, challenger) if challenger else None
    fingerprint = gates_fingerprint(cfg.retrain, accept_new_schema)
    tags = dict(version.tags or {}) if version is not None else {}
    todo, reasons = needs_judgement(
        aliases, tags, fingerprint, reproduced=outcome.reproduced, model_name=name
    )
    if not todo:
        outcome.decision, outcome.reasons = "up_to_date", reasons
        return
    promotion.judge(paths, cfg, version, champion, outcome, accept_new_schema)
    promotion.promote_or_keep(cfg, champion, fingerprint, outcome)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one switch; the exit codes are in the epilog."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.retrain",
        description="Scheduled retraining: lock, dvc status, dvc repro, gate the challenger "
        "against the champion, promote or record why not (reports/retrain.json).",
        epilog="exit codes: 0 up to date | 1 failed (champion untouched) | 2 user error "
        "(params.yaml) | 3 promoted | 4 rejected (champion kept) | 75 locked (another retrain "
        f"is running). Environment: {dvc_runner.DVC_ENV} overrides the dvc command.",
    )
    parser.add_argument(
        "--accept-new-schema",
        action="store_true",
        help="promote a challenger whose input shape or classes differ from the champion's "
        "(otherwise refused: the champion's clients would break); every other gate still "
        "applies",
    )
    parser.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 instead of 3 (promoted) or 4 (rejected), for launchers that treat any "
        "non-zero code as a failed job; failures and lock contention keep their codes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Lock, run the retrain, print one line; returns the exit code (module doc)."""
    args = build_parser().parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    if not (paths.root / "dvc.yaml").exists():
        raise StageError(f"{paths.root / 'dvc.yaml'} not found; run retrain from the project root")
    try:
        with retrain_lock(paths.retrain_lock, cfg.retrain.lock_stale_seconds):
            outcome = run_retrain(paths, cfg, accept_new_schema=args.accept_new_schema)
    except LockHeldError as exc:
        print(f"retrain: locked, nothing done: {exc} (exit {EXIT_LOCKED})", file=sys.stderr)
        return EXIT_LOCKED
    summary = "; ".join(outcome.reasons) or outcome.decision
    print(
        f"retrain: {outcome.decision.replace('_', ' ')}: {summary} "
        f"-> {paths.retrain_json} (exit {outcome.exit_code})",
        file=sys.stderr if outcome.decision == "failed" else sys.stdout,
    )
    if args.exit_zero and outcome.exit_code in (EXIT_PROMOTED, EXIT_REJECTED):
        return 0
    return outcome.exit_code


if __name__ == "__main__":
    run_stage(main, tensorflow=True)
