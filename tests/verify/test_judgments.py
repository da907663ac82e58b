"""Tests of spark.verify.judgments: a judge's verdict, pointwise and pairwise."""

from __future__ import annotations

import pytest

from spark.verify import parse_judgment


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
