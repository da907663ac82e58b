"""Scoring: whether each response answers its gold (`score_batch`, `is_correct`; lenient by default).

A math row's final answer (spark.verify.extraction) is compared with its gold in the caller where that
needs no sympy (spark.verify.equivalence), else in the worker pool (spark.verify.pool) within a timeout;
a judge row's verdict (spark.verify.judgments) is compared with "Yes"/"No" or "A"/"B".
"""

from __future__ import annotations

from spark.verify.equivalence import _compare, _option_letter
from spark.verify.extraction import ANSWER_MODES, extract_answer
from spark.verify.judgments import JUDGE_KINDS, parse_judgment
from spark.verify.limits import MAX_ANSWER_CHARS, MAX_NESTING, _nesting
from spark.verify.literals import _gold_choice, _pred_choice
from spark.verify.pool import _batch_lock, _run_checks, _stats


def _cheap_verdict(response: str, gold: str, mode: str) -> tuple[str, str | None]:
    """("equal" | "different" | "rejected", None), or ("undecided", pred) when sympy must decide."""
    pred = extract_answer(response, mode)
    if pred is None:
        return "different", None
    if max(len(pred), len(gold)) > MAX_ANSWER_CHARS or max(_nesting(pred), _nesting(gold)) > MAX_NESTING:
        return "rejected", None
    if mode == "lenient" and _gold_choice(gold) and not _pred_choice(pred):  # the option's value, not its letter
        pred = _option_letter(response, pred) or pred
    verdict = _compare(pred, gold, use_sympy=False)
    if verdict is None:
        return "undecided", pred
    return ("equal" if verdict else "different"), None


def score_batch(
    responses: list[str], golds: list[str], kinds: list[str] | None = None, timeout: float = 2.0,
    *, mode: str = "lenient",
) -> list[float]:
    """1.0 or 0.0 per row: whether responses[i] answers golds[i].

    kinds[i] is "math" (default: the final answer against a gold answer), "pointwise" or "pairwise"
    (the judge's parsed verdict against "Yes"/"No" or "A"/"B"). `mode` (one of ANSWER_MODES) is how a
    math answer is found: "lenient" reads it as a human grader would, "strict" only from the last
    `\\boxed{}`, "first" only from the first (see extract_answer); a lenient multiple-choice answer may
    also be the value of an option the response lists. Rows that only sympy can decide run in parallel in
    the worker pool, each within `timeout` seconds; a timeout scores 0.0 and is counted.
    """
    kinds = kinds if kinds is not None else ["math"] * len(responses)
    if not len(responses) == len(golds) == len(kinds):
        raise ValueError(f"score_batch: {len(responses)} responses, {len(golds)} golds, {len(kinds)} kinds")
    if mode not in ANSWER_MODES:
        raise ValueError(f"score_batch: unknown answer mode {mode!r}; expected one of {ANSWER_MODES}")
    scores = [0.0] * len(responses)
    hard: list[int] = []
    tasks: list[tuple[str, str]] = []
    with _batch_lock():
        for i, (response, gold, kind) in enumerate(zip(responses, golds, kinds)):
            if not isinstance(response, str) or not isinstance(gold, str):
                raise TypeError(f"score_batch: row {i}: response and gold must be str, got "
                                f"{type(response).__name__} and {type(gold).__name__}")
            _stats["checked"] += 1
            if kind in JUDGE_KINDS:
                _stats["cheap"] += 1
                scores[i] = float(parse_judgment(response, kind) == gold)
                continue
            if kind != "math":
                raise ValueError(f"score_batch: row {i}: unknown kind {kind!r}; expected 'math', "
                                 f"'pointwise' or 'pairwise'")
            verdict, pred = _cheap_verdict(response, gold, mode)
            if verdict == "undecided":
                hard.append(i)
                tasks.append((pred, gold))
                continue
            _stats["cheap" if verdict != "rejected" else "rejected"] += 1
            scores[i] = float(verdict == "equal")
        if tasks:
            for i, verdict in zip(hard, _run_checks(tasks, timeout)):
                scores[i] = float(verdict == "equal")
    return scores


def is_correct(response: str, gold: str, timeout: float = 2.0, *, mode: str = "lenient") -> bool:
    """Whether the final answer of `response`, found as `mode` says, equals `gold` (a bare answer such as
    `\\frac{1}{2}` or `72`)."""
    return score_batch([response], [gold], timeout=timeout, mode=mode)[0] == 1.0
