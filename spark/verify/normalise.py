r"""Normalisation: one canonical spelling of an answer string, so that equal strings mean equal answers.

Drops presentation (spacing, `\text{}`, units, degrees, `\$`, `\%`) and reads words as values (number
words, `3 billion`, `infinity`, `all real numbers`, `no solution`); see `_normalise`.
"""

from __future__ import annotations

import functools
import re

_RENAMES = [
    (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\(?:mbox|textrm|textbf|textit|mathrm|mathbf|mathit|operatorname)(?![A-Za-z])"), r"\\text"),
    (re.compile(r"\\(?:leq|leqslant)(?![A-Za-z])"), r"\\le"),
    (re.compile(r"\\(?:geq|geqslant)(?![A-Za-z])"), r"\\ge"),
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
    (re.compile(r"\\varnothing(?![A-Za-z])"), r"\\emptyset"),
    (re.compile(r"\\%|%"), "%"),
]
_UNICODE = str.maketrans({"−": "-", "×": r"\times ", "π": r"\pi ", "∞": r"\infty ", "√": r"\sqrt ", "∅": r"\emptyset "})
_DELETE = re.compile(
    r"\\(?:left|right)(?![A-Za-z])\.?|(?<!\\)\\[!,;: ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])|\\\$|\$|~"
    r"|\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])"
)
_TEXT_CONNECTIVE = re.compile(r"\\text\{\s*(?:or|and)\s*\}|(?<=\S)\s+(?:or|and)\s+(?=\S)")
_TRAILING_UNIT = re.compile(r"(?P<value>.*\S)\s*\\text\{[^{}]*\}(?:\^\{?\d\}?)?")
_TEXT = re.compile(r"\\text\{([^{}]*)\}")
_NUMBER_WITH_UNIT = re.compile(r"(?P<value>[-+]?[\d.,]*\d(?:\\times10\^\{\d+\})?%?)\s+(?P<unit>[A-Za-z]{2,}[A-Za-z ]*)(?:\^\{?\d\}?)?")
_SPACES = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|\s+")
_SINGLE_BRACED = re.compile(r"(?<=[_^])\{(\w)\}")
_MATH_WORDS = {"pi", "sin", "cos", "tan", "cot", "sec", "csc", "ln", "log", "exp", "sqrt", "i", "e"}
_NO_SOLUTION = {
    "nosolution", "nosolutions", "norealsolution", "norealsolutions", "noroots", "norealroots", "none",
    "dne", "doesnotexist", r"\emptyset", r"\{\}", "{}", "thereisnosolution", "therearenosolutions",
    "thereisnorealsolution", "therearenorealsolutions", "nosolutionexists",
}
_REALS = "(-\\infty,\\infty)"
_WORD_ANSWERS = {  # lower-cased, without spaces
    "infinity": r"\infty", "infinite": r"\infty", "positiveinfinity": r"\infty",
    "-infinity": r"-\infty", "negativeinfinity": r"-\infty", "minusinfinity": r"-\infty",
    r"\mathbb{r}": _REALS, r"\r": _REALS, r"\reals": _REALS, "allrealnumbers": _REALS, "allreals": _REALS,
    "therealnumbers": _REALS, "allrealx": _REALS,
}
_IMAGINARY_UNIT = re.compile(r"\\(?:mathrm|text|textrm|mathit|rm)\{\s*i\s*\}")  # before `\text{}` reads as a unit
# A whole answer that is a mixed number: `2 1/2`, `5\ 2/3`, `1 \text{ and } 1/2` (read before spaces go).
_MIXED_NUMBER = re.compile(
    r"\$?\s*(?P<whole>\d+)(?:\s*\\text\{\s*and\s*\}\s*|\s+and\s+|\s*\\[ ,;]\s*|\s+)"
    r"(?:(?P<num>\d+)/(?P<den>\d+)|\\[dt]?frac\{(?P<num_>\d+)\}\{(?P<den_>\d+)\})\s*\$?"
)
_SCALE_TEXT = re.compile(r"\\text\{\s*(thousand|million|billion|trillion)\b", re.IGNORECASE)
_SCALED = re.compile(r"(?P<value>\d[\d,]*(?:\.\d+)?)\s*(?P<scale>thousand|million|billion|trillion)\b\s*", re.IGNORECASE)
_SCALES = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_NUMBER_WORDS = {
    word: value for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split())
} | {word: 10 * (k + 2) for k, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}


def _mixed_number(answer: str) -> str | None:
    """`2 1/2` as `2\\frac{1}{2}` when the whole answer is a mixed number (a proper fraction after a whole)."""
    m = _MIXED_NUMBER.fullmatch(answer.strip())
    if not m:
        return None
    num, den = int(m.group("num") or m.group("num_")), int(m.group("den") or m.group("den_"))
    return f"{m.group('whole')}\\frac{{{num}}}{{{den}}}" if 0 < num < den else None


def _scaled(m: re.Match) -> str:
    """`2.1 billion` as `2.1\\times10^{9}`."""
    return f"{m.group('value')}\\times10^{{{_SCALES[m.group('scale').lower()]}}} "


def _number_from_words(s: str) -> int | None:
    """An integer written in English words below a million (`twenty-one`, `one hundred and five`), else None."""
    total = current = 0
    words = [w for w in re.split(r"[\s-]+", s.strip().lower()) if w]
    for k, word in enumerate(words):
        if word in _NUMBER_WORDS:
            current += _NUMBER_WORDS[word]
        elif word == "hundred" and k:
            current *= 100
        elif word == "thousand" and k:
            total, current = (total + current) * 1000, 0
        elif word != "and" or k in (0, len(words) - 1):
            return None
    return total + current if words else None


@functools.lru_cache(maxsize=1 << 14)  # a batch repeats its golds (n rollouts each) and many answers
def _normalise(answer: str) -> str:
    """A canonical spelling of an answer: equal strings mean equal answers.

    Drops presentation (`$`, `\\left`, thin spaces, `^\\circ`, `\\$`, `{,}`), unit words after a value,
    `\\text{}` wrappers, whitespace and a trailing period; keeps everything with mathematical meaning.
    Reads words as values: `3 billion`, `twenty-one`, `infinity`, `all real numbers`, `no solution`.
    """
    s = _IMAGINARY_UNIT.sub("i", answer.translate(_UNICODE)).replace("{,}", ",")
    s = _mixed_number(s) or s
    for pattern, replacement in _RENAMES:
        s = pattern.sub(replacement, s)
    s = _SCALED.sub(_scaled, _SCALE_TEXT.sub(r"\1 \\text{", s))
    s = _DELETE.sub("", s)
    s = _TEXT_CONNECTIVE.sub(",", s).strip().rstrip(".").strip()
    if unit := _TRAILING_UNIT.fullmatch(s):
        s = unit.group("value")
    s = _TEXT.sub(r"\1", s).strip()
    if (number := _number_from_words(s)) is not None:
        s = str(number)
    if (unit := _NUMBER_WITH_UNIT.fullmatch(s)) and not set(unit.group("unit").lower().split()) & _MATH_WORDS:
        s = unit.group("value")
    s = _SPACES.sub(lambda m: m.group(1) + " " if m.group(1) else "", s).rstrip(".")
    s = _SINGLE_BRACED.sub(r"\1", s)
    s = s[1:] if s.startswith("+") else s
    return r"\emptyset" if s.lower() in _NO_SOLUTION else _WORD_ANSWERS.get(s.lower(), s)
