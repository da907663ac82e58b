"""Numbers from evaluation records: accuracy, pass@n, self-judgment P/R/F1, reward-benchmark accuracy,
and the paper-style Markdown table. Pure functions; records are the dicts saved in the JSONL."""

from __future__ import annotations

import re

from spark.evaluation.tts import Problem, Trace, rate, tts_statistics
from spark.verify import extract_answer


def parse_rating(response: str) -> float | None:
    """The judge's rating: the first number in its \\boxed{} ('\\boxed{8}', '\\boxed{7/10}' -> 7.0)."""
    boxed = extract_answer(response, "strict")
    number = re.search(r"-?\d+(?:\.\d+)?", boxed or "")
    return float(number.group()) if number else None


def rounds_to(prediction: str | None, gold: str, precision: int) -> bool:
    """MathVista's rule for float answers: round(prediction, precision) == gold ('1.456' -> 1.46)."""
    try:
        return round(float(prediction), precision) == round(float(gold), precision)
    except (TypeError, ValueError, OverflowError):
        return False


def best_of_n_correct(chosen: list[float | None], rejected: list[float | None]) -> bool:
    """RewardBench2 best-of-4: correct iff every chosen response is rated strictly above every rejected
    one. A tie is wrong; an unparsed chosen rating is wrong, an unparsed rejected rating loses."""
    if not chosen or any(r is None for r in chosen):
        return False
    return min(chosen) > max((r for r in rejected if r is not None), default=float("-inf"))


def pairwise_correct(forward: str | None, reverse: str | None, better: int) -> bool:
    """VL-RewardBench pair judged in both orders. forward: the verdict ("A" = Answer 1) on (r0, r1),
    reverse: on (r1, r0); better: index of the preferred response. Correct only if both orders pick it,
    so a judge that always says "Answer 1" scores 0, not 50%."""
    return forward == "AB"[better] and reverse == "AB"[1 - better]


def precision_recall_f1(predicted: list[bool], actual: list[bool]) -> dict:
    """P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R); positive = "correct" (0 when empty)."""
    tp = sum(p and a for p, a in zip(predicted, actual))
    precision = rate(tp, sum(predicted))
    recall = rate(tp, sum(actual))
    return {
        "precision": precision,
        "recall": recall,
        "f1": rate(2 * precision * recall, precision + recall),
        "accuracy": rate(sum(p == a for p, a in zip(predicted, actual)), len(actual)),
        "n": len(actual),
    }


def self_judgment(traces: list[Trace]) -> dict:
    """The model's verdict on its own first answer ("Yes" = correct; unparsed = not Yes) against the
    verifier (paper fig. 4)."""
    firsts = [(trace.turns[0], trace.turns[1]) for trace in traces if len(trace.turns) > 1]
    metrics = precision_recall_f1([j.extracted == "Yes" for _, j in firsts], [bool(a.correct) for a, _ in firsts])
    return metrics | {"unparsed": sum(j.extracted is None for _, j in firsts)}


def record_traces(records: list[dict]) -> list[list[Trace]]:
    """Each math record's traces, as the loop left them."""
    return [[Trace.from_dict(Problem(r["question"], r["gold"], r["images"]), t) for t in r["traces"]] for r in records]


def summarize_math(records: list[dict], *, tts_rounds: int | None = None, reject_above: float | None = None) -> dict:
    """accuracy: mean correctness of the final answers over all samples (mean@n; greedy accuracy when
    n = 1); pass@n: rows with any correct sample; unanswered: samples without an extractable answer,
    counted as wrong. With judge turns: self-judgment; with tts_rounds: the loop's statistics (with the judge's
    rule reject_above)."""
    rows = record_traces(records)
    traces = [trace for row in rows for trace in row]
    summary = {
        "accuracy": rate(sum(bool(t.final.correct) for t in traces), len(traces)),
        "n": len(records),
        "unanswered": sum(t.final.extracted is None for t in traces),
    }
    samples = len(rows[0]) if rows else 1
    if samples > 1:
        summary[f"mean@{samples}"] = summary["accuracy"]
        summary[f"pass@{samples}"] = rate(sum(any(t.final.correct for t in row) for row in rows), len(rows))
    if any(len(t.turns) > 1 for t in traces):
        summary["self_judgment"] = self_judgment(traces)
    if tts_rounds is not None:
        summary["tts"] = tts_statistics(traces, tts_rounds, reject_above)
    return summary


def summarize_judge(records: list[dict], *, math_subset: str) -> dict:
    """Reward-benchmark accuracy overall and per subset; math_accuracy is the math subset's (paper's
    RB2-Math / VL-RB-Math columns). unparsed: judge responses without a readable verdict or rating."""
    subsets: dict[str, list[bool]] = {}
    for r in records:
        subsets.setdefault(r["subset"], []).append(r["correct"])
    summary = {
        "accuracy": rate(sum(r["correct"] for r in records), len(records)),
        "n": len(records),
        "unparsed": sum(r["unparsed"] for r in records),
        "subsets": {name: {"accuracy": rate(sum(c), len(c)), "n": len(c)} for name, c in sorted(subsets.items())},
    }
    if math_subset in subsets:
        summary["math_accuracy"] = summary["subsets"][math_subset]["accuracy"]
    return summary


def mean_accuracy(summaries: dict[str, dict]) -> float:
    """The mean of the benchmarks' accuracies, each benchmark counting once whatever its size: the score the
    authors report (their calculate_acc.py)."""
    return rate(sum(summary["accuracy"] for summary in summaries.values()), len(summaries))


def markdown_table(summaries: dict[str, dict], model_name: str) -> str:
    """One row per model like the paper's tables: each benchmark's accuracy in %, a NAME-math column
    after reward benchmarks with a math subset, and Avg over the columns."""
    columns: dict[str, float] = {}
    for name, summary in summaries.items():
        columns[name] = 100 * summary["accuracy"]
        if "math_accuracy" in summary:
            columns[f"{name}-math"] = 100 * summary["math_accuracy"]
    columns["Avg"] = sum(columns.values()) / len(columns) if columns else 0.0
    header = "| Model | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    row = f"| {model_name} | " + " | ".join(f"{v:.1f}" for v in columns.values()) + " |"
    return "\n".join([header, rule, row])
