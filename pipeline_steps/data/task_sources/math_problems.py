"""Procedural arithmetic word problems with step-by-step equations, GSM8K-Aug style.

Each problem is one line `question||equations #### answer`, the format of Deng et al.'s
augmented GSM8K the paper fine-tunes on, e.g.

    Mia has 12 shells. She finds 7 more. How many shells does Mia have now?||<<12+7=19>> #### 19

A problem starts from a quantity of some object and applies `min_steps`..`max_steps` operations
(find, give away, buy packs, double), each a sentence of the question and one or two
`<<a op b = c>>` equations, then asks for the total or for an exact share into boxes; all
numbers are non-negative integers. Its template is that sequence of operations and the question
asked. Train and test are disjoint by template AND by numbers: a seeded share of the templates
and of the starting quantities belongs to test only, so a test problem is never a train problem
with other numbers or a train problem's numbers in other words.
"""
from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline_steps.core.errors import InputError
from pipeline_steps.data.task_sources.items import math_item

_PEOPLE = (("Mia", "She"), ("Noah", "He"), ("Ava", "She"), ("Liam", "He"), ("Zoe", "She"),
           ("Omar", "He"), ("Ines", "She"), ("Kai", "He"), ("Lena", "She"), ("Tomas", "He"),
           ("Priya", "She"), ("Jonah", "He"), ("Sofia", "She"), ("Emeka", "He"))
_OBJECTS = ("shells", "marbles", "stickers", "pencils", "apples", "stamps", "cards", "beads",
            "cookies", "coins", "books", "buttons")
_FRIENDS = ("a friend", "a neighbour", "a cousin", "the teacher", "a classmate")
MARK = "####"
MIN_START = 3


@dataclass(frozen=True)
class Problem:
    """One generated problem."""

    question: str
    equations: tuple[str, ...]
    """`<<expression=result>>` steps, in order."""
    answer: int
    template: tuple[str, ...] = ()
    """The operations' names in order, then the question asked (`total` or `boxes`)."""
    start: int = 0
    """The starting quantity."""

    def line(self) -> str:
        return format_line(self.question, " ".join(self.equations), self.answer)

    @property
    def numbers(self) -> tuple[int, ...]:
        """The numbers the question states, in order."""
        return tuple(int(n) for n in re.findall(r"\d+", self.question))


def format_line(question: str, equations: str, answer: object) -> str:
    return f"{question}||{equations} {MARK} {answer}"


def parse_line(line: str, where: str) -> tuple[str, str, str]:
    """(question, equations, answer) of a `question||equations #### answer` line; anything else is
    an InputError naming `where` (file:line)."""
    question, bar, rest = line.partition("||")
    equations, mark, answer = rest.rpartition(MARK)
    if not bar or not mark or not question.strip() or not answer.strip():
        raise InputError(f"{where}: expected `question||equations {MARK} answer`, got {line.strip()!r:.80}")
    return question.strip(), equations.strip(), answer.strip()


def read_lines(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(`file:line`, line) of the first `limit` non-blank lines of `path`, each checked by parse_line."""
    with Path(path).open(encoding="utf-8") as f:
        lines = [(f"{path}:{k}", line.rstrip("\n")) for k, line in enumerate(f, 1) if line.strip()]
    chosen = lines if limit is None else lines[:limit]
    for where, line in chosen:
        parse_line(line, where)
    return chosen


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


STEPS: dict[str, Step] = {"find": _find, "give": _give, "packs": _packs, "double": _double}
ENDINGS = ("total", "boxes")


def templates(min_steps: int, max_steps: int) -> list[tuple[str, ...]]:
    """Every template: each sequence of min_steps..max_steps operations, then each ending."""
    return [(*ops, end) for k in range(min_steps, max_steps + 1)
            for ops in itertools.product(STEPS, repeat=k) for end in ENDINGS]


def make_problem(rng: random.Random, template: tuple[str, ...], start: int) -> Problem | None:
    """The problem of `template` from `start` (names, objects and step numbers drawn from rng), or
    None when an operation does not apply to the running amount (the caller draws again)."""
    name, she = rng.choice(_PEOPLE)
    obj = rng.choice(_OBJECTS)
    amount = start
    sentences, equations = [f"{name} has {amount} {obj}."], []
    for op in template[:-1]:
        step = STEPS[op](amount, she, obj, rng)
        if step is None:
            return None
        sentence, eqs, amount = step
        sentences.append(sentence)
        equations += eqs
    if template[-1] == "boxes":
        boxes = [b for b in range(2, 7) if amount % b == 0 and amount // b > 1]
        if not boxes:
            return None
        b = rng.choice(boxes)
        sentences.append(f"{she} puts all the {obj} into {b} boxes with the same number in "
                         f"each. How many {obj} are in each box?")
        equations.append(_eq(amount, "/", b, amount // b))
        amount //= b
    else:
        sentences.append(f"How many {obj} does {name} have now?")
    return Problem(" ".join(sentences), tuple(equations), amount, template, start)


def _split(values: list, fraction: float, rng: random.Random) -> tuple[list, list]:
    """(train, test): a seeded `fraction` of values (at least one, never all) for test."""
    shuffled = values[:]
    rng.shuffle(shuffled)
    k = min(max(1, math.ceil(fraction * len(values))), len(values) - 1)
    return shuffled[k:], shuffled[:k]


def _split_templates(shapes: list[tuple[str, ...]], fraction: float,
                     rng: random.Random) -> tuple[list, list]:
    """(train, test) templates: a seeded `fraction` for test, each a new combination of parts (an
    operation, an ending) that train templates also use, so test asks for composition, not for
    an operation never seen."""
    shuffled = shapes[:]
    rng.shuffle(shuffled)
    want = min(max(1, math.ceil(fraction * len(shapes))), len(shapes) - 1)
    train, test = list(shuffled), []
    for shape in shuffled:
        if len(test) == want:
            break
        rest = [t for t in train if t != shape]
        if set(shape) <= {part for t in rest for part in t}:
            train, test = rest, test + [shape]
    return train, test


def generate(n_train: int, n_test: int, max_steps: int, seed: int, min_steps: int = 1,
             max_start: int = 60, test_share: float = 0.2) -> tuple[list[Problem], list[Problem]]:
    """(train, test): distinct problems; a `test_share` of the templates and of the starting
    quantities MIN_START..max_start (seeded) is test's alone."""
    if not 1 <= min_steps <= max_steps or max_start < MIN_START + 1 or not 0 < test_share < 1:
        raise ValueError(f"need 1 <= min_steps <= max_steps, max_start > {MIN_START} and test_share in (0, 1)")
    rng = random.Random(f"math:{seed}")
    shapes = _split_templates(templates(min_steps, max_steps), test_share, rng)
    starts = _split(list(range(MIN_START, max_start + 1)), test_share, rng)
    seen: set[str] = set()
    out: tuple[list[Problem], list[Problem]] = ([], [])
    for split, n in ((1, n_test), (0, n_train)):
        attempts = 0
        while len(out[split]) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise ValueError(f"could not make {n} distinct {('train', 'test')[split]} problems with "
                                 f"steps {min_steps}..{max_steps} and starts up to {max_start}; ask for fewer "
                                 "or allow more steps or larger starts")
            problem = make_problem(rng, rng.choice(shapes[split]), rng.choice(starts[split]))
            if problem is not None and problem.question not in seen:
                seen.add(problem.question)
                out[split].append(problem)
    return out


def as_items(problems: list[Problem], split: str) -> list[dict]:
    """The GSM8K-shaped items (`items.math_item`) the evaluator reads, ids `<split>/<k>`."""
    return [math_item(f"{split}/{k}", p.question, str(p.answer)) for k, p in enumerate(problems)]
