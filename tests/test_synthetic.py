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


def test_impossible_request_fails_clearly(monkeypatch):
    import posttrain.synthetic as synthetic

    # Two names, two objects and no irrelevant facts leave about a thousand distinct one-step problems.
    monkeypatch.setattr(synthetic, "NAMES", [("Mia", "she"), ("Tom", "he")])
    monkeypatch.setattr(synthetic, "ITEMS", ["apple", "coin"])
    monkeypatch.setattr(synthetic, "DISTRACTOR_PROBABILITY", 0.0)
    with pytest.raises(ValueError, match="distinct problems"):
        generate_problems(5_000, seed=0, min_steps=1, max_steps=1, operations=["add"], max_number=2)


def _sentences(problems):
    return {s for p in problems for s in re.split(r"(?<=[.?])\s+", p["question"])}


def test_held_out_phrasings_never_appear_in_seen_problems():
    """Each template family keeps its held-out tail out of the seen problems, and held-out
    problems use only that tail: the test's held-out half cannot be passed by recalling
    a training sentence."""
    from posttrain.synthetic import FAMILIES, template_choices

    seen, held_out = template_choices("seen", 0.25), template_choices("held_out", 0.25)
    for family, phrasings in FAMILIES.items():
        assert held_out[family], family  # every family holds at least one phrasing out
        assert set(seen[family]) | set(held_out[family]) == set(phrasings)
        assert not set(seen[family]) & set(held_out[family])
    seen_problems = generate_problems(400, seed=5, templates="seen")
    held_out_problems = generate_problems(400, seed=5, templates="held_out")
    assert {p["templates"] for p in seen_problems} == {"seen"}
    assert {p["templates"] for p in held_out_problems} == {"held_out"}
    # Sentence skeletons (names, objects and numbers replaced) do not cross over.
    from posttrain.synthetic import ITEMS, NAMES, _plural

    words = re.compile(r"\b(" + "|".join(sorted([n for n, _ in NAMES] + [_plural(i) for i in ITEMS],
                                                key=len, reverse=True)) + r")\b")

    def skeletons(problems):
        return {words.sub("X", re.sub(r"\d+", "N", s)) for s in _sentences(problems)}
    assert not skeletons(held_out_problems) & skeletons(seen_problems)


def test_phrasings_vary_and_irrelevant_facts_appear():
    problems = generate_problems(300, seed=7)
    openings = {re.sub(r"\d+", "N", p["question"].split(".")[0]).split(" ", 1)[1] for p in problems}
    assert len({o.split(" ")[0] for o in openings}) >= 3  # "has", "starts", "are", "owns", ...
    with_distractor = [p for p in problems
                       if re.search(r"years old|minutes to walk|hours a day|owns \d+|has \d+ \w+\.", p["question"])]
    assert 0.15 < len(with_distractor) / len(problems) < 0.6


def test_no_held_out_fraction_means_every_phrasing_is_seen():
    from posttrain.synthetic import FAMILIES, template_choices

    assert template_choices("seen", 0.0) == FAMILIES
