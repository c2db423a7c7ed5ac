"""posttrain.equations: the one reader of arithmetic steps and the one evaluator, shared by
the reward's per-step check, the calculator tool and bench/gsm_errors.py."""

import random
import re
from fractions import Fraction

import pytest

from posttrain.equations import EQUATION, ExpressionError, equations, equations_checked, evaluate

@pytest.mark.parametrize(
    ("completion", "written", "wrong"),
    [
        ("Lucas starts with 3 * 15 = 42 pencils.\nAfter getting 6 more, Lucas has 42 + 6 = 48 pencils.", 2, 1),
        ("4 times as big is 13 * 4 = 52 crayons.\nChloe has 52 + 27 = 89 crayons.", 2, 1),  # sft's own slips
        ("2 * 3 * 4 = 24", 1, 0),  # a chain is read whole, not as its tail "3 * 4 = 24"
        ("2 + 3 * 4 = 14", 1, 0),  # * before +
        ("2 + 3 * 4 = 20", 1, 1),
        ("20 - 4 - 6 = 10", 1, 0),  # left to right
        ("7 - 10 = -3", 1, 0),
        ("10 / 4 = 2.5 and 9 / 3 = 3.", 2, 0),  # the sentence's full stop is not a decimal point
        ("1,200 + 5 = 1,205", 1, 0),
        ("He pays $5 * 3 = $15.", 1, 0),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.", 1, 0),  # GSM8K's calculator annotation: one equation
        ("<<3*15=45>>45 pencils", 1, 0),
        ("Natalia sold 48/2 = <<48/2=24>>25 clips.", 1, 1),
        ("5 / 0 = 1", 1, 1),
        ("She has 12 apples.\n#### 12", 0, 0),
    ],
)
def test_equations_checked(completion, written, wrong):
    assert equations_checked(completion) == (written, wrong)


@pytest.mark.parametrize(("expression", "value"), [
    ("10 / 3", Fraction(10, 3)),  # exact: "10 / 3 = 3.33" is not true
    ("0.1 + 0.2", Fraction(3, 10)),  # the written decimals, not their floats (0.30000000000000004)
    ("3 * 05", 15),  # a written leading zero
    ("10.05 - 0.05", 10),  # a zero after the point is not a leading zero
    ("$1,200.50 * 2", Fraction(2401)),
    ("-(3 + 4) * 2", -14),  # the tool's expressions may have unary minus and parentheses
    ("20 - 4 - 6", 10),
    ("9\xa0+ 8", 17),  # a no-break space, as GSM8K writes one
    ("9 +\n8", 17),  # a step broken over two lines
])
def test_evaluate_is_exact(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(("expression", "error"), [
    ("1 / (2 - 2)", "division by zero"), ("2 ** 3", "not an arithmetic expression"),
    ("abs(-2)", "not an arithmetic expression"), ("3 *", "not an arithmetic expression"),
    ("True + 1", "not an arithmetic expression"), ("2j * 2", "not an arithmetic expression")])
def test_evaluate_refuses_anything_but_arithmetic(expression, error):
    with pytest.raises(ExpressionError, match=re.escape(error)):
        evaluate(expression)


def test_an_equation_keeps_its_operands_and_operators_in_the_order_written():
    chain, by_zero = equations("So 2 + 3 * 4 = 14, and 7 / 0 = 1.")
    assert (chain.operands, chain.operators, chain.result, chain.true_result) == ((2, 3, 4), ("+", "*"), 14, 14)
    assert chain.true
    assert (by_zero.operands, by_zero.operators, by_zero.true_result, by_zero.true) == ((7, 0), ("/",), None, False)


def test_a_run_on_chain_is_an_equation_that_is_not_true_and_crashes_nothing():
    """A degenerate sample's "1 + 1 + ... = 5" of thousands of terms would nest Python's
    parser past its recursion limit; it is read as one equation, never true."""
    for terms in (102, 5000):  # 101 operators and more
        (chain,) = equations(" + ".join(["1"] * terms) + f" = {terms}")
        assert (chain.true, chain.operands) == (False, ())
    assert equations(" + ".join(["1"] * 101) + " = 101")[0].true  # 100 operators: a chain like any other
    with pytest.raises(ExpressionError, match="more than 100 operators"):
        evaluate(" + ".join(["1"] * 102))


def written_number(rng: random.Random) -> str:
    shapes = [lambda: str(rng.randint(0, 99)), lambda: f"{rng.randint(1, 9)},{rng.randint(0, 999):03d}",
              lambda: f"${rng.randint(1, 50)}", lambda: f"0{rng.randint(1, 9)}",
              lambda: f"{rng.randint(0, 20)}.{rng.randint(0, 99)}"]
    return rng.choice(shapes)()


def test_every_chain_the_reader_finds_evaluates_as_python_does_with_fractions():
    """Random flat chains in the shapes completions write (thousands commas, dollar signs,
    leading zeros, decimals): the reader finds each one whole, and its value equals Python's
    own evaluation of the same chain over Fraction operands."""
    rng = random.Random(0)
    for _ in range(500):
        numbers = [written_number(rng) for _ in range(rng.randint(2, 5))]
        operators = [rng.choice("+-*/") for _ in numbers[1:]]
        expression = numbers[0] + "".join(f" {op} {n}" for op, n in zip(operators, numbers[1:]))
        operands = [Fraction(n.replace(",", "").replace("$", "")) for n in numbers]
        python = "operands[0]" + "".join(f" {op} operands[{i}]" for i, op in enumerate(operators, 1))
        try:
            expected = eval(python)  # noqa: S307 -- our own string of indexed Fractions
        except ZeroDivisionError:
            expected = None
        (found,) = equations(f"Then {expression} = 7 apples.")
        assert (list(found.operands), list(found.operators), found.true_result) == (operands, operators, expected)
        assert EQUATION.search(f"{expression} = 7").group(1) == expression
