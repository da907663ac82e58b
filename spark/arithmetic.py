r"""The demo's synthetic verifiable task: two-digit addition and subtraction with a short worked answer.

A worked answer goes digit by digit, units first, then ends in the boxed result:

    What is 47+38?   ->  47+38: 7+8=15, 4+3+1=8. \boxed{85}
    What is 83-38?   ->  83-38: 13-8=5, 8-3-1=4. \boxed{45}

Each step is a one-digit fact plus a carry (borrow), which a model of a few million parameters learns
in minutes on a CPU; a wrong step leaves a plausible wrong number in the box.

The held-out judge set shows held-out questions with a candidate answer that is either the gold
answer or a plausible slip (off by one or ten, a dropped carry, swapped digits), half and half.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from spark.data import Sample
from spark.prompts import math_prompt

OPERATIONS = ("+", "-")


def question_text(a: int, op: str, b: int) -> str:
    return f"What is {a}{op}{b}?"


def result(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def worked_steps(a: int, op: str, b: int) -> str:
    """The digit-by-digit working, without the final answer: "47+38: 7+8=15, 4+3+1=8". Restating the
    operands first puts the digits each step needs next to it, however long the prompt before is."""
    (a_tens, a_units), (b_tens, b_units) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        units = a_units + b_units
        carry = units >= 10
        tens = a_tens + b_tens + carry
        return f"{a}+{b}: {a_units}+{b_units}={units}, {a_tens}+{b_tens}{'+1' if carry else ''}={tens}"
    borrow = a_units < b_units
    units_top = a_units + 10 * borrow
    tens = a_tens - b_tens - borrow
    return f"{a}-{b}: {units_top}-{b_units}={units_top - b_units}, {a_tens}-{b_tens}{'-1' if borrow else ''}={tens}"


def worked_answer(a: int, op: str, b: int) -> str:
    r"""The full policy response: the working, then the answer in \boxed{}."""
    return f"{worked_steps(a, op, b)}. \\boxed{{{result(a, op, b)}}}"


def parse_question(question: str) -> tuple[int, str, int]:
    """Inverse of `question_text`: "What is 47+38?" -> (47, "+", 38)."""
    body = question.removeprefix("What is ").removesuffix("?")
    for op in OPERATIONS:
        left, sep, right = body.partition(op)
        if sep and left.isdigit() and right.isdigit():
            return int(left), op, int(right)
    raise ValueError(f"not an arithmetic question: {question!r}")


def all_problems() -> list[tuple[int, str, int]]:
    """Every question of the task: a+b and a-b (a >= b) over two-digit a, b."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return [(a, "+", b) for a, b in pairs] + [(a, "-", b) for a, b in pairs if a >= b]


def to_sample(a: int, op: str, b: int) -> Sample:
    question = question_text(a, op, b)
    return Sample(prompt=math_prompt(question), gold=str(result(a, op, b)), meta={"question": question})


def make_problems(n: int, seed: int, *, exclude: set[str] = frozenset()) -> list[Sample]:
    """`n` distinct problems drawn with `seed`, none whose question is in `exclude`.
    `Sample.prompt` is the full policy prompt (question + MATH_SUFFIX); `meta["question"]` the raw question."""
    pool = [p for p in all_problems() if question_text(*p) not in exclude]
    if n > len(pool):
        raise ValueError(f"make_problems: asked for {n} problems, only {len(pool)} are left")
    return [to_sample(*p) for p in random.Random(seed).sample(pool, n)]


def split_problems(num_train: int, num_heldout: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Disjoint train and held-out problem sets."""
    heldout = make_problems(num_heldout, seed)
    train = make_problems(num_train, seed + 1, exclude={s.meta["question"] for s in heldout})
    return train, heldout


def plausible_wrong(a: int, op: str, b: int, rng: random.Random) -> int:
    """A wrong answer a careless solver could give: off by one or ten, carry/borrow dropped or
    doubled, digits swapped. Never negative, never the gold answer."""
    gold = result(a, op, b)
    digits = str(gold)
    swapped = int(digits[:-2] + digits[-2:][::-1])
    slips = {gold + 1, gold - 1, gold + 10, gold - 10, gold + 2, gold - 2, swapped}
    candidates = sorted(x for x in slips if x >= 0 and x != gold)
    return rng.choice(candidates)


def judge_set(problems: list[Sample], seed: int) -> list[dict]:
    """Pointwise judge rows {question, answer, label}: the first half of `problems` (shuffled) shows the
    gold answer (label Yes), the second half a plausible wrong answer (label No)."""
    rng = random.Random(seed)
    order = rng.sample(problems, len(problems))
    rows = []
    for i, sample in enumerate(order):
        question = sample.meta["question"]
        correct = i < len(order) // 2
        answer = sample.gold if correct else str(plausible_wrong(*parse_question(question), rng))
        rows.append({"question": question, "answer": answer, "label": "Yes" if correct else "No"})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def problem_rows(problems: list[Sample]) -> list[dict]:
    """The trainer's data rows {question, answer}."""
    return [{"question": s.meta["question"], "answer": s.gold} for s in problems]
