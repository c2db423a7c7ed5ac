"""A seeded generator of GSM-style word problems, the default (offline) data.

Real GSM8K is out of a 135M model's reach, so learning would not show on a CPU. These
problems keep GSM8K's shape — a short story, step-by-step reasoning with calculator
annotations, a `#### N` final line — with difficulty set by three knobs: the number
of steps, which operations appear, and how large the numbers are.

    Mia starts with 7 stickers. Her aunt sends her 5 extra stickers. Omar is 9 years
    old. She sells 3 stickers. How many stickers does Mia end up with?

    After getting 5 more, Mia has 7 + 5 = <<7+5=12>>12 stickers.
    After 3 are gone, Mia has 12 - 3 = <<12-3=9>>9 stickers.
    #### 9

Every answer is computed, never typed, and all values stay whole and non-negative.

Why many phrasings, and why some are held out
---------------------------------------------
With one sentence per operation, a model can pass the test by recognising the
generator's sentences instead of reading the problem: on word problems phrased
differently, an SFT checkpoint that scored 0.62 here scored 0.375. So each part of a
story (the opening, each operation, an irrelevant fact, the question) has several
phrasings, a *template family*, and the last `held_out_fraction` of every family is
never used for training: `templates="held_out"` writes problems only from those
phrasings, so the test can report accuracy on phrasings the model never saw beside
accuracy on the seen ones. The reasoning lines keep one form per operation: that is
the answer format taught, not the problem being read.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

NAMES = [
    ("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"),
    ("Omar", "he"), ("Ines", "she"), ("Kenji", "he"), ("Priya", "she"), ("Lucas", "he"),
    ("Sara", "she"), ("Diego", "he"), ("Hana", "she"), ("Tom", "he"), ("Nadia", "she"),
    ("Ben", "he"), ("Lena", "she"), ("Ravi", "he"), ("Emma", "she"), ("Yusuf", "he"),
    ("Chloe", "she"), ("Mateo", "he"), ("Aisha", "she"), ("Jonas", "he"), ("Mei", "she"),
    ("Samuel", "he"), ("Fatima", "she"), ("Arjun", "he"), ("Grace", "she"), ("Felix", "he"),
]
ITEMS = [
    "apple", "marble", "sticker", "book", "cookie", "pencil", "card", "shell", "stamp",
    "coin", "balloon", "crayon", "button", "candle", "ribbon", "toy car", "seashell", "bead",
    "orange", "cupcake", "rock", "comic", "puzzle", "flower", "kite", "sock", "dollar",
    "egg", "plum", "notebook", "feather", "lemon", "muffin", "ticket", "postcard", "toy robot",
]
POSSESSIVE = {"she": "her", "he": "his"}
OBJECT = {"she": "her", "he": "him"}

# Template families. Placeholders: {name} {pro} {Pro} {obj} {pos} {Pos} {friend}
# {items} {n} (the amount of this step) {other} {x} {age} {hours} (unrelated amounts).
# The last held_out_fraction of each list is held out of training.
START = [
    "{name} has {n} {items}.",
    "{name} starts with {n} {items}.",
    "There are {n} {items} in {name}'s box.",
    "{name} owns {n} {items}.",
    "{name} collected {n} {items} last month.",
    "At first, {name} had {n} {items}.",
]
PACKS = [  # {k} containers of {m}: itself a multiplication step
    "{name} buys {k} packs of {items} with {m} {items} in each pack.",
    "{name} has {k} bags, and each bag holds {m} {items}.",
    "{name} gets {k} boxes of {items}. Every box contains {m} {items}.",
    "{name} picks up {k} bundles of {m} {items} each.",
]
ADD = [
    "{Pro} finds {n} more {items}.",
    "{friend} gives {obj} {n} {items}.",
    "{Pro} buys {n} more {items} at the store.",
    "Then {pro} receives {n} {items} as a gift.",
    "Later, {pro} collects another {n} {items}.",
    "{Pro} wins {n} {items} in a game.",
    "{Pos} aunt sends {obj} {n} extra {items}.",
    "After school, {pro} picks up {n} additional {items}.",
]
SUB = [
    "{Pro} gives {n} {items} to a friend.",
    "{Pro} loses {n} of them.",
    "{Pro} sells {n} {items}.",
    "{friend} borrows {n} {items} from {obj}.",
    "{Pro} uses {n} {items} for a school project.",
    "{Pro} donates {n} {items} to the library.",
    "{Pro} trades away {n} of {pos} {items}.",
    "On the way home, {pro} drops {n} {items} and cannot find them.",
]
MUL = [
    "Then {pro} ends up with {n} times as many {items} as before.",
    "{Pro} now has {n} times as many {items} as {pro} had.",
    "The number of {items} {pro} has grows to {n} times what it was.",
    "By the weekend {pos} pile of {items} is {n} times as big.",
    "Each of {pos} {items} is swapped for {n} new ones.",
]
DIV = [
    "{Pro} splits them into {n} equal groups and keeps one group.",
    "{Pro} puts them into {n} boxes with the same number in each and keeps one box.",
    "{Pro} keeps only one of {n} equal piles of {items}.",
    "{Pro} divides the {items} evenly among {n} bags and takes one bag home.",
    "{Pro} shares them equally among {n} children, {obj}self included, and keeps {pos} share.",
]
DISTRACTOR = [  # irrelevant facts: reading the problem means ignoring them
    "{friend} has {x} {other}.",
    "{name} is {age} years old.",
    "It takes {name} {x} minutes to walk to school.",
    "{friend} owns {x} {other}.",
    "The store is open {hours} hours a day.",
    "{Pos} sister has {x} {other} too.",
]
QUESTION = [
    "How many {items} does {name} have now?",
    "How many {items} does {name} have in the end?",
    "How many {items} does {name} end up with?",
    "What is the number of {items} {name} has now?",
    "Find how many {items} {name} has at the end.",
    "How many {items} are left with {name} at the end?",
    "In total, how many {items} does {name} have now?",
    "Count the {items} {name} has after all this.",
]
FAMILIES = {"start": START, "packs": PACKS, "add": ADD, "sub": SUB, "mul": MUL, "div": DIV,
            "distractor": DISTRACTOR, "question": QUESTION}
TEMPLATE_SETS = ("seen", "held_out")
DISTRACTOR_PROBABILITY = 0.3


def _plural(item: str) -> str:
    return item if item.endswith("s") else item + "s"


def template_choices(templates: str, held_out_fraction: float) -> dict[str, list[str]]:
    """Each family's phrasings for one template set: the seen ones, or the held-out tail."""
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates must be one of {TEMPLATE_SETS}, got {templates!r}")
    choices = {}
    for family, phrasings in FAMILIES.items():
        n_held_out = max(1, math.ceil(len(phrasings) * held_out_fraction)) if held_out_fraction > 0 else 0
        cut = len(phrasings) - n_held_out
        choices[family] = phrasings[:cut] if templates == "seen" else phrasings[cut:]
    return choices


class _Story:
    """One problem being written: the running quantity, the story and the solution."""

    def __init__(self, rng: random.Random, max_number: int, phrasings: dict[str, list[str]]):
        self.rng = rng
        self.max_number = max_number
        self.phrasings = phrasings
        (self.name, pronoun), (friend, _) = rng.sample(NAMES, 2)
        item, other = rng.sample(ITEMS, 2)
        self.items = _plural(item)
        self.words = {"name": self.name, "pro": pronoun, "Pro": pronoun.capitalize(),
                      "obj": OBJECT[pronoun], "pos": POSSESSIVE[pronoun],
                      "Pos": POSSESSIVE[pronoun].capitalize(), "friend": friend,
                      "items": self.items, "other": _plural(other)}
        self.value = 0
        self.story: list[str] = []
        self.steps: list[str] = []

    def _say(self, family: str, **amounts: int) -> None:
        self.story.append(self.rng.choice(self.phrasings[family]).format(**self.words, **amounts))

    def _calc(self, left: int, op: str, right: int, result: int) -> str:
        return f"{left} {op} {right} = <<{left}{op}{right}={result}>>{result}"

    # Each operation returns False when it cannot apply to the current value
    # (nothing left to take away, no whole divisor), so the caller picks another.
    def add(self) -> bool:
        more = self.rng.randint(1, self.max_number)
        new = self.value + more
        self._say("add", n=more)
        self.steps.append(f"After getting {more} more, {self.name} has {self._calc(self.value, '+', more, new)} {self.items}.")
        self.value = new
        return True

    def sub(self) -> bool:
        if self.value < 2:
            return False
        gone = self.rng.randint(1, min(self.value - 1, self.max_number))
        new = self.value - gone
        self._say("sub", n=gone)
        self.steps.append(f"After {gone} are gone, {self.name} has {self._calc(self.value, '-', gone, new)} {self.items}.")
        self.value = new
        return True

    def mul(self) -> bool:
        if self.value * 2 > self.max_number * 10:
            return False
        factor = self.rng.randint(2, min(5, max(2, self.max_number * 10 // self.value)))
        new = self.value * factor
        self._say("mul", n=factor)
        self.steps.append(f"{factor} times as many is {self._calc(self.value, '*', factor, new)} {self.items}.")
        self.value = new
        return True

    def div(self) -> bool:
        divisors = [d for d in range(2, 7) if self.value % d == 0 and self.value // d >= 1]
        if not divisors:
            return False
        parts = self.rng.choice(divisors)
        new = self.value // parts
        self._say("div", n=parts)
        self.steps.append(f"One of {parts} equal parts is {self._calc(self.value, '/', parts, new)} {self.items}.")
        self.value = new
        return True

    def start(self, use_packs: bool) -> None:
        if use_packs:
            packs = self.rng.randint(2, min(9, self.max_number))
            per_pack = self.rng.randint(2, self.max_number)
            self.value = packs * per_pack
            self._say("packs", k=packs, m=per_pack)
            self.steps.append(f"{self.name} starts with {self._calc(packs, '*', per_pack, self.value)} {self.items}.")
        else:
            self.value = self.rng.randint(2, self.max_number)
            self._say("start", n=self.value)

    def distract(self) -> None:
        """An irrelevant fact somewhere after the opening."""
        sentence = self.rng.choice(self.phrasings["distractor"]).format(
            **self.words, x=self.rng.randint(2, 40), age=self.rng.randint(6, 14), hours=self.rng.randint(6, 12))
        self.story.insert(self.rng.randint(1, len(self.story)), sentence)


def generate_problem(
    rng: random.Random, min_steps: int, max_steps: int, operations: Sequence[str], max_number: int,
    phrasings: dict[str, list[str]] | None = None,
) -> dict[str, str]:
    """One problem in GSM8K's own format: {"question", "answer"} with a `#### N` line."""
    story = _Story(rng, max_number, phrasings or FAMILIES)
    # A "packs" opening is itself a multiplication step.
    use_packs = "mul" in operations and rng.random() < 0.3
    story.start(use_packs)
    for _ in range(rng.randint(min_steps, max_steps) - int(use_packs)):
        for op in rng.sample(list(operations), len(operations)):
            if getattr(story, op)():
                break
    if rng.random() < DISTRACTOR_PROBABILITY:
        story.distract()
    question = " ".join(story.story + [rng.choice(story.phrasings["question"]).format(**story.words)])
    answer = "\n".join(story.steps + [f"#### {story.value}"])
    return {"question": question, "answer": answer}


def generate_problems(
    n: int,
    seed: int,
    min_steps: int = 1,
    max_steps: int = 2,
    operations: Sequence[str] = ("add", "sub", "mul", "div"),
    max_number: int = 20,
    templates: str = "seen",
    held_out_fraction: float = 0.25,
) -> list[dict[str, str]]:
    """n distinct problems, the same for the same arguments on every machine, written
    with the seen or the held-out phrasings (`templates`), each tagged with which.

    Distinct questions matter: a duplicate could land in both train and test.
    """
    phrasings = template_choices(templates, held_out_fraction)
    # Another stream for each template set: held-out problems do not replay the seen ones' numbers.
    rng = random.Random(f"{seed}:{templates}" if templates != "seen" else seed)
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
        problem = generate_problem(rng, min_steps, max_steps, operations, max_number, phrasings)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem | {"templates": templates})
    return problems
