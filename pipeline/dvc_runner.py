"""The dvc subprocess: `dvc status --json` and `dvc repro` for the scheduled retrain.

`dvc status` cannot know what an `always_changed` stage (the `source`
fingerprint of data.source) would produce, and always lists it; so the retrain
first reruns those stages (`refresh`), then asks `dvc status`, which then sees
a changed source as a changed dependency of prepare, and ignores their
"always changed" entry.

The dvc command is ``$PIPELINE_DVC`` when set (tests point it at a fake dvc),
else this interpreter's ``python -m dvc``. Stages run with this interpreter's
bin dir first on PATH and the retrain's repro id in ``PIPELINE_REPRO_ID``, so
every MLflow run of one retrain shares one ``repro_id`` tag.

Inputs: dvc.yaml, dvc.lock and the workspace under `root`. Outputs: what
`dvc repro` writes; `dvc repro`'s output streams to ours.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.tracking import REPRO_ID_ENV

log = logging.getLogger(__name__)

DVC_ENV = "PIPELINE_DVC"


class DvcError(RuntimeError):
    """dvc could not be run, failed, or printed what cannot be parsed."""


def dvc_command() -> list[str]:
    """The dvc command: $PIPELINE_DVC when set, else this interpreter's `python -m dvc`."""
    override = os.environ.get(DVC_ENV, "").strip()
    return shlex.split(override) if override else [sys.executable, "-m", "dvc"]


def child_env(repro_id: str) -> dict[str, str]:
    """The environment for dvc: the repro id, and this interpreter's bin dir first on
    PATH so the stages' `python -m pipeline.<stage>` find this environment's packages
    even under cron's bare PATH."""
    env = dict(os.environ)
    env[REPRO_ID_ENV] = repro_id
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")]) if env.get("PATH") else bindir
    return env


ALWAYS_CHANGED = "always changed"


def parse_dvc_status(stdout: str) -> dict[str, Any]:
    """`dvc status --json` output -> {stage: changes}; {} means up to date.

    A stage whose only change is "always changed" is left out: it says nothing
    about whether anything would change.
    """
    text = stdout.strip()
    candidates = [text, *reversed(text.splitlines())]
    for candidate in candidates:
        try:
            parsed = json.loads(candidate or "{}")
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return {k: v for k, v in parsed.items() if v != [ALWAYS_CHANGED]}
    raise DvcError(f"cannot parse `dvc status --json` output: {text[:300]!r}")


def dvc_status(root: Path, dvc: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """`dvc status --json` in `root` -> {stage: changes}; {} means up to date."""
    cmd = [*dvc, "status", "--json"]
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise DvcError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise DvcError(f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return parse_dvc_status(done.stdout)


def always_changed_stages(root: Path) -> list[str]:
    """The stages dvc.yaml in `root` marks `always_changed`, in file order."""
    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise DvcError(f"cannot read {root / 'dvc.yaml'}: {exc}") from exc
    return [name for name, body in stages.items() if (body or {}).get("always_changed")]


def refresh(root: Path, dvc: Sequence[str], env: dict[str, str]) -> None:
    """Rerun the always-changed stages (and what they need), so that `dvc status`
    afterwards sees what they would change."""
    targets = always_changed_stages(root)
    if targets:
        dvc_repro(root, dvc, env, targets)


def dvc_repro(
    root: Path, dvc: Sequence[str], env: dict[str, str], targets: Sequence[str] = ()
) -> None:
    """Run `dvc repro [targets]`, its output streaming to ours."""
    cmd = [*dvc, "repro", *targets]
    log.info("running %s in %s", shlex.join(cmd), root)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        code = subprocess.run(cmd, cwd=root, env=env).returncode
    except OSError as exc:
        raise DvcError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
    if code != 0:
        raise DvcError(f"{shlex.join(cmd)} exited {code}; the champion was left as it was")
