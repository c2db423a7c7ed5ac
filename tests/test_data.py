"""Preparing GSM data: normalisation, malformed-line reporting, deterministic splits."""

import json

import pytest

from posttrain.config import DataParams
from posttrain.data import DataError, prepare_gsm

GOOD = {"question": "Tom has 2 apples and buys 3 more. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}


def write_source(tmp_path, n_good, bad_lines=(), test_rows=None):
    lines = [json.dumps({**GOOD, "question": f"{GOOD['question']} (#{i})"}) for i in range(n_good)]
    lines += list(bad_lines)
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    if test_rows is not None:
        (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    return tmp_path


def params(source, sft=10, rl=5, test=5, max_bad_fraction=0.5):
    return DataParams(source=str(source), split={"sft": sft, "rl": rl, "test": test},
                      max_bad_fraction=max_bad_fraction)


BAD = [
    "{not json",
    json.dumps({"question": "no answer"}),
    json.dumps({"question": "Q", "answer": "The answer is 5."}),
    json.dumps({"question": "Q", "answer": "#### five"}),
    json.dumps(["a list"]),
]


def test_malformed_lines_are_counted_by_reason_with_file_and_line(tmp_path):
    source = write_source(tmp_path, 30, BAD)
    gsm = prepare_gsm(params(source), seed=0)
    report = gsm.report
    assert report.total == 35 and report.skipped_total == 5
    assert report.skipped["missing field 'answer'"] == 1
    assert report.skipped["no '#### N' final-answer line"] == 1
    assert report.skipped["not a JSON object"] == 1
    assert any(k.startswith("invalid JSON") for k in report.skipped)
    assert report.examples[0] == f"{tmp_path / 'train.jsonl'}:31: " + next(
        k for k in report.skipped if k.startswith("invalid JSON"))
    assert f"{tmp_path / 'train.jsonl'}:34: final answer 'five' is not a number" in report.examples


def test_too_many_malformed_lines_fail_the_stage(tmp_path):
    source = write_source(tmp_path, 30, BAD)
    with pytest.raises(DataError, match=r"data.max_bad_fraction: 5 of 35 records are malformed"):
        prepare_gsm(params(source, max_bad_fraction=0.1), seed=0)


def test_split_larger_than_data_names_the_key(tmp_path):
    source = write_source(tmp_path, 12)
    with pytest.raises(DataError, match=r"data.split: sft \+ rl = 15 wanted, the source has 7"):
        prepare_gsm(params(source), seed=0)


def test_splits_are_disjoint_deterministic_and_test_comes_from_test_file(tmp_path):
    test_rows = [{**GOOD, "question": f"Test question {i}"} for i in range(8)]
    source = write_source(tmp_path, 30, test_rows=test_rows)
    first, again = prepare_gsm(params(source), seed=1), prepare_gsm(params(source), seed=1)
    assert [r["id"] for r in first.sft] == [r["id"] for r in again.sft]
    assert {r["question"] for r in first.test} <= {r["question"] for r in test_rows}
    ids = [r["id"] for r in first.sft + first.rl + first.test]
    assert len(ids) == len(set(ids)) == 20
    record = first.sft[0]
    assert record["answer"] == "5" and record["solution"] == "2 + 3 = 5\n#### 5"


def test_duplicate_questions_are_dropped_and_counted(tmp_path):
    source = write_source(tmp_path, 25, [json.dumps(GOOD), json.dumps(GOOD)])
    gsm = prepare_gsm(params(source), seed=0)
    assert gsm.duplicates == 1  # the first copy is kept


def test_synthetic_source_gives_requested_sizes():
    gsm = prepare_gsm(DataParams(source="synthetic", synthetic={"num_problems": 60},
                                 split={"sft": 30, "rl": 10, "test": 20}), seed=0)
    assert (len(gsm.sft), len(gsm.rl), len(gsm.test)) == (30, 10, 20)
    assert gsm.report.skipped_total == 0


def test_synthetic_test_split_holds_the_held_out_phrasings_and_training_never_sees_them():
    gsm = prepare_gsm(DataParams(source="synthetic", synthetic={"num_problems": 70, "held_out_test_share": 0.4},
                                 split={"sft": 30, "rl": 20, "test": 20}), seed=0)
    assert [r["templates"] for r in gsm.sft + gsm.rl] == ["seen"] * 50
    assert sorted(r["templates"] for r in gsm.test) == ["held_out"] * 8 + ["seen"] * 12
    assert not {r["question"] for r in gsm.test} & {r["question"] for r in gsm.sft + gsm.rl}
    # Both kinds are spread through the test split, so evaluate.gsm_limit keeps both.
    assert {r["templates"] for r in gsm.test[:8]} == {"seen", "held_out"}
