"""Tests of spark.verify.extraction: the final answer of a response in each answer mode."""

from __future__ import annotations

import pytest

from spark.verify import extract_answer


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
