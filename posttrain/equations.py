"""Arithmetic as GSM solutions write it: the equations a text writes ("3 * 15 = 45"), and
the exact value of an expression. One reader and one evaluator serve the reward's check of
each step (posttrain/rewards.py), the calculator tool and the rewriting of worked
solutions into tool calls (posttrain/tool_use.py), and bench/gsm_errors.py.

Values are exact fractions, so "10 / 4 = 2.5" is true and "10 / 3 = 3.33" is not; an
expression is parsed by Python's own parser (numbers, + - * /, unary minus, parentheses),
and anything else in it is an ExpressionError."""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from fractions import Fraction

_OPERAND = r"\$?\d[\d,]*(?:\.\d+)?"
# "a op b [op c ...] = r", as the reasoning lines write it (GSM8K's "48/2 = <<48/2=24>>24" is
# one equation); not preceded by a digit, a point or an operator, so "2 * 3 * 4 = 24" is read whole.
# Group 1 is the expression, group 2 the written result (a "$" before it stays outside).
EQUATION = re.compile(rf"(?<![\d.,*/+$-])({_OPERAND}(?:\s*[-+*/]\s*{_OPERAND})+)\s*=\s*(?:<<[^<>]*>>)?\$?"
                      rf"(-?{_OPERAND})")
# Written leading zeros ("3 * 05") are not Python literals; a zero before a decimal point stays.
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
# The reader's \s takes any whitespace, a line break or a no-break space included; Python's parser takes spaces.
_WHITESPACE = re.compile(r"\s+")
# Steps write a few operations; a run-on chain ("1 + 1 + 1 + ...", a degenerate sample) is
# not evaluated: it would nest Python's parser past its recursion limit (~1,000 operators).
MAX_OPERATORS = 100
_OPERATOR = re.compile(r"[-+*/]")
_OPERATORS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
              ast.Div: ("/", operator.truediv)}


class ExpressionError(ValueError):
    """Not arithmetic (a name, a call, a power, a syntax error), or a division by zero."""


class ExpressionTooLong(ExpressionError):
    """More than MAX_OPERATORS operators."""


@dataclass(frozen=True)
class Equation:
    operands: tuple[Fraction, ...]  # in the order written
    operators: tuple[str, ...]  # in the order written: "+", "-", "*", "/"
    result: Fraction  # as written
    true_result: Fraction | None  # None: a division by zero

    @property
    def true(self) -> bool:
        return self.result == self.true_result


def number(text: str) -> Fraction:
    """A number as solutions write it: "$1,200.50" is 1200.5."""
    return Fraction(text.replace(",", "").replace("$", ""))


def _parse(expression: str) -> tuple[Fraction | None, list[Fraction], list[str]]:
    """(value, None on a division by zero; the operands and operators, in the order written)."""
    source = _LEADING_ZEROS.sub("", _WHITESPACE.sub(" ", expression.replace(",", "").replace("$", ""))).strip()
    if len(_OPERATOR.findall(source)) > MAX_OPERATORS:
        raise ExpressionTooLong(f"more than {MAX_OPERATORS} operators")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"not an arithmetic expression: {expression!r}") from error
    operands: list[Fraction] = []
    operators: list[str] = []

    def value(node: ast.expr) -> Fraction | None:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            operands.append(Fraction(ast.get_source_segment(source, node)))  # the literal, not its float
            return operands[-1]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if inner is not None and isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            symbol, apply = _OPERATORS[type(node.op)]
            left = value(node.left)
            operators.append(symbol)
            right = value(node.right)
            if left is None or right is None or (symbol == "/" and right == 0):
                return None  # every operand is still read, for the caller's record of the equation
            return apply(left, right)
        raise ExpressionError(f"not an arithmetic expression: {expression!r}")

    return value(tree.body), operands, operators


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; ExpressionError if it has none."""
    result, _, _ = _parse(expression)
    if result is None:
        raise ExpressionError("division by zero")
    return result


def equations(text: str) -> list[Equation]:
    """Every equation the text writes, in order, with its true value. A run-on chain of
    more than MAX_OPERATORS operators is read as an equation that is not true, with no
    operands: a reward never pays for one, and it crashes nothing."""
    found = []
    for expression, result in EQUATION.findall(text):
        try:
            true_result, operands, operators = _parse(expression)
        except ExpressionTooLong:
            true_result, operands, operators = None, [], []
        found.append(Equation(tuple(operands), tuple(operators), number(result), true_result))
    return found


def equations_checked(text: str) -> tuple[int, int]:
    """(equations written, of which false) in the text."""
    written = equations(text)
    return len(written), sum(not e.true for e in written)
