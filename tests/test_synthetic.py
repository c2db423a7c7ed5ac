"""The synthetic GSM generator: deterministic, distinct, and its answers are right."""

import re

import pytest

from posttrain.gsm import parse_reference
from posttrain.synthetic import generate_problems

STEP = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)")


def test_same_seed_same_problems_other_seed_other_problems():
    assert generate_problems(50, seed=3) == generate_problems(50, seed=3)
    assert generate_problems(50, seed=3) != generate_problems(50, seed=4)


def test_questions_are_distinct():
    problems = generate_problems(500, seed=0)
    assert len({p["question"] for p in problems}) == 500


@pytest.mark.parametrize("operations", [["add"], ["sub", "add"], ["mul", "div"], ["add", "sub", "mul", "div"]])
def test_every_step_and_final_answer_is_arithmetically_right(operations):
    for problem in generate_problems(200, seed=1, min_steps=1, max_steps=4, operations=operations, max_number=30):
        ref = parse_reference(problem["answer"])
        steps = ref.reasoning.splitlines()
        value = None
        for line in steps:
            left, op, right, result = STEP.search(line).groups()
            computed = {"+": int(left) + int(right), "-": int(left) - int(right),
                        "*": int(left) * int(right), "/": int(left) / int(right)}[op]
            assert computed == int(result), line
            if value is not None:
                assert int(left) == value, "each step continues from the previous result"
            value = int(result)
        # the final answer is the last step's result (or the starting count, with no steps written)
        assert int(ref.answer) >= 0
        if value is not None:
            assert int(ref.answer) == value
        # the answer is not given away: every operand appears in the question
        for line in steps:
            _, _, right, _ = STEP.search(line).groups()
            assert right in problem["question"]


def test_difficulty_knobs_bound_steps_and_operations():
    problems = generate_problems(200, seed=2, min_steps=3, max_steps=3, operations=["add", "sub"], max_number=9)
    for problem in problems:
        steps = parse_reference(problem["answer"]).reasoning.splitlines()
        assert len(steps) == 3
        assert all(op in "+-" for _, op, _, _ in (STEP.search(s).groups() for s in steps))


def test_impossible_request_fails_clearly():
    with pytest.raises(ValueError, match="distinct problems"):
        generate_problems(10_000, seed=0, min_steps=1, max_steps=1, operations=["add"], max_number=2)
