r"""The demo's synthetic verifiable task: two-digit subtraction, checked by an addition.

The policy solves a subtraction with a short worked answer, digit by digit, units first, borrowing as it goes:

    What is 85-38?   ->  85-38: 15-8=7, 8-3-1=4. \boxed{47}

The judge does not solve it again: it checks the candidate by substitution, adding it back to the
subtrahend and comparing the sum with the minuend, digit by digit:

    candidate 47     ->  47+38: 7+8=15, 4+3+1=8. 85 vs 85: 8 8 same, 5 5 same, so equal. \boxed{Yes}
    candidate 57     ->  57+38: 7+8=15, 5+3+1=9. 95 vs 85: 9 8 differ, 5 5 same, so different. \boxed{No}

Checking is easier than solving here, as in real reasoning: the check is a different computation (an
addition with carries) from the solution (a subtraction with borrows), so a judge that checks does not
repeat the policy's slip. A judge that re-solved the subtraction and compared results (this demo's
first task) made the same mistakes as the policy on the policy's own answers and accepted them.

The held-out judge set shows held-out questions with a candidate answer that is either the gold
answer or a plausible slip (off by one or ten, a dropped borrow, swapped digits), half and half.

The warm-up examples (`warmup_examples`) teach the formats of every task before RL, with the method's
own templates (spark.tasks.prompts):

- policy:      the worked answer;
- pointwise:   the check above, then a verdict. The verdicts are noisy and lenient (VERDICT_YES_SHARE), so
               a sampled verdict leans only weakly on the judge's own comparison, a lean RL turns into a
               judgement;
- pairwise:    the check of answer (A), then the letter of the correct answer;
- reflection:  the worked answer of the question (the candidate shown is wrong);
- comparison drills: each problem's minuend beside a variant of it, compared digit by digit
               ("Compare 85 and 35 digit by digit." -> "85 vs 35: 8 3 differ, 5 5 same, so different."), so
               that the comparison is learnt early rather than late inside the judge examples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from spark.data.rows import Sample
from spark.tasks import prompts
from spark.tasks.prompts import math_prompt

OPERATIONS = ("+", "-")  # the policy subtracts, the judge adds


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
    """Every question of the task: a-b (a >= b) over two-digit a, b (4,095 of them)."""
    return [(a, "-", b) for a in range(10, 100) for b in range(10, a + 1)]


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


def calibration_problems(exclude: set[str]) -> list[Sample]:
    """The calibration split, on which test-time scaling picks its rejection threshold: every problem whose question
    is not in `exclude` (the other splits' questions), in `all_problems`' order. The demo's splits leave few
    problems (the warm-up's probe problems and those no split drew), so all of them are taken: no draw to seed."""
    return [to_sample(*p) for p in all_problems() if question_text(*p) not in exclude]


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


# --------------------------------------------------------------------------- warm-up formats

# Share of the warm-up examples per task. Judge-heavy: copying the question and the candidate out of the
# long judge templates takes the model far longer to learn than the arithmetic of the short policy prompt.
WARMUP_MIX = {"policy": 0.25, "pointwise": 0.6, "pairwise": 0.05, "reflection": 0.1}
# Share of warm-up judge candidates that are wrong. One half: "same" and "differ" are then equally frequent,
# and the model has to compare rather than lean to the commoner word.
WRONG_CANDIDATE_SHARE = 0.5
# The comparison drill's user message (comparison_drill).
COMPARISON_PROMPT = "Compare {} and {} digit by digit."
# How often a warm-up judge says Yes after its comparison found the numbers equal / different: a lenient judge
# whose sampled verdict leans weakly on the comparison (decoded greedily, it follows the comparison).
VERDICT_YES_SHARE = {"equal": 0.8, "different": 0.6}


def digit_pairs(number: str, other: str) -> str:
    """"85", "86" -> "8 8 same, 5 6 differ": aligned on the units, the shorter number padded with zeros."""
    width = max(len(number), len(other))
    pairs = zip(number.zfill(width), other.zfill(width))
    return ", ".join(f"{x} {y} {'same' if x == y else 'differ'}" for x, y in pairs)


def comparison(number: str, other: str) -> str:
    """"85", "86" -> "85 vs 86: 8 8 same, 5 6 differ, so different"."""
    return f"{number} vs {other}: {digit_pairs(number, other)}, so {'equal' if number == other else 'different'}"


def check(question: str, candidate: str) -> str:
    """The judge's check of `candidate` by substitution: add it back to the subtrahend and compare the sum with
    the minuend: "47+38: 7+8=15, 4+3+1=8. 85 vs 85: 8 8 same, 5 5 same, so equal"."""
    a, _, b = parse_question(question)
    c = int(candidate)
    return f"{worked_steps(c, '+', b)}. {comparison(str(c + b), str(a))}"


def judge_response(question: str, candidate: str, verdict: str) -> str:
    r"""A pointwise judge's response: the check, then the verdict:
    "57+38: 7+8=15, 5+3+1=9. 95 vs 85: 9 8 differ, 5 5 same, so different. \boxed{No}"."""
    return f"{check(question, candidate)}. \\boxed{{{verdict}}}"


def comparison_drill(number: str, rng: random.Random) -> tuple[str, str]:
    """A (user message, response) pair that drills the judge's comparison on its own: `number` beside a variant
    of it whose every digit is kept or changed with equal odds ("Compare 85 and 35 digit by digit.")."""
    other = str(int("".join(d if rng.random() < 0.5 else rng.choice("0123456789".replace(d, "")) for d in number)))
    return COMPARISON_PROMPT.format(number, other), f"{comparison(number, other)}."


def pairwise_response(question: str, answer_a: str, letter: str) -> str:
    r"""A pairwise judge's response: the check of answer (A), then the letter of the correct one."""
    return f"{check(question, answer_a)}. \\boxed{{{letter}}}"


def shown_answer(question: str, answer: str, cot: bool) -> str:
    r"""A candidate as a judge sees it: the final answer, or (cot) a worked answer ending in \boxed{answer}."""
    return f"{worked_steps(*parse_question(question))}. \\boxed{{{answer}}}" if cot else answer


def warmup_examples(problems: list[Sample], seed: int) -> list[tuple[str, str]]:
    """(user message, response) pairs over `problems`: for each problem, one task drawn with WARMUP_MIX and a
    comparison drill of its minuend.

    Judge candidates are the gold answer or a plausible wrong one (see WRONG_CANDIDATE_SHARE), shown as a
    final answer or inside a worked answer (half each), with a random template variant. Verdicts are drawn with
    VERDICT_YES_SHARE."""
    rng = random.Random(seed)
    examples = []
    for sample in problems:
        question = sample.meta["question"]
        a, op, b = parse_question(question)
        task = rng.choices(list(WARMUP_MIX), weights=list(WARMUP_MIX.values()))[0]
        wrong = str(plausible_wrong(a, op, b, rng))
        candidate = wrong if rng.random() < WRONG_CANDIDATE_SHARE else sample.gold
        cot, variant = rng.random() < 0.5, rng.randrange(max(prompts.NUM_VARIANTS.values()))  # as recycling draws
        if task == "policy":
            examples.append((sample.prompt, worked_answer(a, op, b)))
        elif task == "pointwise":
            prompt = prompts.pointwise_prompt(question, shown_answer(question, candidate, cot), cot=cot,
                                              variant=variant)
            yes_share = VERDICT_YES_SHARE["equal" if candidate == sample.gold else "different"]
            examples.append((prompt, judge_response(question, candidate, "Yes" if rng.random() < yes_share else "No")))
        elif task == "pairwise":
            pair = [sample.gold, wrong]
            rng.shuffle(pair)
            prompt = prompts.pairwise_prompt(question, *(shown_answer(question, x, cot) for x in pair), cot=cot,
                                             variant=variant)
            examples.append((prompt, pairwise_response(question, pair[0], "A" if pair[0] == sample.gold else "B")))
        else:
            prompt = prompts.reflection_prompt(question, shown_answer(question, wrong, cot), cot=cot,
                                               variant=variant)
            examples.append((prompt, worked_answer(a, op, b)))
        examples.append(comparison_drill(str(a), rng))
    return examples
