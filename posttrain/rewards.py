"""The verifiable GSM reward every RL algorithm uses.

    R = w_exact * R_exact + w_format * R_format  [+ w_arith * R_arithmetic]  [+ w_rm * RM(x, y)]
        [- w_length * len(y) / max_len]

- R_exact  = 1 when the strictly parsed final answer (`#### N`) equals the reference;
- R_format = 1 whenever the strict parser finds a well-formed `#### N` line, right or
  wrong: a small shaping bonus that teaches the format early (w_format << w_exact, so
  a right answer always beats a merely well-formatted one);
- R_arithmetic = 1 when the completion writes at least one equation ("3 * 15 = 45") and
  every one it writes is true: a verifiable check of each step, not only of the last
  line. Off by default. Why it exists: most of SFT's wrong answers on the phrasings it
  trained on are slips in a step it set up right (3 * 15 = 42), and a group whose answers
  are all wrong, or all right, gives R_exact no spread to learn from, while its
  equations still differ. All-or-nothing, so writing more true equations pays nothing,
  and a completion with none earns none;
- optional, off by default: the reward model's score, and a length penalty in
  [0, w_length] proportional to the completion's share of the token budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from posttrain.gsm import grade

_OPERAND = r"\$?\d[\d,]*(?:\.\d+)?"
# "a op b [op c ...] = r", as the reasoning lines write it (GSM8K's "48/2 = <<48/2=24>>24" is
# one equation); not preceded by a digit, a point or an operator, so "2 * 3 * 4 = 24" is read whole.
EQUATION = re.compile(rf"(?<![\d.,*/+$-])({_OPERAND}(?:\s*[-+*/]\s*{_OPERAND})+)\s*=\s*(?:<<[^<>]*>>)?\$?"
                      rf"(-?{_OPERAND})")
_TOKEN = re.compile(rf"{_OPERAND}|[-+*/]")


def _value(number: str) -> Fraction:
    return Fraction(number.replace(",", "").replace("$", ""))


def _evaluate(expression: str) -> Fraction | None:
    """+ - * / over non-negative numbers, * and / before + and -; None on division by zero."""
    tokens = _TOKEN.findall(expression)
    terms, signs, term = [], [1], _value(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = _value(number)
        if op == "*":
            term *= value
        elif op == "/":
            if value == 0:
                return None
            term /= value
        else:
            terms.append(term)
            signs.append(1 if op == "+" else -1)
            term = value
    terms.append(term)
    return sum(sign * t for sign, t in zip(signs, terms))


@dataclass(frozen=True)
class Equation:
    operands: tuple[Fraction, ...]
    operators: tuple[str, ...]
    result: Fraction  # as written
    true_result: Fraction | None  # None: a division by zero

    @property
    def true(self) -> bool:
        return self.result == self.true_result


def equations(text: str) -> list[Equation]:
    """Every equation the text writes, in order, with its true value."""
    found = []
    for expression, result in EQUATION.findall(text):
        tokens = _TOKEN.findall(expression)
        found.append(Equation(tuple(_value(t) for t in tokens[0::2]), tuple(tokens[1::2]), _value(result),
                              _evaluate(expression)))
    return found


def equations_checked(completion: str) -> tuple[int, int]:
    """(equations written, of which false) in the completion."""
    written = equations(completion)
    return len(written), sum(not e.true for e in written)


@dataclass(frozen=True)
class RewardWeights:
    exact: float = 1.0
    format: float = 0.1
    arithmetic: float = 0.0
    reward_model: float = 0.0
    length: float = 0.0


def reward_parts(completion: str, reference_answer: str) -> dict[str, float]:
    """The verifier's parts, each 0 or 1."""
    g = grade(completion, reference_answer)
    written, wrong = equations_checked(completion)
    return {"exact": float(g.strict_correct), "format": float(g.well_formatted),
            "arithmetic": float(written > 0 and wrong == 0)}


def total_reward(
    parts: dict[str, float],
    weights: RewardWeights,
    reward_model_score: float | None = None,
    length_fraction: float | None = None,
) -> float:
    """Weighted sum of the parts; the optional terms count only when their weight is set."""
    reward = (weights.exact * parts["exact"] + weights.format * parts["format"]
              + weights.arithmetic * parts["arithmetic"])
    if weights.reward_model:
        if reward_model_score is None:
            raise ValueError("reward weight reward_model is set but no reward-model score was given")
        reward += weights.reward_model * reward_model_score
    if weights.length:
        if length_fraction is None:
            raise ValueError("reward weight length is set but no completion length was given")
        reward -= weights.length * min(max(length_fraction, 0.0), 1.0)
    return reward
