"""Procedural arithmetic word problems with step-by-step equations, GSM8K-Aug style.

Each problem is one line `question||equations #### answer`, the format of Deng et al.'s
augmented GSM8K the paper fine-tunes on, e.g.

    Mia has 12 shells. She finds 7 more. How many shells does Mia have now?||<<12+7=19>> #### 19

A problem starts from a quantity of some object and applies 1..`max_steps` operations (find,
give away, buy packs, double, share into boxes), each a sentence of the question and one or two
`<<a op b = c>>` equations; all intermediate numbers are non-negative integers, divisions are
exact. Train and test problems are distinct questions (seeded, deduplicated).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pipeline_steps.data.task_sources.items import math_item

_PEOPLE = (("Mia", "She"), ("Noah", "He"), ("Ava", "She"), ("Liam", "He"), ("Zoe", "She"),
           ("Omar", "He"), ("Ines", "She"), ("Kai", "He"), ("Lena", "She"), ("Tomas", "He"),
           ("Priya", "She"), ("Jonah", "He"), ("Sofia", "She"), ("Emeka", "He"))
_OBJECTS = ("shells", "marbles", "stickers", "pencils", "apples", "stamps", "cards", "beads",
            "cookies", "coins", "books", "buttons")
_FRIENDS = ("a friend", "a neighbour", "a cousin", "the teacher", "a classmate")


@dataclass(frozen=True)
class Problem:
    """One generated problem."""

    question: str
    equations: tuple[str, ...]
    """`<<expression=result>>` steps, in order."""
    answer: int

    def line(self) -> str:
        return f"{self.question}||{' '.join(self.equations)} #### {self.answer}"


def _eq(a: int, op: str, b: int, result: int) -> str:
    return f"<<{a}{op}{b}={result}>>"


# A step takes (current amount, pronoun, object, rng) and returns
# (sentence, equations, new amount), or None when it does not apply to this amount.
Step = Callable[[int, str, str, random.Random], "tuple[str, list[str], int] | None"]


def _find(n: int, she: str, obj: str, rng: random.Random):
    k = rng.randint(2, 30)
    return f"{she} finds {k} more {obj}.", [_eq(n, "+", k, n + k)], n + k


def _give(n: int, she: str, obj: str, rng: random.Random):
    if n < 2:
        return None
    k = rng.randint(1, n - 1)
    return f"{she} gives {k} {obj} to {rng.choice(_FRIENDS)}.", [_eq(n, "-", k, n - k)], n - k


def _packs(n: int, she: str, obj: str, rng: random.Random):
    packs, each = rng.randint(2, 6), rng.randint(2, 12)
    total = packs * each
    sentence = f"{she} buys {packs} packs with {each} {obj} in each pack."
    return sentence, [_eq(packs, "*", each, total), _eq(n, "+", total, n + total)], n + total


def _double(n: int, she: str, obj: str, rng: random.Random):
    if n > 250:
        return None  # keeps numbers small enough for tiny models' vocabularies
    return f"Then the number of {obj} {she.lower()} has doubles.", [_eq(n, "*", 2, 2 * n)], 2 * n


STEPS: tuple[Step, ...] = (_find, _give, _packs, _double)


def make_problem(rng: random.Random, max_steps: int) -> Problem:
    name, she = rng.choice(_PEOPLE)
    obj = rng.choice(_OBJECTS)
    amount = rng.randint(3, 60)
    sentences, equations = [f"{name} has {amount} {obj}."], []
    for _ in range(rng.randint(1, max_steps)):
        step = None
        while step is None:
            step = rng.choice(STEPS)(amount, she, obj, rng)
        sentence, eqs, amount = step
        sentences.append(sentence)
        equations += eqs
    boxes = [b for b in range(2, 7) if amount % b == 0 and amount // b > 1]
    if boxes and rng.random() < 0.3:
        # Ending with an exact division makes some answers smaller than the running total.
        b = rng.choice(boxes)
        sentences.append(f"{she} puts all the {obj} into {b} boxes with the same number in "
                         f"each. How many {obj} are in each box?")
        equations.append(_eq(amount, "/", b, amount // b))
        amount //= b
    else:
        sentences.append(f"How many {obj} does {name} have now?")
    return Problem(" ".join(sentences), tuple(equations), amount)


def generate(n_train: int, n_test: int, max_steps: int,
             seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, test): `n_train` and `n_test` distinct problems, no question in both."""
    rng = random.Random(f"math:{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < n_train + n_test:
        attempts += 1
        if attempts > 20 * (n_train + n_test) + 1000:
            raise ValueError(f"could not make {n_train + n_test} distinct problems with "
                             f"max_steps={max_steps}; ask for fewer or allow more steps")
        problem = make_problem(rng, max_steps)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems[n_test:], problems[:n_test]


def as_items(problems: list[Problem], split: str) -> list[dict]:
    """The GSM8K-shaped items (`items.math_item`) the evaluator reads, ids `<split>/<k>`."""
    return [math_item(f"{split}/{k}", p.question, str(p.answer)) for k, p in enumerate(problems)]
