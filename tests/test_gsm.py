"""Answer parsing and checking, on real GSM8K answer formats and model-style completions."""

import pytest

from posttrain.gsm import (
    AnswerFormatError,
    extract_flexible,
    extract_strict,
    grade,
    normalize_number,
    numbers_equal,
    parse_reference,
)

# Verbatim GSM8K train answers (MIT licence), chosen for their formats.
NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
WENG = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
COMMAS = "The total is 1,000 + 200 = <<1000+200=1200>>1,200 dollars.\n#### 1,200"
NEGATIVE = "The temperature fell 3 - 8 = <<3-8=-5>>-5 degrees.\n#### -5"
DECIMAL = "Each share is 7/2 = <<7/2=3.5>>3.5 pounds.\n#### 3.5"


@pytest.mark.parametrize(
    ("answer", "final", "reasoning_start"),
    [
        (NATALIA, "72", "Natalia sold 48/2 = 24 clips in May."),
        (WENG, "10", "Weng earns 12/60 = $0.2 per minute."),
        (COMMAS, "1200", "The total is 1,000 + 200 = 1,200 dollars."),
        (NEGATIVE, "-5", "The temperature fell 3 - 8 = -5 degrees."),
        (DECIMAL, "3.5", "Each share is 7/2 = 3.5 pounds."),
    ],
)
def test_parse_reference_strips_annotations_and_normalises(answer, final, reasoning_start):
    ref = parse_reference(answer)
    assert ref.answer == final
    assert ref.reasoning.splitlines()[0] == reasoning_start
    assert "<<" not in ref.reasoning and "####" not in ref.reasoning
    assert ref.solution.endswith(f"\n#### {final}")


@pytest.mark.parametrize("bad", ["The answer is 72.", "#### seventy-two", "#### ", ""])
def test_parse_reference_rejects_malformed(bad):
    with pytest.raises(AnswerFormatError):
        parse_reference(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72", "72"), ("$1,250.00", "1250"), ("-0.50", "-0.5"), ("-$5", "-5"), ("$-5", "-5"),
        ("3.", "3"), (".5", "0.5"), ("1,000,000", "1000000"), ("-0", "0"), ("10.0", "10"),
        ("abc", None), ("", None), ("5-3", None), ("1e3", "1000"),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("completion", "strict", "flexible"),
    [
        # the trained format
        ("He has 5 + 3 = 8 apples.\n#### 8", "8", "8"),
        # currency and commas on the answer line
        ("Total: 1,200 dollars.\n#### $1,200", "1200", "1200"),
        # the first #### line counts for strict; flexible takes the last number
        ("So 4 * 5 = 20.\n#### 20\n#### 25", "20", "25"),
        # no #### line: strict fails, flexible still finds the last number
        ("She has 3 + 2 = 5 cookies. The answer is 5.", None, "5"),
        ("The answer is: -7", None, "-7"),
        ("I think it is 3.5 pounds.", None, "3.5"),
        # sentence-final period and bold markdown around the answer
        ("The answer is **42**.", None, "42"),
        ("####42", "42", "42"),
        ("#### -3.25", "-3.25", "-3.25"),
        ("no numbers at all", None, None),
        ("", None, None),
    ],
)
def test_extract_from_model_style_completions(completion, strict, flexible):
    assert extract_strict(completion) == strict
    assert extract_flexible(completion) == flexible


def test_grade_compares_numbers_not_strings():
    g = grade("12 / 4 = 3.0\n#### 3.00", "3")
    assert g.strict_correct and g.flexible_correct and g.well_formatted
    wrong = grade("#### 4", "3")
    assert not wrong.strict_correct and wrong.well_formatted
    unformatted = grade("The answer is 3", "3")
    assert not unformatted.strict_correct and unformatted.flexible_correct and not unformatted.well_formatted


def test_numbers_equal():
    assert numbers_equal("1,000", "1000")
    assert not numbers_equal("1000", "100")
    assert not numbers_equal(None, "1")
