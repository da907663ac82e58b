"""Tests of spark.verify.scoring: hand-written cases (the boxed forms, and the lenient grader's classes),
the answer modes, math and judge rows in one batch, and every gold answer of the eval sets verifying
against itself. tests/verifier_holdout.jsonl is deliberately not tested here: it is the held-out set
benchmarks/verifier.py reports on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from spark.verify import (
    ANSWER_MODES,
    extract_answer,
    is_correct,
    score_batch,
    verifier_stats,
)
from tests.verify.helpers import boxed, stats_delta

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "data" / "eval"

pytestmark = pytest.mark.usefixtures("warm_pool")


def read_cases(name: str) -> list[dict]:
    return [json.loads(line) for line in (REPO / "tests" / name).read_text().splitlines() if line]


CASES = read_cases("verifier_cases.jsonl")
LENIENT_CASES = read_cases("verifier_cases_lenient.jsonl")


# --------------------------------------------------------------------------- the case file


@pytest.mark.parametrize(("cases", "minimum", "per_category"), [(CASES, 150, 1), (LENIENT_CASES, 100, 15)])
def test_case_files_cover_every_form_both_ways(cases: list[dict], minimum: int, per_category: int):
    assert len(cases) >= minimum
    for case in cases:
        assert set(case) == {"response", "gold", "expected", "category"}, case
    outcomes = Counter((case["category"], case["expected"]) for case in cases)
    for category in {case["category"] for case in cases}:
        assert outcomes[category, True] and outcomes[category, False], f"{category}: needs true and false cases"
        assert outcomes[category, True] + outcomes[category, False] >= per_category, category


@pytest.fixture(scope="module")
def case_scores() -> list[float]:
    return score_batch([case["response"] for case in CASES], [case["gold"] for case in CASES])


@pytest.fixture(scope="module")
def lenient_scores() -> list[float]:
    return score_batch([case["response"] for case in LENIENT_CASES], [case["gold"] for case in LENIENT_CASES])


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c['category']}-{i}" for i, c in enumerate(CASES)])
def test_case(i: int, case_scores: list[float]):
    case = CASES[i]
    assert case_scores[i] == float(case["expected"]), case


@pytest.mark.parametrize("i", range(len(LENIENT_CASES)), ids=[f"{c['category']}-{i}" for i, c in enumerate(LENIENT_CASES)])
def test_lenient_case(i: int, lenient_scores: list[float]):
    case = LENIENT_CASES[i]
    assert lenient_scores[i] == float(case["expected"]), case


def test_strict_mode_reads_only_the_last_box():
    boxed_cases = [c for c in CASES if r"\boxed" in c["response"] or r"\fbox" in c["response"]]
    strict = score_batch([c["response"] for c in boxed_cases], [c["gold"] for c in boxed_cases], mode="strict")
    assert strict == [float(c["expected"]) for c in boxed_cases]  # the boxed forms grade alike in both modes
    responses = ["Answer: 12", "The answer is 12.", "#### 12", "<answer>12</answer>", "So it is **12**.",
                 r"$x = \boxed{3}$ or $x = \boxed{12}$", r"\boxed{10}. Wait, that's wrong: the answer is 12."]
    assert score_batch(responses, ["12"] * len(responses), mode="strict") == [0, 0, 0, 0, 0, 1, 0]
    assert score_batch(responses, ["12"] * len(responses), mode="lenient") == [1, 1, 1, 1, 1, 0, 1]
    assert not is_correct("(A) 3 (B) 12\nAnswer: 12", "B", mode="strict")
    assert is_correct("(A) 3 (B) 12\nAnswer: 12", "B")


def test_first_mode_scores_the_first_box():
    responses = [r"\boxed{12} (check: \boxed{13})", r"\boxed{13}, no: \boxed{12}"]
    assert score_batch(responses, ["12", "12"], mode="first") == [1.0, 0.0]
    assert score_batch(responses, ["12", "12"], mode="strict") == [0.0, 1.0]


def test_unknown_mode_is_an_error():
    assert ANSWER_MODES == ("strict", "lenient", "first")
    with pytest.raises(ValueError, match="unknown answer mode 'loose'"):
        score_batch([boxed("1")], ["1"], mode="loose")
    with pytest.raises(ValueError, match="unknown answer mode"):
        extract_answer(boxed("1"), "loose")


def test_is_correct_agrees_with_score_batch_on_a_sample():
    for case in CASES[::25]:
        assert is_correct(case["response"], case["gold"]) is case["expected"], case


# --------------------------------------------------------------------------- batches


def test_score_batch_mixes_math_and_judge_rows():
    responses = [boxed("72"), r"\boxed{Yes}", r"\boxed{No}", "Overall Judgment: Answer 2 is better", boxed("71")]
    golds = ["72", "Yes", "Yes", "B", "72"]
    kinds = ["math", "pointwise", "pointwise", "pairwise", "math"]
    assert score_batch(responses, golds, kinds) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_score_batch_rejects_malformed_calls():
    with pytest.raises(ValueError, match="2 responses, 1 golds"):
        score_batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="row 0: unknown kind"):
        score_batch(["a"], ["a"], kinds=["essay"])
    with pytest.raises(TypeError, match="row 0"):
        score_batch([boxed("1")], [1.0])


def test_cheap_rows_never_reach_sympy():
    before = verifier_stats()
    scores = score_batch([boxed("1,000"), boxed(r"\dfrac{1}{2}"), boxed("0.5"), boxed("7")], ["1000", "0.5", r"\frac12", "8"])
    assert scores == [1.0, 1.0, 1.0, 0.0]
    assert stats_delta(before)["sympy"] == 0


# --------------------------------------------------------------------------- self-consistency on real golds


def eval_golds() -> list[tuple[str, str]]:
    """(file, gold) for every row of the eval sets, each gold in the form its loader passes it."""
    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (EVAL / f"{name}.jsonl").read_text().splitlines() if line.strip()]

    golds = [("math500", row["answer"]) for row in rows("math500")]
    golds += [("aime24", str(row["answer"])) for row in rows("aime24")]
    golds += [("amc23", str(row["answer"])) for row in rows("amc23")]
    golds += [("minerva_math", extract_answer(row["solution"], "strict")) for row in rows("minerva_math")]
    golds += [("gsm8k", row["answer"].split("#### ")[-1].strip()) for row in rows("gsm8k")]
    golds += [("mmlu_stem", "ABCD"[row["answer"]]) for row in rows("mmlu_stem")]
    return golds


def test_every_eval_gold_verifies_against_itself():
    golds = eval_golds()
    assert len(golds) == 500 + 30 + 40 + 272 + 1319 + 3018
    scores = score_batch([boxed(gold) for _, gold in golds], [gold for _, gold in golds])
    failures = [(name, gold) for (name, gold), score in zip(golds, scores) if score != 1.0]
    assert not failures
