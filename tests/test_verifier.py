"""Tests of spark.verifier: hand-written cases (the boxed forms, and the lenient grader's classes), the
two answer modes, bounded time on adversarial input, judge verdicts, and every gold answer of the eval
sets verifying against itself. tests/verifier_holdout.jsonl is deliberately not tested here: it is the
held-out set benchmarks/verifier.py reports on."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from spark import verifier
from spark.verifier import (
    ANSWER_MODES,
    extract_answer,
    is_correct,
    parse_judgment,
    score_batch,
    verifier_stats,
)

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "data" / "eval"


def read_cases(name: str) -> list[dict]:
    return [json.loads(line) for line in (REPO / "tests" / name).read_text().splitlines() if line]


CASES = read_cases("verifier_cases.jsonl")
LENIENT_CASES = read_cases("verifier_cases_lenient.jsonl")


def boxed(answer: str) -> str:
    return "Let me work through it.\nSo the final answer is $\\boxed{" + answer + "}$."


@pytest.fixture(scope="module", autouse=True)
def warm_pool():
    """Two workers (the test machine has two busy cores), started before any timed check."""
    verifier.configure(2)
    assert is_correct(boxed(r"2\sqrt{2}"), r"\sqrt{8}")
    yield
    verifier.shutdown()


def stats_delta(before: dict[str, int]) -> dict[str, int]:
    return {key: value - before[key] for key, value in verifier_stats().items()}


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


@pytest.mark.parametrize(("response", "expected"), [
    (r"Try \boxed{3}; no: the answer is \boxed{12}.", "3"),
    (r"\boxed{ \frac{1}{2} } then \boxed{5}", r"\frac{1}{2}"),
    (r"\fbox{7} and \boxed{8}", "7"),
    (r"\boxed{\{1, 2\}} or \boxed{3}", r"\{1, 2\}"),
    (r"\boxed{}", ""),
    (r"So \boxed{4", None),  # truncated inside the first box: no answer, not its partial content
    ("Answer: 12", None),
])
def test_first_mode_reads_only_the_first_box(response, expected):
    assert extract_answer(response, "first") == expected


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


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"so \boxed{\frac{1}{2}} and then \boxed{\frac{\sqrt{3}}{2}}.", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),
        (r"\fbox{12}", "12"),
        (r"\boxed {7}", "7"),
        (r"$\boxed 7$", "7"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        ("The answer is: $5$.", "5"),
        ("Adding them up.\n#### 1,600", "1,600"),
        ("Final Answer: The final answer is $\\frac{7}{3}$. I hope it is correct.", r"\frac{7}{3}"),
        ("**Final Answer:**\n$-6$", "-6"),
        ("<think>6*7</think><answer> 42 </answer>", "42"),
        ("La respuesta es 540.", "540"),
        ("So the total is **96**.", "96"),
        ("The answer is 12, since 3 times 4 is 12.", "12"),
        (r"$x = \boxed{2}$ and $x = \boxed{-5}$", "x=2, x=-5"),
        (r"\boxed{1}, \boxed{3} and \boxed{1}", "1, 3"),
        (r"First \boxed{3}, but actually \boxed{5}.", "5"),
        (r"\boxed{18}. Wait, that's wrong: the correct answer is 15.", "15"),
        (r"\boxed{18}. Let me check: the answer is right.", "18"),
        (r"\boxed{18}. Hmm, I made a mistake somewhere.", None),
        (r"truncated \boxed{\frac{1}{2}", None),
        ("no answer here", None),
        ("", None),
    ],
)
def test_extract_answer(response: str, expected: str | None):
    assert extract_answer(response) == expected


def test_extract_answer_strict_reads_the_last_box_only():
    assert extract_answer("The answer is 5.", "strict") is None
    assert extract_answer(r"$x = \boxed{2}$ and $x = \boxed{-5}$", "strict") == "-5"
    assert extract_answer(r"\boxed{18}. Wait, that's wrong: the answer is 15.", "strict") == "18"


# --------------------------------------------------------------------------- judge verdicts


@pytest.mark.parametrize(
    ("response", "kind", "expected"),
    [
        (r"The solution is right. \boxed{Yes}", "pointwise", "Yes"),
        (r"\boxed{no}", "pointwise", "No"),
        (r"\boxed{\text{Yes}}", "pointwise", "Yes"),
        (r"\boxed{YES.}", "pointwise", "Yes"),
        (r"\boxed{Maybe}", "pointwise", None),
        ("Yes, it is correct.", "pointwise", None),
        (r"\boxed{A}", "pairwise", "A"),
        (r"\boxed{(B)}", "pairwise", "B"),
        (r"\boxed{\text{A}}", "pairwise", "A"),
        (r"\boxed{Answer 2}", "pairwise", "B"),
        ("Overall Judgment: Answer 1 is better", "pairwise", "A"),
        ("Both have flaws. Overall Judgment: Answer 2 is better.", "pairwise", "B"),
        (r"\boxed{C}", "pairwise", None),
        ("I cannot decide.", "pairwise", None),
        (r"\boxed{Yes", "pointwise", None),
        (r"\boxed{" + "A" * 20_000 + "}", "pairwise", None),
    ],
)
def test_parse_judgment(response: str, kind: str, expected: str | None):
    assert parse_judgment(response, kind) == expected


def test_parse_judgment_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind"):
        parse_judgment(r"\boxed{A}", "listwise")


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


# --------------------------------------------------------------------------- bounded time


@pytest.mark.parametrize(
    ("answer", "counter", "timeout"),
    [
        ("10^{10^{10}}", "rejected", 1.0),
        ("2^{2^{2^{2^{2^{2}}}}}", "rejected", 1.0),
        ("(10^{5000})!", "rejected", 1.0),
        ("1" * 20_000, "rejected", 1.0),
        (r"\frac{1}{" * 60 + "2" + "}" * 60, "rejected", 1.0),
        ("(" * 5_000, "rejected", 1.0),
        # A 2.5-million-digit integer passes the size guards; its check takes far longer than 50 ms on any
        # machine, so its worker is killed.
        ("(996!)^{1000}", "timeouts", 0.05),
    ],
)
def test_adversarial_answers_are_bounded_and_counted(answer: str, counter: str, timeout: float):
    before = verifier_stats()
    start = time.monotonic()
    assert not is_correct(boxed(answer), "3", timeout=timeout)
    assert time.monotonic() - start < 3.0  # a guard against hangs, not a timing claim
    delta = stats_delta(before)
    assert delta["checked"] == 1 and delta[counter] == 1


def test_unbalanced_box_scores_zero():
    before = verifier_stats()
    assert score_batch([r"\boxed{\frac{1}{2}", r"\boxed{1}}}}"], [r"\frac12", "1"]) == [0.0, 1.0]
    assert stats_delta(before)["checked"] == 2


def test_stuck_checks_are_killed_counted_and_replaced():
    # (n!)^1000 passes the size guards but takes far over 50 ms: each worker is killed.
    responses = [boxed(f"({n}!)^{{1000}}") for n in (997, 998, 999)]
    before = verifier_stats()
    assert score_batch(responses, ["3"] * 3, timeout=0.05) == [0.0, 0.0, 0.0]
    delta = stats_delta(before)
    assert delta["timeouts"] == 3 and delta["sympy"] == 3
    assert score_batch([boxed(r"\frac{\cos t}{\sin t}")], [r"\cot t"]) == [1.0]  # replaced workers serve again


def test_a_worker_that_died_while_idle_is_replaced():
    assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")
    for worker in verifier._pool.workers:
        worker.process.kill()
        worker.process.wait()
    assert score_batch([boxed(r"\sqrt{18}")] * 2, [r"3\sqrt2"] * 2) == [1.0, 1.0]


class KillAfterSend:
    """A worker's input that kills the worker as soon as a check has been sent to it: death mid-check."""

    def __init__(self, process):
        self.process, self.stdin = process, process.stdin

    def write(self, text: str) -> int:
        return self.stdin.write(text)

    def flush(self) -> None:
        # Stopped before the check reaches it, the worker cannot answer before it dies, however loaded the machine.
        self.process.send_signal(signal.SIGSTOP)
        self.stdin.flush()
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.stdin.close()


def test_a_worker_killed_mid_check_is_replaced_and_the_check_sent_again():
    verifier.configure(1)  # one worker, ready: the batch's first check goes to it, whatever the timing
    try:
        assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")
        (worker,) = verifier._pool.workers
        worker.process.stdin = KillAfterSend(worker.process)
        before = verifier_stats()
        assert score_batch([boxed(r"\sqrt{18}"), boxed(r"\sqrt{12}"), boxed(r"\sqrt{20}")],
                           [r"3\sqrt2", r"2\sqrt3", r"3\sqrt2"]) == [1.0, 1.0, 0.0]
        delta = stats_delta(before)
        assert delta["retried"] == 1 and delta["crashed"] == 0 and delta["sympy"] == 3
    finally:
        verifier.configure(2)


def test_shutdown_stops_every_worker():
    assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")
    processes = [worker.process for worker in verifier._pool.workers]
    verifier.shutdown()
    assert all(process.poll() is not None for process in processes)
    assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")  # a new pool starts on demand


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
