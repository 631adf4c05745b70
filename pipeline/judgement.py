"""Is there anything to judge? Retrain's memory of its decisions, pure.

A retrain's decision on a challenger is kept as tags on that model version
(`judgement_tags`: ``retrain_decision``, ``retrain_champion``,
``retrain_gates``, ``retrain_reasons``, ``retrain_repro_id``), not in
reports/retrain.json, so that a fresh CI checkout sharing the registry knows
it too. `needs_judgement` reads them back with the registry aliases and the
gate settings' fingerprint: nothing to judge when there is no challenger but a
champion and nothing changed, when the challenger is the champion, or when
retrain already decided on this challenger (`earlier_judgement`). A rejected
version is judged again only when the champion or the gate settings have
changed; a version once promoted is never re-promoted over a manual rollback.

Inputs: alias -> version of the registered model, the challenger version's
tags, params.yaml ``retrain``. Outputs: tags to set, and whether to judge with
the reasons why not. No I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from pipeline.config import RetrainConfig
from pipeline.tracking import CHALLENGER, CHAMPION

# Model-version tags holding a retrain's decision on that version (see `judgement_tags`).
DECISION_TAG = "retrain_decision"
JUDGED_AGAINST_TAG = "retrain_champion"  # champion version then, or NO_CHAMPION
GATES_TAG = "retrain_gates"  # gates_fingerprint of params.yaml `retrain` then
REASONS_TAG = "retrain_reasons"
DECIDED_BY_TAG = "retrain_repro_id"
NO_CHAMPION = "none"


class NoChallengerError(LookupError):
    """There is something to judge, but evaluate registered no challenger."""


def gates_fingerprint(cfg: RetrainConfig, accept_new_schema: bool = False) -> str:
    """Short hash of the gate settings: everything in params.yaml `retrain` but the lock's,
    and retrain's --accept-new-schema when given.

    params.yaml `retrain` is no DVC dependency, so `dvc status` cannot tell that a
    gate changed; this hash, kept with each decision, can.
    """
    settings = cfg.model_dump(mode="json", exclude={"lock_stale_seconds"})
    if accept_new_schema:  # absent otherwise: earlier decisions keep their fingerprint
        settings["accept_new_schema"] = True
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def judgement_tags(
    decision: str,
    reasons: Sequence[str],
    champion_version: str | None,
    fingerprint: str,
    repro_id: str,
) -> dict[str, str]:
    """The model-version tags that remember a retrain's decision on a challenger."""
    return {
        DECISION_TAG: decision,
        JUDGED_AGAINST_TAG: champion_version or NO_CHAMPION,
        GATES_TAG: fingerprint,
        REASONS_TAG: "\n".join(reasons)[:4000],
        DECIDED_BY_TAG: repro_id,
    }


def earlier_judgement(
    tags: Mapping[str, str], champion_version: str | None, fingerprint: str
) -> list[str] | None:
    """Why the challenger with these tags needs no new decision, or None when it does.

    A rejected version is judged again only when the champion or the gate
    settings differ from when it was rejected: the data, code and params it was
    scored on are the ones `dvc status` checks. A version once promoted is never
    judged again: it is not the champion now only because someone moved the
    alias (a rollback), and retrain must not undo that.
    """
    decision = tags.get(DECISION_TAG) or ("promoted" if "promoted_at" in tags else None)
    by = tags.get(DECIDED_BY_TAG) or tags.get("promoted_by_repro_id") or "?"
    if decision == "promoted":
        return [
            f"was promoted by retrain {by} and the champion alias has been moved "
            "since (a rollback?); that choice is kept"
        ]
    if decision != "rejected":
        return None
    if tags.get(JUDGED_AGAINST_TAG) != (champion_version or NO_CHAMPION):
        return None
    if tags.get(GATES_TAG) != fingerprint:
        return None
    against = f"champion v{champion_version}" if champion_version else "no champion"
    earlier = [r for r in (tags.get(REASONS_TAG) or "").split("\n") if r]
    return [
        f"was already rejected by retrain {by} (against {against}, same gates); "
        "it is judged again with another champion or other gates",
        *earlier,
    ]


def needs_judgement(
    aliases: Mapping[str, str | None],
    tags: Mapping[str, str],
    fingerprint: str,
    *,
    reproduced: bool,
    model_name: str,
) -> tuple[bool, list[str]]:
    """(True, []) when the challenger needs a decision, else (False, why retrain is up to date).

    Args:
        aliases: alias -> version of registered model `model_name` (a None
            version: no such alias).
        tags: the challenger version's tags ({} when there is no challenger).
        fingerprint: `gates_fingerprint` of the gate settings in force.
        reproduced: whether this retrain ran `dvc repro`. Without one, a
            champion without a challenger is up to date; with one, evaluate
            should have registered a challenger.

    Raises:
        NoChallengerError: there is no challenger alias after a repro, or no
            alias at all.
    """
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    unchanged = "" if reproduced else "data, params and code unchanged; "
    if challenger is None:
        if not reproduced and champion is not None:
            return False, [f"{unchanged}champion is v{champion}"]
        hint = "" if reproduced else " (dvc status is clean: `dvc repro -f evaluate`)"
        raise NoChallengerError(
            f"registered model {model_name!r} has no {CHALLENGER!r} alias"
            f"{' after dvc repro' if reproduced else ''}; "
            f"the evaluate stage registers it{hint}"
        )
    if challenger == champion:
        if unchanged:
            return False, [f"{unchanged}champion is v{champion}"]
        return False, [f"no new challenger: v{champion} is already the champion"]
    earlier = earlier_judgement(tags, champion, fingerprint)
    if earlier is not None:
        # Scoring it again would only repeat the decision (and an MLflow run) every hour.
        return False, [f"{unchanged}challenger v{challenger} {earlier[0]}", *earlier[1:]]
    return True, []
