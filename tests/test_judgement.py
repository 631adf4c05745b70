"""pipeline.judgement: is there anything to judge? Decision tags, fingerprint, aliases."""

from __future__ import annotations

import pytest

from pipeline import judgement
from pipeline.judgement import NoChallengerError, needs_judgement

from .conftest import retrain_config

CFG = retrain_config()
FINGERPRINT = judgement.gates_fingerprint(CFG)
UNCHANGED = "data, params and code unchanged; "


def test_gates_fingerprint_follows_gates_not_the_lock():
    base = judgement.gates_fingerprint(CFG)
    assert judgement.gates_fingerprint(CFG.model_copy(update={"lock_stale_seconds": 5})) == base
    assert judgement.gates_fingerprint(CFG.model_copy(update={"max_gap": 0.2})) != base


def test_earlier_judgement_skips_only_a_matching_decision():
    fingerprint = judgement.gates_fingerprint(CFG)
    rejected = judgement.judgement_tags(
        "rejected", ["gap: too large", "validation: failed"], None, fingerprint, "r1"
    )
    reasons = judgement.earlier_judgement(rejected, None, fingerprint)
    assert "already rejected by retrain r1 (against no champion" in reasons[0]
    assert reasons[1:] == ["gap: too large", "validation: failed"]
    # Judged again: a champion appeared, the gates changed, or it was never judged.
    assert judgement.earlier_judgement(rejected, "4", fingerprint) is None
    assert judgement.earlier_judgement(rejected, None, "0" * 12) is None
    assert judgement.earlier_judgement({"variant": "baseline"}, None, fingerprint) is None
    failed = {**rejected, judgement.DECISION_TAG: "failed"}
    assert judgement.earlier_judgement(failed, None, fingerprint) is None
    against_4 = judgement.judgement_tags("rejected", [], "4", fingerprint, "r2")
    assert "against champion v4" in judgement.earlier_judgement(against_4, "4", fingerprint)[0]
    # Once promoted (also by a retrain older than these tags): a rollback is kept.
    promoted = judgement.judgement_tags("promoted", [], "1", fingerprint, "r3")
    assert "moved since" in judgement.earlier_judgement(promoted, "1", "other")[0]
    legacy = {"promoted_at": "2026-01-01T00:00:00+00:00", "promoted_by_repro_id": "r0"}
    assert "retrain r0" in judgement.earlier_judgement(legacy, "1", fingerprint)[0]


def judge(aliases, tags=None, fingerprint=FINGERPRINT, reproduced=False):
    return needs_judgement(
        aliases, tags or {}, fingerprint, reproduced=reproduced, model_name="digits-cnn"
    )


def rejected_tags(champion: str | None, fingerprint: str = FINGERPRINT) -> dict[str, str]:
    return judgement.judgement_tags("rejected", ["gap: too large"], champion, fingerprint, "r1")


@pytest.mark.parametrize("reproduced", [False, True])
def test_an_undecided_challenger_is_judged_changed_or_not(reproduced):
    assert judge({"challenger": "4", "champion": "3"}, reproduced=reproduced) == (True, [])
    assert judge({"challenger": "4"}, reproduced=reproduced) == (True, [])
    assert judge({"challenger": "4", "champion": None}, reproduced=reproduced) == (True, [])


def test_only_a_champion_and_nothing_changed_is_up_to_date():
    assert judge({"champion": "3"}) == (False, [f"{UNCHANGED}champion is v3"])


def test_no_challenger_after_a_repro_is_an_error():
    with pytest.raises(NoChallengerError) as caught:
        judge({"champion": "3"}, reproduced=True)
    message = str(caught.value)
    assert "registered model 'digits-cnn' has no 'challenger' alias after dvc repro" in message
    assert "dvc repro -f evaluate" not in message


def test_no_alias_at_all_and_nothing_changed_names_the_forced_repro():
    with pytest.raises(NoChallengerError, match=r"dvc status is clean: `dvc repro -f evaluate`"):
        judge({})
    with pytest.raises(NoChallengerError, match="no 'challenger' alias;"):
        judge({"champion": None})


def test_the_champion_as_challenger_is_nothing_new():
    aliases = {"challenger": "3", "champion": "3"}
    assert judge(aliases) == (False, [f"{UNCHANGED}champion is v3"])
    assert judge(aliases, reproduced=True) == (
        False,
        ["no new challenger: v3 is already the champion"],
    )


def test_a_challenger_rejected_against_the_same_champion_and_gates_is_not_judged_again():
    todo, reasons = judge({"challenger": "4", "champion": "3"}, rejected_tags("3"))
    assert not todo
    assert reasons[0].startswith(f"{UNCHANGED}challenger v4 was already rejected by retrain r1")
    assert "against champion v3, same gates" in reasons[0]
    assert reasons[1:] == ["gap: too large"]
    todo, reasons = judge({"challenger": "4"}, rejected_tags(None), reproduced=True)
    assert not todo and reasons[0].startswith("challenger v4 was already rejected")


def test_a_rejected_challenger_is_judged_again_with_another_champion_or_other_gates():
    tags = rejected_tags("3")
    assert judge({"challenger": "4", "champion": "5"}, tags) == (True, [])
    assert judge({"challenger": "4"}, tags) == (True, [])  # the champion went away
    assert judge({"challenger": "4", "champion": "3"}, tags, fingerprint="0" * 12) == (True, [])


def test_a_promoted_challenger_is_never_judged_again_after_a_rollback():
    tags = judgement.judgement_tags("promoted", [], "2", FINGERPRINT, "r3")
    todo, reasons = judge({"challenger": "4", "champion": "2"}, tags, fingerprint="other")
    assert not todo
    assert "moved since (a rollback?); that choice is kept" in reasons[0]
