"""Reading a judge's verdict (`parse_judgment`): `Yes`/`No` (pointwise) or `A`/`B` (pairwise)."""

from __future__ import annotations

import re
from collections import deque

from spark.verify.extraction import extract_answer
from spark.verify.limits import MAX_ANSWER_CHARS
from spark.verify.normalise import _normalise

JUDGE_KINDS = ("pointwise", "pairwise")  # the kinds of score_batch's rows that are verdicts

_VERDICT_PREFIX = re.compile(r"^(?:answer|response|option)", re.IGNORECASE)
_BETTER = re.compile(r"answer\s*([12])\s*is\s*(?:the\s*)?better", re.IGNORECASE)
_VERDICTS = {
    "pointwise": {"yes": "Yes", "no": "No"},
    "pairwise": {"a": "A", "b": "B", "1": "A", "2": "B"},
}


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def parse_judgment(response: str, kind: str) -> str | None:
    """A judge's verdict: "Yes"/"No" (kind "pointwise") or "A"/"B" (kind "pairwise"); None if unreadable.

    Read from the last `\\boxed{}` (`Yes`, `no`, `\\text{Yes}`, `(B)`, `Answer 1`); a pairwise response
    without a box may instead say "Overall Judgment: Answer 1 is better" (VL-RewardBench's form).
    """
    if kind not in _VERDICTS:
        raise ValueError(f"parse_judgment: unknown kind {kind!r}; expected 'pointwise' or 'pairwise'")
    if not isinstance(response, str):
        return None
    boxed = extract_answer(response, "strict")
    if boxed is not None:
        if len(boxed) > MAX_ANSWER_CHARS:
            return None
        verdict = _VERDICT_PREFIX.sub("", re.sub(r"[^A-Za-z0-9]", "", _normalise(boxed)))
        return _VERDICTS[kind].get(verdict.lower())
    if kind == "pairwise":
        better = _last_match(_BETTER, response)
        return "AB"[int(better.group(1)) - 1] if better else None
    return None
