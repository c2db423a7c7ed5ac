"""Intervals and paired tests on hand-computed cases."""

import pytest

from posttrain.stats import mcnemar, paired_change, rate_summary, wilson


def test_wilson_interval_matches_the_textbook_values():
    # 81 of 263 (Wilson 1927 / Newcombe 1998, example): 0.2553 to 0.3662
    low, high = wilson(81, 263)
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    # 0 of 10: lower bound 0, upper 0.2775 (Newcombe 1998, table I)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_exact_mcnemar_by_hand():
    # 1 lost, 9 gained: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar(9, 1) == pytest.approx(22 / 1024)  # symmetric
    assert mcnemar(5, 5) == 1.0 and mcnemar(0, 0) == 1.0
    # 0 lost, 6 gained: 2 / 64
    assert mcnemar(0, 6) == pytest.approx(2 / 64)


def test_paired_change_counts_lost_and_gained_on_shared_items_only():
    before = {"a": True, "b": True, "c": False, "d": False, "e": True, "only_before": True}
    after = {"a": True, "b": False, "c": True, "d": True, "e": True, "only_after": False}
    change = paired_change(before, after)
    assert change["n"] == 5 and change["lost"] == 1 and change["gained"] == 2
    assert change["delta"] == pytest.approx(0.2)
    # var of d in {0,-1,+1,+1,0}: mean 0.2, E[d^2] = 0.6 -> var 0.56; se = sqrt(0.56 / 5)
    se = (0.56 / 5) ** 0.5
    assert change["ci95_low"] == pytest.approx(0.2 - 1.96 * se, abs=1e-3)
    assert change["ci95_high"] == pytest.approx(0.2 + 1.96 * se, abs=1e-3)
    assert change["p_value"] == 1.0 and change["significant"] is False


def test_a_large_consistent_change_is_significant_and_noise_is_not():
    ids = [str(i) for i in range(200)]
    before = {i: int(i) < 100 for i in ids}
    after = {i: int(i) < 130 for i in ids}  # 30 gained, none lost
    assert paired_change(before, after)["significant"] is True
    noisy = {i: (int(i) < 95) or (100 <= int(i) < 104) for i in ids}  # 5 lost, 4 gained
    assert paired_change(before, noisy)["significant"] is False


def test_rate_summary_carries_n_and_interval():
    summary = rate_summary([True] * 3 + [False] * 7)
    assert summary["value"] == 0.3 and summary["n"] == 10
    assert summary["ci95_low"] == pytest.approx(0.1078, abs=1e-4)
    assert summary["ci95_high"] == pytest.approx(0.6032, abs=1e-4)
