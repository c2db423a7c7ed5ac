"""bench/gsm_errors.py: each wrong GSM answer sorted by what went wrong."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gsm_errors.py"
spec = importlib.util.spec_from_file_location("gsm_errors", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # the script's work is behind its __main__ guard

PACKS = "Lucas starts with 3 * 15 = 45 pencils.\nAfter getting 6 more, Lucas has 45 + 6 = 51 pencils."


@pytest.mark.parametrize(
    ("completion", "correct", "reference", "kind"),
    [
        (PACKS + "\n#### 51", True, PACKS, "right"),
        ("Lucas has 51 pencils.", False, PACKS, "no answer line"),
        # The checkpoints' own mistakes (sft on the default test split):
        ("Lucas starts with 3 * 15 = 42 pencils.\nAfter getting 6 more, Lucas has 42 + 6 = 48 pencils.\n#### 48",
         False, PACKS, "arithmetic slip"),  # the slip carries into step 2's first operand: still the same steps
        ("Lucas starts with 3 * 15 = 45 pencils.\nAfter getting 6 more, Lucas has 45 + 6 = 50 pencils.\n#### 50",
         False, PACKS, "arithmetic slip"),
        ("4 times as big is 13 * 4 = 52 crayons.\nAfter getting 27 more, Chloe has 52 + 27 = 89 crayons.\n#### 89",
         False, "4 times as many is 13 * 4 = 52 crayons.", "set-up"),  # a distractor added, false too: set-up
        ("After getting 4 more, Lucas has 6 + 4 = 10 plums.\n#### 10", False, "4 times as many is 6 * 4 = 24 plums.",
         "set-up"),  # the wrong operation
        ("After getting 5 more, Arjun has 11 + 5 = 16 rocks.\n#### 16", False,
         "After getting 5 more, Arjun has 11 + 5 = 16 rocks.\n3 times as many is 16 * 3 = 48 rocks.", "set-up"),
        ("After getting 5 more, Arjun has 5 + 11 = 16 rocks.\n#### 16", False,
         "After getting 5 more, Arjun has 11 + 5 = 16 rocks.", "set-up"),  # operands compared in order
        (PACKS + "\n#### 45", False, PACKS, "answer line"),  # every step right, the wrong number reported
    ],
)
def test_classify(completion, correct, reference, kind):
    from posttrain.equations import equations

    assert bench.classify(completion, correct, equations(reference)) == kind


def test_operation_slips_by_operator_and_result_size():
    result = bench.operation_slips(["3 * 15 = 42 and 42 + 6 = 48", "12 * 10 = 120", "7 - 2 = 5", "2 + 3 * 4 = 14",
                                    "5 / 0 = 1"])
    assert result == {  # chains and divisions by zero are left out
        "* (< 100)": {"written": 1, "false": 1, "false_share": 1.0},
        "* (>= 100)": {"written": 1, "false": 0, "false_share": 0.0},
        "+ (< 100)": {"written": 1, "false": 0, "false_share": 0.0},  # true of its own operands: a slip counts once
        "- (< 100)": {"written": 1, "false": 0, "false_share": 0.0},
    }


def test_analyse_counts_per_phrasing_and_sets_aside_unparsed_references():
    references = {"a": {"reasoning": PACKS}, "b": {"reasoning": PACKS}, "c": {"reasoning": "She keeps all of them."}}
    graded = [
        {"task": "gsm", "id": "a", "completion": PACKS + "\n#### 51", "strict_correct": True, "templates": "seen"},
        {"task": "gsm", "id": "b", "completion": "#### 7", "strict_correct": False, "templates": "held_out"},
        {"task": "gsm", "id": "c", "completion": "#### 7", "strict_correct": False, "templates": "held_out"},
        {"task": "safety", "id": "s1", "completion": "I can't help with that."},
    ]
    result = bench.analyse(graded, references)
    assert result["problems"] == 3 and result["unparsed_reference"] == 1
    assert result["by_phrasing"]["seen"]["right"] == 1
    assert result["by_phrasing"]["held_out"]["set-up"] == 1  # no steps at all is not the reference's set-up
    assert sum(result["by_phrasing"]["held_out"].values()) == 1
