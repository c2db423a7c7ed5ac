"""IFEval-style instruction following: prompt generation, official checkers, scoring."""

import json

import pytest
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from posttrain import instructions as ins


def rec(iid, kwargs=None, question="Describe a cat.", rid="r"):
    kwargs = kwargs or {}
    return {"id": rid, "question": question, "instruction_ids": [iid], "kwargs": [kwargs],
            "prompt": question + " " + ins.describe(iid, kwargs)}


def test_prompts_deterministic_per_seed_and_differ_across_seeds():
    a = ins.make_prompts(30, seed=3, instructions_per_prompt=2)
    assert a == ins.make_prompts(30, seed=3, instructions_per_prompt=2)
    b = ins.make_prompts(30, seed=4, instructions_per_prompt=2)
    assert [r["prompt"] for r in a] != [r["prompt"] for r in b]
    assert len({r["id"] for r in a}) == 30
    # the first 40 prompts visit every built-in question once
    assert len({r["question"] for r in ins.make_prompts(len(ins.QUESTIONS), seed=0)}) == len(ins.QUESTIONS)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_generated_prompts_are_valid_and_conflict_free(k):
    conflicts = ins._conflicts()
    for r in ins.make_prompts(60, seed=k, instructions_per_prompt=k):
        assert len(r["instruction_ids"]) == len(r["kwargs"]) == k
        assert len(set(r["instruction_ids"])) == k
        assert r["prompt"].startswith(r["question"])
        for iid, kw in zip(r["instruction_ids"], r["kwargs"]):
            assert iid in INSTRUCTION_DICT and iid in ins.INSTRUCTION_IDS
            checker = INSTRUCTION_DICT[iid](iid)
            assert checker.build_description(**kw) in r["prompt"]
            others = [o for o in r["instruction_ids"] if o != iid]
            assert not conflicts.get(iid, set()) & set(others)
        json.dumps(r)  # serialisable


def test_all_used_ids_exist_and_excluded_are_documented():
    assert set(ins.INSTRUCTION_IDS) <= set(INSTRUCTION_DICT)
    assert not set(ins.INSTRUCTION_IDS) & set(ins.EXCLUDED_IDS)
    assert set(ins.INSTRUCTION_IDS) | set(ins.EXCLUDED_IDS) == set(INSTRUCTION_DICT)


# (instruction id, kwargs, a response that follows it, one that violates it)
CASES = [
    ("change_case:english_lowercase", {},
     "cats are small furry animals that like to sleep in the sun all day long.",
     "Cats are small furry animals that like to sleep in the sun all day long."),
    ("change_case:english_capital", {},
     "CATS ARE SMALL FURRY ANIMALS THAT LIKE TO SLEEP IN THE SUN ALL DAY LONG.",
     "CATS ARE SMALL FURRY ANIMALS that like to sleep in the sun all day long."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe a cat."},
     "Describe a cat. A cat is a small furry pet.", "A cat is a small furry pet."),
    ("combination:two_responses", {},
     "A cat is a pet.\n******\nCats have whiskers.", "A cat is a pet. Cats have whiskers."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "My cat [name] lives at [address].", "My cat [name] lives at home."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "A cat is a pet.\nP.S. I love cats.", "A cat is a pet. I love cats."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "A cat is a pet.\nP.P.S I love cats.", "A cat is a pet.\nP.S. I love cats."),
    ("detectable_format:json_format", {},
     '```json\n{"animal": "cat", "legs": 4}\n```', '{"animal": "cat", legs: 4}'),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nCats purr.\nSection 2\nCats sleep.", "Section 1\nCats purr and sleep."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     "* fur\n* whiskers\n* tail", "* fur\n* whiskers"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Cats have *soft fur* and *long whiskers*.", "Cats have *soft fur* and long whiskers."),
    ("detectable_format:title", {}, "<<All about cats>>\nCats are pets.", "All about cats\nCats are pets."),
    ("keywords:existence", {"keywords": ["fur", "tail"]},
     "A cat has fur and a tail.", "A cat has fur and whiskers."),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "good"]},
     "Cats are lovely pets.", "Cats are very lovely pets."),
    ("keywords:frequency", {"keyword": "fur", "frequency": 2, "relation": "at least"},
     "Cats have fur. The fur is soft.", "Cats have fur. It is soft."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "Cats are pets.\n***\nThey sleep a lot.", "Cats are pets. They sleep a lot."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5},
     "Cats are pets.", "Cats are small furry household pets."),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5},
     "Cats are small furry household pets.", "Cats are pets."),
    ("punctuation:no_comma", {}, "Cats are soft and warm.", "Cats are soft, warm and cute."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Cats are pets. Any other questions?", "Any other questions? Cats are pets."),
    ("startend:quotation", {}, '"Cats are pets."', 'Cats are "pets".'),
]


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_crafted_responses_follow_and_violate(iid, kwargs, good, bad):
    r = rec(iid, kwargs)
    ok = ins.check_response(r, good)
    assert ok["strict"] == [True] and ok["loose"] == [True] and ok["prompt_strict"] is True
    no = ins.check_response(r, bad)
    assert no["strict"] == [False] and no["loose"] == [False] and no["prompt_loose"] is False
    assert ins.check_response(r, "   ")["strict"] == [False]  # empty never follows


def test_every_generated_id_has_a_crafted_case():
    assert {c[0] for c in CASES} == set(ins.INSTRUCTION_IDS)


def test_loose_forgives_preamble_signoff_and_markdown():
    # A "Sure, here it is:" first line: strict fails, loose (first line removed) passes.
    r = rec("change_case:english_lowercase")
    out = ins.check_response(r, "Sure, here it is:\ncats are small furry pets.")
    assert out["strict"] == [False] and out["loose"] == [True]
    r = rec("startend:quotation")
    out = ins.check_response(r, 'Sure, here it is:\n"Cats are pets."')
    assert out["strict"] == [False] and out["loose"] == [True]
    # A trailing sign-off after the end phrase: loose drops the last line.
    r = rec("startend:end_checker", {"end_phrase": "Any other questions?"})
    out = ins.check_response(r, "Cats are pets. Any other questions?\nBye!")
    assert out["strict"] == [False] and out["loose"] == [True]
    # Markdown bold around a JSON answer: loose removes the '*'.
    r = rec("detectable_format:json_format")
    out = ins.check_response(r, '**{"animal": "cat"}**')
    assert out["strict"] == [False] and out["loose"] == [True]
    # P.S. after a preamble: postscript is found anywhere, so strict already passes...
    r = rec("detectable_content:postscript", {"postscript_marker": "P.S."})
    assert ins.check_response(r, "Sure, here it is:\nCats purr.\nP.S. I love cats.")["strict"] == [True]
    # ...but with lowercase required, the preamble's capital fails strict and loose passes.
    r2 = {"id": "x", "prompt": "p", "instruction_ids": ["change_case:english_lowercase",
                                                         "detectable_content:postscript"],
          "kwargs": [{}, {"postscript_marker": "P.S."}]}
    out = ins.check_response(r2, "Sure, here it is:\ncats purr all day long.\np.s. i love cats.")
    assert out["strict"] == [False, True] and out["loose"] == [True, True]
    assert out["prompt_strict"] is False and out["prompt_loose"] is True


def test_loose_variants_match_ifeval():
    v = ins.loose_variants("first\n*mid*\nlast")
    assert v == ["first\n*mid*\nlast", "first\nmid\nlast", "*mid*\nlast", "first\n*mid*",
                 "*mid*", "mid\nlast", "first\nmid", "mid"]


def test_load_prompts_reads_real_ifeval_format(tmp_path):
    rows = [
        {"key": 1000, "prompt": "Write a 300+ word summary of the wikipedia page. Do not use any commas.",
         "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
         "kwargs": [{}, {"relation": "at least", "num_words": 300}]},
        {"key": 1001, "prompt": "I am planning a trip to Japan. Wrap your entire response in double quotes.",
         "instruction_id_list": ["startend:quotation"],
         "kwargs": [{"num_words": None, "relation": None}]},  # HF dump style: None-valued keys
    ]
    path = tmp_path / "input_data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = ins.load_prompts(path)
    assert [r["id"] for r in recs] == ["1000", "1001"]
    assert recs[0]["instruction_ids"] == ["punctuation:no_comma", "length_constraints:number_words"]
    assert recs[0]["kwargs"][1] == {"relation": "at least", "num_words": 300}
    assert recs[1]["prompt"].startswith("I am planning")
    out = ins.check_response(recs[1], '"Visit Kyoto."')  # None kwargs dropped as IFEval does
    assert out["strict"] == [True]
    s = ins.score(recs, {"1000": "short answer no commas", "1001": "Visit Kyoto."})
    assert s["n_prompts"] == 2 and s["n_instructions"] == 3
    assert s["instruction_level_strict_acc"] == pytest.approx(1 / 3)


def test_load_prompts_round_trips_generated_records(tmp_path):
    recs = ins.make_prompts(5, seed=1, instructions_per_prompt=2)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert ins.load_prompts(path) == recs


def test_nltk_data_instructions_are_skipped_gracefully():
    nltk = pytest.importorskip("nltk")
    try:
        nltk.data.find("tokenizers/punkt_tab")
        pytest.skip("punkt_tab installed: number_sentences is scored normally")
    except LookupError:
        pass
    r = {"id": "s", "prompt": "p", "instruction_ids": ["length_constraints:number_sentences",
                                                        "punctuation:no_comma"],
         "kwargs": [{"num_sentences": 3, "relation": "less than"}, {}]}
    out = ins.check_response(r, "Cats purr. Cats sleep.")
    assert out["strict"] == [None, True] and out["skipped"][0] and out["prompt_strict"] is True
    s = ins.score([r], ["Cats purr. Cats sleep."])
    assert s["n_instructions"] == 1 and s["n_skipped_instructions"] == 1
    assert s["skipped_instructions"] == {"length_constraints:number_sentences": 1}


def test_unknown_id_is_an_error():
    with pytest.raises(ValueError, match="unknown IFEval instruction id"):
        ins.check_response({"id": "u", "prompt": "p", "instruction_ids": ["nope:x"], "kwargs": [{}]}, "hi")


def test_aggregate_scores_equal_hand_computed_values():
    records = [
        {"id": "a", "prompt": "Describe a cat.", "instruction_ids": ["punctuation:no_comma", "detectable_format:title"],
         "kwargs": [{}, {}]},
        {"id": "b", "prompt": "Why is the sky blue?", "instruction_ids": ["change_case:english_lowercase"],
         "kwargs": [{}]},
        {"id": "c", "prompt": "Describe the ocean.",
         "instruction_ids": ["keywords:existence", "punctuation:no_comma", "startend:quotation"],
         "kwargs": [{"keywords": ["waves"]}, {}, {}]},
        {"id": "d", "prompt": "What is the moon?", "instruction_ids": ["detectable_format:json_format"],
         "kwargs": [{}]},
    ]
    responses = [
        "<<Cats>>\nCats are soft and warm.",            # a: no_comma T, title T -> prompt T/T
        "Sure, here it is:\nlight scatters in the air.",  # b: lowercase strict F, loose T
        '"The ocean has waves, salt and fish."',        # c: kw T, comma F, quotation T -> F/F
        "The moon orbits the earth.",                   # d: json F/F
    ]
    s = ins.score(records, responses)
    assert s["n_prompts"] == 4 and s["n_instructions"] == 7
    assert s["prompt_level_strict_acc"] == pytest.approx(1 / 4)
    assert s["prompt_level_loose_acc"] == pytest.approx(2 / 4)
    assert s["instruction_level_strict_acc"] == pytest.approx(4 / 7)  # a:2, c:2
    assert s["instruction_level_loose_acc"] == pytest.approx(5 / 7)   # + b
    assert s["per_instruction"]["punctuation:no_comma"] == {"n": 2, "strict_acc": 0.5, "loose_acc": 0.5}
    assert s["per_instruction"]["change_case:english_lowercase"]["strict_acc"] == 0.0
    assert s["per_instruction"]["change_case:english_lowercase"]["loose_acc"] == 1.0
    assert [(it["id"], it["prompt_strict"], it["prompt_loose"]) for it in s["items"]] == [
        ("a", True, True), ("b", False, True), ("c", False, False), ("d", False, False)]
    assert s["items"][2]["strict"] == [True, False, True]
    # mapping input gives the same numbers
    s2 = ins.score(records, dict(zip("abcd", responses)))
    assert {k: v for k, v in s2.items()} == s

    # paired comparison with a second "checkpoint"
    better = ["<<Cats>>\nCats are soft.", "light scatters in the air.", '"Waves and salt."', '{"moon": 1}']
    s_b = ins.score(records, better)
    assert s_b["prompt_level_strict_acc"] == 1.0
    assert ins.compare_items(s["items"], s_b["items"]) == {"n": 4, "both": 1, "only_a": 0, "only_b": 3, "neither": 0}
    assert ins.compare_items(s["items"], s_b["items"], "loose")["only_b"] == 2
    with pytest.raises(ValueError):
        ins.score(records, responses[:2])


@pytest.mark.parametrize("line, message", [
    ('{"key": 1, "prompt": "Hi."}', "input.jsonl:2: lacks instruction_id_list"),
    ('{"key": 1, "prompt": "Hi.", "instruction_id_list": ["no:such_check"]}',
     "input.jsonl:2: unknown IFEval instruction id\\(s\\) no:such_check"),
    ('{"key": 1, "prompt": "Hi.", "instruction_id_list": "punctuation:no_comma"}',
     "input.jsonl:2: the instruction ids must be a list"),
    ('{"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}',
     "input.jsonl:2: 1 instruction ids but 2 kwargs"),
    ("{oops", "input.jsonl:2: not valid JSON"),
])
def test_a_bad_prompt_file_is_one_error_naming_its_line_before_any_generation(line, message, tmp_path):
    from posttrain.errors import UserError

    good = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    path = tmp_path / "input.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        ins.load_prompts(path)
    with pytest.raises(UserError, match="nothing.jsonl: no such file \\(evaluate.instructions.source\\)"):
        ins.load_prompts(tmp_path / "nothing.jsonl")
