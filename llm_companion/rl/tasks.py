"""A task with a verifiable reward: arithmetic problems from a seeded generator, and a verifier that checks a reply.

**The task.** ``What is A + B? Answer with the number only.`` with A and B two-digit numbers (the default
:data:`TWO_DIGIT_SUMS`). Chosen by measurement: SmolLM2-135M-Instruct's greedy replies (chat template, up to 64
tokens) get 12.8% of 500 test problems right (9.4% within 32 tokens, chapter 11's setting) — it mostly writes
the sum out or explains, and often adds wrong — neither solved nor hopeless, which is where reinforcement
learning has something to learn (three-digit sums: none right when the task was chosen).

**Splits, disjoint by construction.** Every problem of the task is enumerated once, as an *unordered* pair
(``23 + 45`` and ``45 + 23`` are one problem, so the test set holds neither order of a training problem), shuffled
by a fixed seed and cut into test, validation and train slices. The seed fixes the split, not the run.

**The answer format, and the verifier.** The prompt asks for the number only; the verifier reads the reply's
*last* number as its answer (the GSM8K convention: a worked answer ends with its result) and compares its
value exactly: ``"68"``, ``"68."``, ``"The answer is 68."``, ``"23 + 45 = 68"`` and ``"68.0"`` are right;
``"1,000"`` reads as 1000 (commas as thousands separators only); ``"-3"`` is negative three. A reply with no
number is wrong, and so is an answer followed by more text with another number in it (``"68. Check: 45 + 23"``):
the last number is what counts, so listing candidates cannot be paid for the right one. Measured on the base
model (greedy, 64 tokens): a rule demanding exactly one number scores 0%, because the model writes the sum out
(``"23 + 86 = 109"``); the last-number rule puts it in the band where RL has something to learn.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property

# A number: optional sign (ASCII or Unicode minus), digits with optional comma-thousands groups, optional decimals.
# Not preceded by a letter, digit or point, so "x2" or "1.2.3" do not yield extra numbers silently.
_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d,]\d)")


class TaskError(ValueError):
    """An invalid task setting (a range, a split size)."""


@dataclass(frozen=True)
class Problem:
    """One problem: the user message, its one right answer, and the key that identifies it across orders."""

    question: str
    answer: int
    key: tuple[str, int, int]   # (op, smaller operand, larger operand): equal for "a + b" and "b + a"


@dataclass(frozen=True)
class Splits:
    train: list[Problem]
    validation: list[Problem]
    test: list[Problem]


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_SYMBOL = {"+": "+", "-": "-", "*": "×"}


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems ``a op b`` with ``a`` in ``a_range`` and ``b`` in ``b_range`` (inclusive), split by ``seed``."""

    op: str = "+"
    a_range: tuple[int, int] = (10, 99)
    b_range: tuple[int, int] = (10, 99)
    n_test: int = 1000
    n_validation: int = 200
    seed: int = 2024
    template: str = "What is {a} {op} {b}? Answer with the number only."

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise TaskError(f"op must be one of {sorted(_OPS)}, got {self.op!r}")
        for name in ("a_range", "b_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise TaskError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.n_test < 1 or self.n_validation < 0:
            raise TaskError("n_test must be at least 1 and n_validation at least 0")

    def problem(self, a: int, b: int) -> Problem:
        """The problem ``a op b`` in the task's wording."""
        answer = _OPS[self.op](a, b)
        key = (self.op, a, b) if self.op == "-" else (self.op, min(a, b), max(a, b))  # a - b ≠ b - a
        return Problem(self.template.format(a=a, op=_SYMBOL[self.op], b=b), answer, key)

    @cached_property
    def splits(self) -> Splits:
        """Test, validation and train problems: disjoint keys, each problem asked in one order chosen by the seed."""
        rng = random.Random(self.seed)
        keys = sorted({self.problem(a, b).key for a in range(self.a_range[0], self.a_range[1] + 1)
                       for b in range(self.b_range[0], self.b_range[1] + 1)})
        rng.shuffle(keys)
        if len(keys) < self.n_test + self.n_validation + 1:
            raise TaskError(f"the task has {len(keys)} distinct problems, fewer than n_test + n_validation + 1 "
                            f"({self.n_test + self.n_validation + 1}); widen the ranges or shrink the splits")
        problems = []
        for op, x, y in keys:   # which order is asked is part of the problem, drawn once here
            a, b = (x, y) if op == "-" or rng.random() < 0.5 else (y, x)
            if not (self.a_range[0] <= a <= self.a_range[1] and self.b_range[0] <= b <= self.b_range[1]):
                a, b = b, a   # ranges differ (1-digit × 2-digit): keep each operand in its own range
            problems.append(self.problem(a, b))
        t, v = self.n_test, self.n_test + self.n_validation
        return Splits(train=problems[v:], validation=problems[t:v], test=problems[:t])


TWO_DIGIT_SUMS = ArithmeticTask()


def parse_number(reply: str) -> Decimal | None:
    """The value of the reply's last number, or None when it has none (see the module docstring)."""
    found = _NUMBER.findall(reply)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", "").replace("\u2212", "-"))
    except InvalidOperation:   # pragma: no cover - the pattern only matches valid decimals
        return None


def verify(reply: str, answer: int) -> bool:
    """Whether the last number of ``reply`` equals ``answer`` exactly (``"12.0"`` equals 12)."""
    value = parse_number(reply)
    return value is not None and value == answer


def reward(reply: str, answer: int) -> float:
    """The verifiable reward: 1.0 for a right reply, 0.0 otherwise."""
    return 1.0 if verify(reply, answer) else 0.0
