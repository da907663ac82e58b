"""Bounds on what the verifier reads, so that every check finishes whatever the input.

Answers longer or more deeply nested than these are rejected before any parsing (spark.verify.scoring,
spark.verify.judgments); numbers and sympy refuse powers and factorials beyond MAX_EXPONENT
(spark.verify.literals, spark.verify.sympy_check).
"""

from __future__ import annotations

MAX_ANSWER_CHARS = 1000  # longer answers are rejected unseen: no gold answer is near this long
MAX_NESTING = 24  # deeper bracket nesting is rejected before any recursive parsing
MAX_EXPONENT = 1000  # a power of ten, numeric power or factorial beyond this is refused: it would not finish


def _nesting(s: str) -> int:
    """The deepest bracket nesting of s, counting (, [ and { alike."""
    depth = deepest = 0
    for c in s:
        if c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth -= 1
    return deepest
