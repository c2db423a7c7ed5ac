"""A seeded generator of GSM-style word problems, the default (offline) data.

Real GSM8K is out of a 135M model's reach, so learning would not show on a CPU. These
problems keep GSM8K's shape — a short story, step-by-step reasoning with calculator
annotations, a `#### N` final line — with difficulty set by three knobs: the number
of steps, which operations appear, and how large the numbers are.

    Mia has 7 stickers. She finds 5 more stickers. She gives 3 stickers to a friend.
    How many stickers does Mia have now?

    After finding 5 more, Mia has 7 + 5 = <<7+5=12>>12 stickers.
    After giving 3 away, Mia has 12 - 3 = <<12-3=9>>9 stickers.
    #### 9

Every answer is computed, never typed, and all values stay whole and non-negative.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

NAMES = [
    ("Mia", "She"), ("Liam", "He"), ("Ava", "She"), ("Noah", "He"), ("Zoe", "She"),
    ("Omar", "He"), ("Ines", "She"), ("Kenji", "He"), ("Priya", "She"), ("Lucas", "He"),
    ("Sara", "She"), ("Diego", "He"), ("Hana", "She"), ("Tom", "He"), ("Nadia", "She"),
    ("Ben", "He"), ("Lena", "She"), ("Ravi", "He"), ("Emma", "She"), ("Yusuf", "He"),
]
ITEMS = [
    "apple", "marble", "sticker", "book", "cookie", "pencil", "card", "shell", "stamp",
    "coin", "balloon", "crayon", "button", "candle", "ribbon", "toy car", "seashell", "bead",
]


def _plural(item: str) -> str:
    return item + "s"


class _Story:
    """One problem being written: the running quantity, the story and the solution."""

    def __init__(self, rng: random.Random, max_number: int):
        self.rng = rng
        self.max_number = max_number
        self.name, self.pronoun = rng.choice(NAMES)
        self.items = _plural(rng.choice(ITEMS))
        self.value = 0
        self.story: list[str] = []
        self.steps: list[str] = []

    def _calc(self, left: int, op: str, right: int, result: int) -> str:
        return f"{left} {op} {right} = <<{left}{op}{right}={result}>>{result}"

    # Each operation returns False when it cannot apply to the current value
    # (nothing left to take away, no whole divisor), so the caller picks another.
    def add(self) -> bool:
        more = self.rng.randint(1, self.max_number)
        new = self.value + more
        self.story.append(f"{self.pronoun} finds {more} more {self.items}.")
        self.steps.append(f"After finding {more} more, {self.name} has {self._calc(self.value, '+', more, new)} {self.items}.")
        self.value = new
        return True

    def sub(self) -> bool:
        if self.value < 2:
            return False
        gone = self.rng.randint(1, min(self.value - 1, self.max_number))
        new = self.value - gone
        self.story.append(f"{self.pronoun} gives {gone} {self.items} to a friend.")
        self.steps.append(f"After giving {gone} away, {self.name} has {self._calc(self.value, '-', gone, new)} {self.items}.")
        self.value = new
        return True

    def mul(self) -> bool:
        if self.value * 2 > self.max_number * 10:
            return False
        factor = self.rng.randint(2, min(5, max(2, self.max_number * 10 // self.value)))
        new = self.value * factor
        self.story.append(f"Then {self.pronoun.lower()} ends up with {factor} times as many {self.items} as before.")
        self.steps.append(f"{factor} times as many is {self._calc(self.value, '*', factor, new)} {self.items}.")
        self.value = new
        return True

    def div(self) -> bool:
        divisors = [d for d in range(2, 7) if self.value % d == 0 and self.value // d >= 1]
        if not divisors:
            return False
        parts = self.rng.choice(divisors)
        new = self.value // parts
        self.story.append(f"{self.pronoun} splits them into {parts} equal groups and keeps one group.")
        self.steps.append(f"One of {parts} equal groups is {self._calc(self.value, '/', parts, new)} {self.items}.")
        self.value = new
        return True

    def start(self, use_packs: bool) -> None:
        if use_packs:
            packs = self.rng.randint(2, min(9, self.max_number))
            per_pack = self.rng.randint(2, self.max_number)
            self.value = packs * per_pack
            self.story.append(f"{self.name} buys {packs} packs of {self.items} with {per_pack} {self.items} in each pack.")
            self.steps.append(f"{self.name} buys {self._calc(packs, '*', per_pack, self.value)} {self.items}.")
        else:
            self.value = self.rng.randint(2, self.max_number)
            self.story.append(f"{self.name} has {self.value} {self.items}.")


def generate_problem(
    rng: random.Random, min_steps: int, max_steps: int, operations: Sequence[str], max_number: int
) -> dict[str, str]:
    """One problem in GSM8K's own format: {"question", "answer"} with a `#### N` line."""
    story = _Story(rng, max_number)
    # A "packs" opening is itself a multiplication step.
    use_packs = "mul" in operations and rng.random() < 0.3
    story.start(use_packs)
    for _ in range(rng.randint(min_steps, max_steps) - int(use_packs)):
        for op in rng.sample(list(operations), len(operations)):
            if getattr(story, op)():
                break
    question = " ".join(story.story) + f" How many {story.items} does {story.name} have now?"
    answer = "\n".join(story.steps + [f"#### {story.value}"])
    return {"question": question, "answer": answer}


def generate_problems(
    n: int,
    seed: int,
    min_steps: int = 1,
    max_steps: int = 2,
    operations: Sequence[str] = ("add", "sub", "mul", "div"),
    max_number: int = 20,
) -> list[dict[str, str]]:
    """n distinct problems, the same for the same arguments on every machine.

    Distinct questions matter: a duplicate could land in both train and test.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[dict[str, str]] = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"only {len(problems)} distinct problems found for num_problems={n}; "
                "raise max_number or max_steps, or add operations"
            )
        problem = generate_problem(rng, min_steps, max_steps, operations, max_number)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    return problems
