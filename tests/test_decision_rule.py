"""The written decision rule (bench/decision_rule.py): seeds, interval, per-category spread."""

from __future__ import annotations

import pytest

from tests.conftest import load_bench_module


@pytest.fixture(scope="module")
def rule():
    return load_bench_module("decision_rule")


def _val(gains: dict[str, list[float]], base: dict[str, list[float]]) -> dict:
    """``val[category][seed][row]`` with the option at base + gain."""
    return {c: {s: {"option": base[c][s] + g, "baseline": base[c][s]} for s, g in enumerate(gains[c])} for c in gains}


BASE = {"a": [0.80, 0.82, 0.78], "b": [0.60, 0.65, 0.55]}


def test_a_consistent_gain_on_every_category_is_adopted(rule):
    d = rule.decide("option", "baseline", _val({"a": [0.02, 0.03, 0.01], "b": [0.02, 0.01, 0.03]}, BASE))
    assert d.verdict == "adopt"
    assert d.val_low > 0 and d.val_low <= d.val_delta <= d.val_high
    assert d.val_delta == pytest.approx(0.02)
    assert d.seeds == {"a": 3, "b": 3}


def test_an_interval_that_reaches_zero_keeps_the_baseline(rule):
    d = rule.decide("option", "baseline", _val({"a": [0.05, -0.04, 0.01], "b": [-0.03, 0.04, 0.0]}, BASE))
    assert d.val_low < 0 < d.val_high
    assert d.verdict == "keep"


def test_a_category_that_loses_more_than_its_seed_spread_keeps_the_baseline(rule):
    # Three categories gain a lot; b loses 0.06 on every seed while its baseline varies by 0.05 (its spread).
    tight = {"a": [0.80] * 3, "b": [0.60, 0.65, 0.55], "c": [0.70] * 3, "d": [0.75] * 3}
    gains = {"a": [0.3] * 3, "b": [-0.06] * 3, "c": [0.3] * 3, "d": [0.3] * 3}
    d = rule.decide("option", "baseline", _val(gains, tight))
    assert d.val_low > 0, "the mean gain alone would adopt it"
    assert d.spread["b"] == pytest.approx(0.05)
    assert d.per_category["b"] == pytest.approx(-0.06)
    assert d.verdict == "keep"
    # The same loss within the spread is allowed.
    gains["b"] = [-0.04] * 3
    assert rule.decide("option", "baseline", _val(gains, tight)).verdict == "adopt"


def test_fewer_than_three_seeds_on_any_category_decide_nothing(rule):
    val = _val({"a": [0.02, 0.03, 0.01], "b": [0.02, 0.03]}, BASE)
    assert rule.decide("option", "baseline", val).verdict.startswith("undecided")


def test_test_auroc_is_carried_and_never_read(rule):
    val = _val({"a": [0.02, 0.03, 0.01], "b": [0.02, 0.01, 0.03]}, BASE)
    good = {c: {s: {"option": 1.0, "baseline": 0.0} for s in v} for c, v in val.items()}
    bad = {c: {s: {"option": 0.0, "baseline": 1.0} for s in v} for c, v in val.items()}
    a, b = rule.decide("option", "baseline", val, good), rule.decide("option", "baseline", val, bad)
    assert (a.test_delta, b.test_delta) == (1.0, -1.0)
    assert a.verdict == b.verdict == "adopt"


def test_a_candidate_stays_in_autos_list_when_leaving_it_out_lowered_mean_validation(rule):
    """Chosen on one category of two, leaving it out loses there and changes nothing on the other: the
    interval reaches zero (the standard rule would keep the list without it) but the mean fell, so it stays;
    a candidate whose removal changed nothing (or helped) leaves."""
    d = rule.decide("option", "baseline", _val({"a": [0.02, 0.03, 0.01], "b": [0.0, 0.0, 0.0]}, BASE))
    assert d.verdict == "keep" and d.val_low == 0
    assert rule.list_verdict(d) == "adopt"
    unchanged = rule.decide("option", "baseline", _val({"a": [0.0] * 3, "b": [0.0] * 3}, BASE))
    helped = rule.decide("option", "baseline", _val({"a": [-0.001] * 3, "b": [0.0] * 3}, BASE))
    assert rule.list_verdict(unchanged) == rule.list_verdict(helped) == "keep"
    short = rule.decide("option", "baseline", _val({"a": [0.05, 0.05], "b": [0.05, 0.05]}, BASE))
    assert rule.list_verdict(short) == "undecided: 2 paired seeds (need 3 on every category)"


def test_one_settled_category_that_loses_beyond_its_spread_keeps_the_baseline_before_the_others(rule):
    """a has its 3 seeds and loses by more than its spread: no result on b can satisfy the rule, so the
    verdict is keep although b is not measured; a loss within the spread leaves it undecided. A list
    candidate needs every category measured (the mean must cover them all)."""
    val = _val({"a": [-0.05, -0.04, -0.06]}, BASE)
    val["b"] = {s: {"baseline": v} for s, v in enumerate(BASE["b"])}
    d = rule.decide("option", "baseline", val)
    assert d.missing == ["b"] and d.spread["a"] == pytest.approx(0.02)
    assert d.verdict == "keep"
    assert rule.list_verdict(d).startswith("undecided")
    within = _val({"a": [-0.01, -0.01, -0.01]}, BASE)
    within["b"] = val["b"]
    assert rule.decide("option", "baseline", within).verdict.startswith("undecided")
