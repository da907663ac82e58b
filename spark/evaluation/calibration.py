"""Calibrating the judge's rejection threshold: the P of `reject_above` that maximises the loop's accuracy on
problems held out from the evaluation.

The loop run with P = 0 reflects on every answer the judge gives any doubt (spark.evaluation.tts.refine). With
greedy decoding, the loop with any larger P makes the same answers, judgments and reflections and stops sooner:
at the first judgment whose p_wrong <= P. So one run at P = 0 gives, per problem, its path: the p_wrong of each
judgment d_0, d_1, ... and the correctness of each answer c_0, c_1, ..., and the answer the loop keeps at P is

    c_k,  k = the first t with d_t <= P (the last answer when there is none; with keep_better, which judges the
              last answer too, the one of lowest d_t, the earliest of equals).

The accuracy is a step function of P that moves only at the d_t, so the candidates are 0, every d_t and 1
(P = 1 never reflects: the accuracy without the loop). `calibrate` picks the best of the candidates that beat
P = 1 by a one-sided sign test on the problems where the two differ (fixed f, broke b: f - b >= z sqrt(f + b)),
so that a gain of a problem or two, which the many candidates make likely by chance, does not switch the loop on;
among equals, the largest P, the fewest reflections. The judge's false-accept / false-reject rates at P are those
of its judgments of the first answers: a wrong one accepted (d_0 <= P), a right one rejected (d_0 > P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spark.evaluation.tts import Trace, p_wrong, rate

SIGN_TEST_Z = 1.645  # the sign test's bar, in standard deviations: one-sided, 5%


@dataclass(frozen=True)
class Path:
    """One problem's loop run at P = 0: the p_wrong of each judgment, and whether each answer is correct
    (one more answer than judgments; as many when the last judgment had no doubt, which stops the loop at any P,
    or keep_better judged the last answer)."""

    doubts: tuple[float, ...]
    correct: tuple[bool, ...]


def paths(traces: list[Trace]) -> list[Path]:
    """The paths of traces the loop ran with reject_above = 0."""
    return [Path(tuple(p_wrong(t) for t in trace.turns if t.role == "judge"),
                 tuple(bool(t.correct) for t in trace.turns if t.role in ("answer", "reflect"))) for trace in traces]


def reflections(path: Path, threshold: float) -> int:
    """The reflections the loop makes with reject_above = threshold."""
    return next((t for t, doubt in enumerate(path.doubts) if doubt <= threshold), len(path.correct) - 1)


def kept(path: Path, threshold: float) -> int:
    """Which answer the loop keeps with reject_above = threshold (see the module doc)."""
    made = reflections(path, threshold)
    if made < len(path.doubts) and path.doubts[made] > threshold:  # keep_better judged the last answer: no accept
        return min(range(len(path.doubts)), key=lambda t: (path.doubts[t], t))
    return made


def point(problems: list[Path], threshold: float) -> dict:
    """The loop at one threshold: its accuracy, its reflections, the problems whose first answer it turns right
    (fixed) and wrong (broke), and the judge's false-accept / false-reject rates on the first answers."""
    judged = [p for p in problems if p.doubts]
    wrong, right = [p for p in judged if not p.correct[0]], [p for p in judged if p.correct[0]]
    final = [p.correct[kept(p, threshold)] for p in problems]
    return {"threshold": threshold,
            "accuracy": rate(sum(final), len(problems)),
            "reflections": sum(reflections(p, threshold) for p in problems),
            "fixed": sum(ok and not p.correct[0] for p, ok in zip(problems, final)),
            "broke": sum(p.correct[0] and not ok for p, ok in zip(problems, final)),
            "false_accept_rate": rate(sum(p.doubts[0] <= threshold for p in wrong), len(wrong)),
            "false_reject_rate": rate(sum(p.doubts[0] > threshold for p in right), len(right))}


def beats_no_tts(row: dict, z: float) -> bool:
    """Whether a threshold's fixes outnumber its breaks by the one-sided sign test: f - b >= z sqrt(f + b) (P = 1,
    which changes nothing, passes)."""
    return row["fixed"] - row["broke"] >= z * math.sqrt(row["fixed"] + row["broke"])


def calibrate(problems: list[Path], z: float = SIGN_TEST_Z) -> dict:
    """The threshold with the best accuracy (the largest of equals) among 0, every doubt and 1 that beat no TTS
    (`beats_no_tts` with bar z; 0: any gain), its accuracy, the accuracy without the loop (no_tts_accuracy, the
    curve at 1) and the curve: `point` at each candidate, in increasing order."""
    candidates = sorted({0.0, 1.0} | {d for p in problems for d in p.doubts if 0.0 <= d <= 1.0})
    curve = [point(problems, threshold) for threshold in candidates]
    best = max((row for row in curve if beats_no_tts(row, z)), key=lambda row: (row["accuracy"], row["threshold"]))
    return {"threshold": best["threshold"], "accuracy": best["accuracy"], "no_tts_accuracy": curve[-1]["accuracy"],
            "n": len(problems), "curve": curve}
