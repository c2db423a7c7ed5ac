"""bench/pass_at_k.py: the unbiased pass@k estimator and its summary over problems."""

import importlib.util
import itertools
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "pass_at_k.py"
spec = importlib.util.spec_from_file_location("pass_at_k", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # the script's work is behind its __main__ guard


@pytest.mark.parametrize("n", [1, 3, 6])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_sample(n):
    """Against enumeration: every way to pick k of n samples, c of them right."""
    for correct in range(n + 1):
        samples = [True] * correct + [False] * (n - correct)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert bench.pass_at_k(n, correct, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    for n, correct, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            bench.pass_at_k(n, correct, k)


def test_summary_over_problems():
    # Three problems, 4 samples each: never right, half right, always right.
    result = bench.summary([0, 2, 4], 4)
    assert result["mean_sample_accuracy"] == pytest.approx(0.5)
    assert result["pass_at"][1] == pytest.approx(0.5)  # pass@1 is the mean one-sample accuracy
    assert result["pass_at"][2] == pytest.approx((0 + (1 - 1 / 6) + 1) / 3, abs=1e-4)  # rounded to 4 places
    assert result["pass_at"][4] == pytest.approx(2 / 3, abs=1e-4)  # pass@n: any of the n right
    assert sorted(result["pass_at"]) == [1, 2, 4]
    assert (result["never_right"], result["always_right"]) == (1, 1)
    assert sorted(bench.summary([1] * 5, 16)["pass_at"]) == [1, 2, 4, 8, 16]


def test_majority_answer_counts_votes_and_ignores_unanswered_samples():
    assert bench.majority_answer(["12", None, "7", "12", None, None]) == "12"  # None never wins, however many
    assert bench.majority_answer(["7", "12", "12", "7"]) == "7"  # a tie: the answer given first
    assert bench.majority_answer(["12", "7", "7", "12"]) == "12"
    assert bench.majority_answer([None, None]) is None
    assert bench.majority_answer([]) is None


def test_summary_reports_majority_accuracy_only_when_graded():
    assert "majority_accuracy" not in bench.summary([0, 2, 4], 4)
    result = bench.summary([0, 2, 4], 4, [False, True, True])
    assert result["majority_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    with pytest.raises(ValueError):
        bench.summary([0, 2, 4], 4, [True])
