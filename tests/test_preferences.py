"""Preference pairing on crafted groups: mixed, all right, all wrong, duplicates."""

import random

from posttrain.gsm import grade
from posttrain.preferences import (
    REFERENCE_VS_SAMPLED,
    SAMPLED,
    SAMPLED_VS_CORRUPTED,
    Pair,
    corrupt_solution,
    pairs_for_prompt,
    split_by_prompt,
)

RECORD = {"id": "p1", "question": "Mia has 7 stickers and finds 5 more. How many now?", "answer": "12",
          "solution": "After finding 5 more, Mia has 7 + 5 = 12 stickers.\n#### 12"}
RIGHT_A = "7 + 5 = 12\n#### 12"
RIGHT_B = "Mia has 12 stickers.\n#### 12"
WRONG_A = "7 + 5 = 13\n#### 13"
WRONG_B = "She has 7 stickers."  # no answer line: wrong for the strict verifier


def pairs(samples, when_all_wrong="skip", when_all_correct="skip", seed=0):
    return pairs_for_prompt(RECORD, samples, when_all_wrong, when_all_correct, random.Random(seed))


def test_mixed_group_pairs_each_wrong_sample_with_a_correct_one():
    result = pairs([RIGHT_A, WRONG_A, RIGHT_B, WRONG_B])
    assert [(p.chosen, p.rejected, p.source) for p in result] == [
        (RIGHT_A, WRONG_A, SAMPLED), (RIGHT_B, WRONG_B, SAMPLED)]


def test_duplicates_are_removed_before_pairing():
    result = pairs([RIGHT_A, WRONG_A, WRONG_A, "  7 + 5 = 13\n####  13 ", RIGHT_A])
    assert len(result) == 1 and result[0].rejected == WRONG_A


def test_all_wrong_is_skipped_or_paired_against_the_reference():
    assert pairs([WRONG_A, WRONG_B]) == []
    result = pairs([WRONG_A, WRONG_B], when_all_wrong="reference")
    assert {p.rejected for p in result} == {WRONG_A, WRONG_B}
    assert all(p.chosen == RECORD["solution"] and p.source == REFERENCE_VS_SAMPLED for p in result)


def test_all_correct_is_skipped_or_paired_against_a_corrupted_reference():
    assert pairs([RIGHT_A, RIGHT_B]) == []
    (result,) = pairs([RIGHT_A, RIGHT_B], when_all_correct="corrupt")
    assert result.source == SAMPLED_VS_CORRUPTED and result.chosen == RIGHT_A
    assert not grade(result.rejected, "12").strict_correct
    assert grade(result.rejected, "12").well_formatted  # still looks like a solution


def test_the_all_correct_fallback_does_not_apply_to_all_wrong_groups():
    assert pairs([WRONG_A], when_all_correct="corrupt") == []
    assert pairs([RIGHT_A], when_all_wrong="reference") == []


def test_corrupt_solution_changes_one_step_consistently():
    solution = "Tom buys 3 * 4 = 12 apples.\nAfter giving 2 away, Tom has 12 - 2 = 10 apples.\n#### 10"
    for seed in range(20):
        corrupted = corrupt_solution(solution, random.Random(seed))
        first, second, final = corrupted.split("\n")
        assert first == "Tom buys 3 * 4 = 12 apples."  # earlier steps untouched
        wrong = int(final.removeprefix("#### "))
        assert wrong != 10 and wrong >= 0
        assert second == f"After giving 2 away, Tom has 12 - 2 = {wrong} apples."
    assert corrupt_solution("#### 5", random.Random(0)) is None


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    all_pairs = [Pair(f"p{i % 10}", "q", f"c{i}", f"r{i}", SAMPLED) for i in range(40)]
    train, held_out = split_by_prompt(all_pairs, 0.2, seed=0)
    assert len(train) + len(held_out) == 40
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in held_out}
    assert len({p.prompt_id for p in held_out}) == 2


def test_corrupt_solution_leaves_other_numbers_and_negative_results_sound():
    solution = "She has 10 - 8 = 2 pens, and 12 pencils.\n#### 2"
    corrupted = corrupt_solution(solution, random.Random(1))
    wrong = corrupted.split("#### ")[1]
    assert "12 pencils" in corrupted  # the 2 inside 12 is not the result
    assert corrupted.startswith(f"She has 10 - 8 = {wrong} pens")
    negative = corrupt_solution("It fell 3 - 10 = -7 degrees.\n#### -7", random.Random(0))
    assert negative is not None and negative.split("#### ")[1] != "-7"
    # "= 1,200" and "= 0.2" are not whole-number step results: nothing to corrupt
    assert corrupt_solution("He paid 1,000 + 200 = 1,200 dollars.\n#### 1200", random.Random(0)) is None
    assert corrupt_solution("Each is 1 / 5 = 0.2 kg.\n#### 0.2", random.Random(0)) is None


def test_kto_unpairing_gives_each_pair_one_label_of_each_and_never_neighbours_a_prompt_with_itself():
    from posttrain.dpo import unpaired

    pairs = [{"prompt": [{"role": "user", "content": f"q{i}"}],
              "chosen": [{"role": "assistant", "content": f"good {i}"}],
              "rejected": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(5)]
    examples = unpaired(pairs)
    assert len(examples) == 10
    for pair in pairs:
        mine = [e for e in examples if e["prompt"] == pair["prompt"]]
        assert sorted((e["completion"][0]["content"], e["label"]) for e in mine) == sorted(
            [(pair["chosen"][0]["content"], True), (pair["rejected"][0]["content"], False)])
    # KTO scores a prompt against its batch neighbour's completion; labels alternate so
    # that any batch of two or more holds both.
    for left, right in zip(examples, examples[1:] + examples[:1]):
        assert left["prompt"] != right["prompt"]
    for half in (examples[:5], examples[5:]):
        assert all(a["label"] != b["label"] for a, b in zip(half, half[1:]))
