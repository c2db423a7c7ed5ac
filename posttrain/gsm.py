"""GSM8K answers: parsing references, extracting a model's answer, and checking it.

Reference answers (GSM8K format) are step-by-step reasoning with calculator
annotations and a last line `#### N`:

    Natalia sold 48/2 = <<48/2=24>>24 clips in May.
    #### 72

Two ways to read a model's completion, as in lm-evaluation-harness:
- strict:   the number on the first `#### N` line. This is the format we train for,
            so only it counts as "well formatted".
- flexible: the last number anywhere in the completion; credits right answers in the
            wrong format, so strict-minus-flexible measures format problems.

Numbers are compared as exact decimals after normalisation: "$1,250.00" == "1250".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
# A number as people and models write it: optional sign and currency, thousands
# commas, decimals. "-$5", "$-5", "1,234.5", ".5", "3." are all accepted.
_NUMBER = r"-?\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
STRICT_ANSWER = re.compile(r"####\s*(?P<number>" + _NUMBER + r")")
ANY_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w])")


class AnswerFormatError(ValueError):
    """A reference answer that does not follow the GSM8K format."""


def normalize_number(text: str) -> str | None:
    """Canonical string of a number ("$1,250.00" -> "1250", "-0.50" -> "-0.5"), or None."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if cleaned.count("-") > 1 or ("-" in cleaned and not cleaned.startswith("-")):
        return None
    if cleaned in {"", "-", "."}:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    # normalize() drops trailing zeros; format "f" avoids scientific notation (1E+3).
    canonical = format(value.normalize(), "f")
    return "0" if canonical in {"-0", "0"} else canonical


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    return na is not None and na == nb


@dataclass(frozen=True)
class Reference:
    reasoning: str  # the steps, calculator annotations stripped
    answer: str  # the canonical final number

    @property
    def solution(self) -> str:
        """The completion we train the model to write: reasoning, then `#### N`."""
        return f"{self.reasoning}\n#### {self.answer}" if self.reasoning else f"#### {self.answer}"


def parse_reference(answer: str) -> Reference:
    """Split a GSM8K answer into reasoning and final number; raise AnswerFormatError."""
    if "####" not in answer:
        raise AnswerFormatError("no '#### N' final-answer line")
    reasoning, _, final = answer.rpartition("####")
    number = normalize_number(final.strip().split("\n")[0])
    if number is None:
        raise AnswerFormatError(f"final answer {final.strip()[:40]!r} is not a number")
    reasoning = CALCULATOR_ANNOTATION.sub("", reasoning)
    reasoning = "\n".join(line.rstrip() for line in reasoning.strip().splitlines() if line.strip())
    return Reference(reasoning=reasoning, answer=number)


def extract_strict(completion: str) -> str | None:
    """The number on the first `#### N` line, normalised; None when there is none."""
    for match in STRICT_ANSWER.finditer(completion):
        number = normalize_number(match.group("number"))
        if number is not None:
            return number
    return None


def extract_flexible(completion: str) -> str | None:
    """The last number anywhere in the completion, normalised; None when there is none."""
    candidates = (normalize_number(m.group(0)) for m in ANY_NUMBER.finditer(completion) if m.group(0))
    found = [c for c in candidates if c is not None]
    return found[-1] if found else None


@dataclass(frozen=True)
class Grade:
    strict: str | None
    flexible: str | None
    strict_correct: bool
    flexible_correct: bool

    @property
    def well_formatted(self) -> bool:
        return self.strict is not None


def grade(completion: str, reference_answer: str) -> Grade:
    strict = extract_strict(completion)
    flexible = extract_flexible(completion)
    return Grade(
        strict=strict,
        flexible=flexible,
        strict_correct=numbers_equal(strict, reference_answer),
        flexible_correct=numbers_equal(flexible, reference_answer),
    )
