"""Leaves that are literals, read without sympy: exact rational numbers (`_as_number`), numbers written in
a base, multiple-choice letters (`_gold_choice`, `_pred_choice`) and words.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from spark.verify.limits import MAX_EXPONENT
from spark.verify.normalise import _RENAMES, _TEXT

_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")
_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SCIENTIFIC = re.compile(rf"(?P<mantissa>{_DECIMAL})(?:(?:[eE]|\\times10\^|\\cdot10\^|\*10\^)\{{?(?P<exp>[-+]?\d+)\}}?)?")
_POWER_OF_TEN = re.compile(r"10\^\{?(?P<exp>[-+]?\d+)\}?")
_FRAC = re.compile(r"(?P<whole>\d+)?\\frac(?:\{(?P<num>\d+)\}|(?P<num1>\d))(?:\{(?P<den>\d+)\}|(?P<den1>\d))")
_SLASH = re.compile(rf"(?P<num>{_DECIMAL})/(?P<den>{_DECIMAL})")
_REPEATING = re.compile(r"(?P<whole>\d*)\.(?P<fixed>\d*)\\overline\{?(?P<period>\d+)\}?")  # 0.1\overline{6}


def _as_number(s: str) -> tuple[Fraction, bool] | None:
    """s as an exact rational and whether it was a percentage; None unless s is a plain number literal.

    Literals: 72, -3.5, .35, 1,000, 4.5e33, 4.5\\times10^{33}, 10^{-3}, 3/4, \\frac{3}{4}, \\frac43,
    1\\frac{4}{5} (a mixed number), 0.1\\overline{6} (a repeating decimal), each optionally followed by %.
    """
    percent = s.endswith("%")
    s = s[:-1] if percent else s
    sign = -1 if s.startswith("-") else 1
    s = s[1:] if s[:1] in "+-" else s
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    try:
        if m := _SCIENTIFIC.fullmatch(s):
            exponent = int(m.group("exp") or 0)
            if abs(exponent) > MAX_EXPONENT:
                return None
            value = Fraction(m.group("mantissa")) * Fraction(10) ** exponent
        elif m := _POWER_OF_TEN.fullmatch(s):
            exponent = int(m.group("exp"))
            if abs(exponent) > MAX_EXPONENT:
                return None
            value = Fraction(10) ** exponent
        elif m := _FRAC.fullmatch(s):
            value = int(m.group("whole") or 0) + Fraction(int(m.group("num") or m.group("num1")),
                                                          int(m.group("den") or m.group("den1")))
        elif m := _SLASH.fullmatch(s):
            value = Fraction(m.group("num")) / Fraction(m.group("den"))
        elif m := _REPEATING.fullmatch(s):
            fixed, period = m.group("fixed"), m.group("period")
            value = (int(m.group("whole") or 0) + Fraction(int(fixed or 0), 10 ** len(fixed))
                     + Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed)))
        else:
            return None
    except (ValueError, ZeroDivisionError):  # a zero denominator, or more digits than int() allows
        return None
    return sign * value, percent


def _numbers_equal(pred: tuple[Fraction, bool], gold: tuple[Fraction, bool]) -> bool:
    """Exact equality. A percentage p% against a plain number x: x = p/100 (`50%` is `0.5`), or x = p when
    |x| >= 1 (`50%` is `50`, a gold that dropped its sign); `0.5%` is not `0.5`, that is a slip of 100."""
    (p, p_percent), (g, g_percent) = pred, gold
    if p_percent == g_percent:
        return p == g
    percent, plain = (p, g) if p_percent else (g, p)
    return plain == percent / 100 or (plain == percent and abs(plain) >= 1)


_GOLD_CHOICE = re.compile(r"\(?([A-E])\)?\.?")
_PRED_CHOICE = re.compile(
    r"(?:(?i:the\s+)?(?i:option|choice)\s*)?(?:\(([A-Ea-e])\)|([A-E])(?=[.:)]|\s|$)|([a-e])(?=[.:)]|$))"
)
_CHOICE_HEDGE = re.compile(r"\b(?:or|and)\s+\(?[A-Ea-e]\)?(?![A-Za-z])")  # `(A) or (B)`
_BASE_NUMBER = re.compile(r"(?P<digits>\d[0-9A-Z]*)_\{?(?P<base>\d+)\}?")  # 52_8, 1F_{16}
_WORD = re.compile(r"[A-Za-z]{3,}")


def _unwrap_text(answer: str) -> str:
    """The answer without `\\text{}`-like wrappers and `$`, for reading letters and words."""
    for pattern, replacement in _RENAMES:
        answer = pattern.sub(replacement, answer)
    return _TEXT.sub(r"\1", answer).replace("$", "").strip()


@functools.lru_cache(maxsize=1 << 14)
def _gold_choice(gold: str) -> str | None:
    """The letter of a multiple-choice gold answer (`A`, `(A)`, `A.`, `\\text{(A)}`), else None."""
    m = _GOLD_CHOICE.fullmatch(_unwrap_text(gold))
    return m.group(1) if m else None


def _pred_choice(pred: str) -> str | None:
    """The letter a response's answer picks (`A`, `(A)`, `A.`, `(b)`, `A. Point B`, `(A) 12`, `option E`),
    else None; a hedge between letters picks none."""
    text = _unwrap_text(pred)
    m = _PRED_CHOICE.match(text)
    if not m or _CHOICE_HEDGE.search(text):
        return None
    return next(letter for letter in m.groups() if letter).upper()
