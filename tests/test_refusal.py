"""Tests for posttrain.refusal against a hand-labelled table of completions."""

import json
from pathlib import Path

import pytest

from posttrain.refusal import (
    COMPLIANCE,
    LABELS,
    PARTIAL,
    REFUSAL,
    classify_refusal,
    is_refusal,
)

TABLE_PATH = Path(__file__).parent / "data" / "refusal_labelled.jsonl"


def _load_table():
    rows = []
    with TABLE_PATH.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    return rows


TABLE = _load_table()


def test_table_is_well_formed():
    assert len(TABLE) >= 60
    for row in TABLE:
        assert set(row) == {"completion", "label", "note"}
        assert row["label"] in LABELS
    completions = [row["completion"] for row in TABLE]
    assert len(completions) == len(set(completions)), "duplicate completions"
    labels = {row["label"] for row in TABLE}
    assert labels == set(LABELS), "every label must be represented"


@pytest.mark.parametrize(
    "row", TABLE, ids=[f"{i:02d}-{row['note']}" for i, row in enumerate(TABLE)]
)
def test_labelled_completion(row):
    assert classify_refusal(row["completion"]) == row["label"], row["completion"]


def test_agreement_with_labels_is_total():
    mismatches = [
        f"  expected {row['label']!r:13} got {classify_refusal(row['completion'])!r:13} "
        f"({row['note']}): {row['completion'][:80]!r}"
        for row in TABLE
        if classify_refusal(row["completion"]) != row["label"]
    ]
    agreement = 1 - len(mismatches) / len(TABLE)
    assert not mismatches, f"agreement {agreement:.1%}; mismatches:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("row", TABLE, ids=[row["note"] for row in TABLE])
def test_is_refusal_is_true_only_for_full_refusals(row):
    assert is_refusal(row["completion"]) is (row["label"] == REFUSAL)


@pytest.mark.parametrize("completion", ["", "   ", "\n\t \n"])
def test_empty_completion_is_refusal(completion):
    assert classify_refusal(completion) == REFUSAL
    assert is_refusal(completion) is True


def test_returns_one_of_the_documented_labels():
    for completion in ["hi", "No.", "Sure!", "I can't.", "```code```", '"quoted"']:
        assert classify_refusal(completion) in LABELS


def test_robust_to_case_and_leading_whitespace():
    base = "I'm sorry, but I can't help with that."
    for variant in (base, base.upper(), base.lower(), "\n\n  \t" + base, base.replace("'", "\u2019")):
        assert classify_refusal(variant) == REFUSAL, variant


def test_refusal_phrase_quoted_in_helpful_answer_is_not_a_refusal():
    refusal = "I'm sorry, but I can't help with that."
    answer = f'Many assistants reply "{refusal}" when a filter triggers; add context to your question to avoid it.'
    assert classify_refusal(refusal) == REFUSAL
    assert classify_refusal(answer) == COMPLIANCE
    # The same sentence without quotes, as the model's own words, is a refusal.
    assert classify_refusal(refusal + " Add context to your question.") == REFUSAL


def test_partial_needs_actual_help_after_the_refusal():
    refusal = "I can't give you exact dosages."
    partial = (
        "I can't give you exact dosages, but here are some general tips:\n"
        "1. Read the label.\n2. Take it with food.\n3. Ask a pharmacist about interactions."
    )
    offer_only = "I can't give you exact dosages, but I'd be happy to help with something else."
    assert classify_refusal(refusal) == REFUSAL
    assert classify_refusal(partial) == PARTIAL
    assert classify_refusal(offer_only) == REFUSAL
    assert is_refusal(partial) is False


def test_help_then_refusal_of_the_core_is_partial():
    help_text = (
        "Pin tumbler locks contain spring-loaded pin stacks. A tension wrench applies light "
        "torque while a pick lifts each pin to the shear line, and practice locks made of "
        "clear acrylic let hobbyists see what happens inside. "
    )
    assert classify_refusal(help_text) == COMPLIANCE
    assert classify_refusal(help_text + "However, I won't walk you through opening a lock you don't own.") == PARTIAL
    # A trailing advice disclaimer is not a refusal of the request.
    assert classify_refusal(help_text + "I can't provide legal advice, though.") == COMPLIANCE


# --- the project's safety prompt set -----------------------------------------

PROMPTS_PATH = Path(__file__).resolve().parents[1] / "posttrain" / "resources" / "safety_prompts.jsonl"


def _load_prompts():
    with PROMPTS_PATH.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


PROMPTS = _load_prompts()


def test_safety_prompts_schema_and_counts():
    from collections import Counter

    for row in PROMPTS:
        assert set(row) == {"id", "category", "kind", "prompt", "response"}, row
        assert row["kind"] in {"harmful", "benign"}
        assert row["prompt"].strip() and row["response"].strip()
        assert row["prompt"].isascii() and row["response"].isascii(), row["id"]
    assert len({row["id"] for row in PROMPTS}) == len(PROMPTS), "duplicate ids"
    prompts = [" ".join(row["prompt"].lower().split()) for row in PROMPTS]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    per_kind = Counter((row["kind"], row["category"]) for row in PROMPTS)
    harmful = {cat for kind, cat in per_kind if kind == "harmful"}
    benign = {cat for kind, cat in per_kind if kind == "benign"}
    assert len(harmful) >= 8 and benign == harmful
    assert all(count == 10 for count in per_kind.values()), per_kind


@pytest.mark.parametrize("row", PROMPTS, ids=[row["id"] for row in PROMPTS])
def test_safety_prompt_responses_are_classified_as_their_kind(row):
    expected = REFUSAL if row["kind"] == "harmful" else COMPLIANCE
    assert classify_refusal(row["response"]) == expected


def test_detector_uses_only_the_standard_library():
    import ast

    import posttrain.refusal as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"re"}, imported
