"""pipeline.gates: every promotion gate, decide, and the facts the gates read."""

from __future__ import annotations

import pytest

from pipeline.gates import GateResult, ModelFacts, ValidationFacts, decide, gates, version_facts

from .conftest import retrain_config

CFG = retrain_config()
GOOD = ModelFacts(
    version="2", variant="dropout", test_accuracy=0.90, gap_accuracy=0.03, verdict="good_fit"
)
CHAMP = ModelFacts(
    version="1", variant="baseline", test_accuracy=0.88, gap_accuracy=0.05, verdict="good_fit"
)
VALID = ValidationFacts(success=True)


def by_name(results: list[GateResult]) -> dict[str, GateResult]:
    return {r.name: r for r in results}


def test_all_gates_pass_and_decide_promotes():
    results = gates(CFG, GOOD, CHAMP, VALID)
    assert [r.name for r in results] == [
        "validation",
        "not_overfitting",
        "accuracy_vs_champion",
        "gap",
        "schema",
    ]
    assert all(r.passed for r in results)
    assert decide(results) == ("promoted", [])


def test_no_champion_promotes_on_non_comparative_gates():
    results = by_name(gates(CFG, GOOD, None, VALID))
    assert results["accuracy_vs_champion"].passed
    assert not results["accuracy_vs_champion"].applied
    assert decide(list(results.values()))[0] == "promoted"


def test_validation_failure_blocks_and_names_checks():
    validation = ValidationFacts(success=False, errors=("split_leakage",), warnings=("duplicates",))
    decision, reasons = decide(gates(CFG, GOOD, CHAMP, validation))
    assert decision == "rejected"
    assert len(reasons) == 1
    assert reasons[0] == (
        "validation: data validation failed (errors: split_leakage; warnings: duplicates)"
    )


def test_missing_validation_report_blocks():
    gate = by_name(gates(CFG, GOOD, None, ValidationFacts(success=None)))["validation"]
    assert not gate.passed and "missing" in gate.reason


def test_validation_gate_off_lets_failed_validation_through():
    cfg = CFG.model_copy(update={"require_validation_success": False})
    gate = by_name(gates(cfg, GOOD, None, ValidationFacts(success=False)))["validation"]
    assert gate.passed and not gate.applied


def test_overfitting_verdict_blocks():
    challenger = ModelFacts(**{**GOOD.__dict__, "verdict": "overfitting"})
    decision, reasons = decide(gates(CFG, challenger, CHAMP, VALID))
    assert decision == "rejected"
    assert reasons == [
        "not_overfitting: challenger v2 (dropout): its saved model is diagnosed as overfitting"
    ]


def test_unknown_verdict_blocks_but_switch_off_allows_overfitting():
    unknown = ModelFacts(**{**GOOD.__dict__, "verdict": None})
    assert not by_name(gates(CFG, unknown, None, VALID))["not_overfitting"].passed
    overfit = ModelFacts(**{**GOOD.__dict__, "verdict": "overfitting"})
    cfg = CFG.model_copy(update={"reject_overfitting": False})
    assert by_name(gates(cfg, overfit, None, VALID))["not_overfitting"].passed


def test_accuracy_below_champion_minus_tolerance_blocks_with_numbers():
    challenger = ModelFacts(**{**GOOD.__dict__, "test_accuracy": 0.8699})
    gate = by_name(gates(CFG, challenger, CHAMP, VALID))["accuracy_vs_champion"]
    assert not gate.passed
    assert gate.limit == pytest.approx(0.87)
    assert "0.8699" in gate.reason and "0.8800" in gate.reason and "0.01" in gate.reason


def test_accuracy_within_tolerance_passes():
    challenger = ModelFacts(**{**GOOD.__dict__, "test_accuracy": 0.875})
    assert by_name(gates(CFG, challenger, CHAMP, VALID))["accuracy_vs_champion"].passed


def test_champion_that_cannot_read_the_data_is_not_compared():
    champion = ModelFacts(version="1", test_accuracy=None, note="expects (16, 16, 1)")
    gate = by_name(gates(CFG, GOOD, champion, VALID))["accuracy_vs_champion"]
    assert gate.passed and not gate.applied and "(16, 16, 1)" in gate.reason


def test_gap_too_large_or_unknown_blocks():
    wide = ModelFacts(**{**GOOD.__dict__, "gap_accuracy": 0.25})
    gate = by_name(gates(CFG, wide, CHAMP, VALID))["gap"]
    assert not gate.passed and "0.2500" in gate.reason and "0.1" in gate.reason
    unknown = ModelFacts(**{**GOOD.__dict__, "gap_accuracy": None})
    assert not by_name(gates(CFG, unknown, CHAMP, VALID))["gap"].passed


def test_every_failed_gate_is_reported():
    bad = ModelFacts(
        version="3", variant="large", test_accuracy=0.5, gap_accuracy=0.4, verdict="overfitting"
    )
    decision, reasons = decide(gates(CFG, bad, CHAMP, ValidationFacts(False)))
    assert decision == "rejected"
    assert [r.split(":")[0] for r in reasons] == [
        "validation",
        "not_overfitting",
        "accuracy_vs_champion",
        "gap",
    ]


def test_version_facts_prefers_tags_and_falls_back_to_evaluation():
    class Version:
        version, run_id = 5, "r1"
        tags = {"variant": "l2", "verdict": "good_fit"}

    evaluation = {"variants": {"l2": {"verdict": "overfitting", "gap": {"accuracy": 0.07}}}}
    facts = version_facts(Version(), evaluation)
    assert (facts.version, facts.verdict, facts.gap_accuracy) == ("5", "good_fit", 0.07)


def test_the_gate_judges_the_saved_model_not_the_run():
    """A run early stopping had to stop (verdict overfitting) with a sound saved model passes."""

    class Version:
        version, run_id = 6, "r2"
        tags = {"variant": "dropout", "verdict": "overfitting", "model_verdict": "good_fit"}

    facts = version_facts(Version(), None)
    assert facts.verdict == "good_fit"
    gate = gates(CFG, facts, CHAMP, VALID)[1]
    assert gate.name == "not_overfitting" and gate.passed
    Version.tags = {**Version.tags, "model_verdict": "overfitting"}
    assert not gates(CFG, version_facts(Version(), None), CHAMP, VALID)[1].passed


def test_switched_off_gates_say_which_setting_and_keep_the_observed_value():
    cfg = CFG.model_copy(update={"require_validation_success": False, "reject_overfitting": False})
    overfit = ModelFacts(**{**GOOD.__dict__, "verdict": "overfitting"})
    results = by_name(gates(cfg, overfit, None, ValidationFacts(success=False)))
    validation, verdict = results["validation"], results["not_overfitting"]
    assert validation.reason == "not required (retrain.require_validation_success: false)"
    assert verdict.reason == "not required (retrain.reject_overfitting: false)"
    assert (validation.observed, verdict.observed) == (False, "overfitting")
    assert validation.limit is None and verdict.limit is None


def test_version_facts_without_tags_or_evaluation_knows_nothing_but_the_version():
    class Version:
        version, run_id, tags = 7, None, None

    facts = version_facts(Version(), {"variants": {}})
    assert facts == ModelFacts(version="7")
    assert not by_name(gates(CFG, facts, None, VALID))["gap"].passed
