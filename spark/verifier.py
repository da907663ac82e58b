r"""Verifiable reward: does a response's final answer equal the gold answer?

The reward is the only ground truth the method has, so the verifier aims to grade like a careful
human and to stay bounded in time whatever the input.

- `extract_answer` finds the final answer in one of three modes (ANSWER_MODES): "strict" reads only the
  last `\boxed{}` / `\fbox{}`, the format every prompt asks for; "first" only the first one, as the
  authors' evaluation scripts read answers and verdicts; "lenient" reads it as a human grader
  would: several boxes that together are the answer, "Answer: X", "The final answer is $X$",
  `<answer>` tags, `#### X`, a final bold value, other languages, and a boxed answer withdrawn and
  corrected. Precision first: no clear final answer, or a hedge between values, is wrong.
- `score_batch` / `is_correct` (lenient by default) normalise both sides (spacing, `\text{}`, units,
  degrees, `\$`, `\%`, number words), then compare structure (tuples and intervals in order, sets
  and lists of roots in any order, matrices, unions, set-builder sets, equations, inequalities) and
  finally each leaf: exact string, exact rational number, multiple-choice letter (or, lenient, the
  value of an option the response lists), word, and only then sympy.
- The sympy part runs in a reusable pool of worker processes. A check that exceeds its timeout has
  its worker killed and replaced; it scores 0 and is counted in `verifier_stats()`, never raised. A
  worker that dies mid-check (killed from outside) is replaced and its check sent again, once.
- `parse_judgment` reads a judge's verdict: `Yes`/`No` (pointwise) or `A`/`B` (pairwise).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import wait
from pathlib import Path
from typing import Literal, get_args

MAX_ANSWER_CHARS = 1000  # longer answers are rejected unseen: no gold answer is near this long
MAX_NESTING = 24  # deeper bracket nesting is rejected before any recursive parsing
JUDGE_KINDS = ("pointwise", "pairwise")
AnswerMode = Literal["strict", "lenient", "first"]  # see extract_answer
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)

# --------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOXES_READ = 8  # the last few boxes are enough to find the final group; bounds the work on box-heavy text
# Text between two boxes that makes them one answer (`x = \boxed{2}$ and $x = \boxed{-5}`, `\boxed{1}, \boxed{3}`);
# hedge words join too, so that a hedge is read whole and fails against a single gold answer.
_BOX_JOINER = re.compile(
    r"(?:[\s$,;&]|\\[,;!: ]|\\q?quad|\\text\{[^{}]*\}|\b(?:and|or|either|maybe|perhaps|possibly)\b"
    r"|[A-Za-z](?:_\{?\w+\}?)?\s*=)*",
    re.IGNORECASE,
)
_NAME_BEFORE_BOX = re.compile(r"(?<![A-Za-z\\])([A-Za-z](?:_\{?\w+\}?)?)\s*=\s*\$?\s*$")
# Phrases after which a response states its answer in words, in the languages models answer in.
_ANSWER_PHRASE = re.compile(
    r"(?:\banswer|\bréponse|\brespuesta|\bantwort|\brisposta|\bresposta|ответ|答案)\**\s*[:：]"
    r"|\b(?:answer|option|choice)\s+is\b\s*:?"
    r"|\b(?:la\s+respuesta\s+es|la\s+réponse\s+est|die\s+antwort\s+ist|la\s+risposta\s+è|a\s+resposta\s+é)\b\s*:?"
    r"|答案是|####",
    re.IGNORECASE,
)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_FINAL_BOLD = re.compile(r"\*\*([^*\n]+)\*\*[\s.!。]*\Z")
# An explicit withdrawal of an answer already given, as opposed to a check that confirms it.
_RETRACTION = re.compile("|".join([
    r"\b(?:that|this|it|the\s+above|my\s+answer|the\s+answer|the\s+result)(?:'s|\s+is|\s+was)\s+"
    r"(?:wrong|incorrect|not\s+(?:right|correct))",  # "that's wrong", "the above is incorrect"
    r"\bI\s+(?:made|make)\s+(?:a|an)\s+(?:mistake|error)\b",
    r"\bscratch\s+that\b", r"\bcorrection\s*:", r"\bno,?\s+wait\b", r"\bwait,?\s+no\b",
    r"\b(?:wait|oops|hmm|actually)\b[^.\n]{0,40}\b(?:wrong|incorrect|mistake|error)\b",  # "Actually, ... a mistake"
]), re.IGNORECASE)
_VALUE_END = re.compile(
    r"\.(?=\s|$)|。|;\s|,\s*(?:so|since|because|as|which|that|and\s+(?:so|thus|hence))\b|\s+(?:since|because)\s|I hope",
    re.IGNORECASE,
)


def _braced(text: str, start: int) -> str | None:
    """The content of the `{...}` group opening at text[start]; None if it never closes."""
    depth = 0
    for m in _BRACE_OR_ESCAPE.finditer(text, start):
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : m.start()]
    return None


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


@dataclass(frozen=True)
class _Box:
    start: int  # where `\boxed` begins
    end: int  # just after the closing brace
    content: str | None  # None: the box never closes (a truncated generation)


def _box(response: str, m: re.Match) -> _Box:
    """The box whose command `m` found (`\\boxed{...}`, `\\fbox{...}`, `\\boxed 5`)."""
    rest = len(response) - len(response[m.end() :].lstrip())
    if response.startswith("{", rest):
        content = _braced(response, rest)
        end = rest + len(content) + 2 if content is not None else len(response)
        return _Box(m.start(), end, None if content is None else content.strip())
    bare = re.compile(r"[^\s$]+").match(response, rest)
    return _Box(m.start(), bare.end() if bare else rest, bare.group() if bare else None)


def _last_boxes(response: str) -> list[_Box]:
    """The last `_BOXES_READ` boxes of a response, in order."""
    return [_box(response, m) for m in deque(_BOX.finditer(response), maxlen=_BOXES_READ)]


def _final_box_group(response: str, boxes: list[_Box]) -> str | None:
    """The answer the last boxes give together: one box, or several joined only by commas, `and`, `or`
    or `x =` (roots, coordinates, a hedge), as a comma-separated list; `a = \\boxed{2}` keeps its name."""
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _BOX_JOINER.fullmatch(response, box.end, group[0].start):
            break
        group.insert(0, box)
    if any(box.content is None for box in group):
        return None
    if len(group) == 1:
        return group[0].content
    items = []
    for box in group:
        named = _NAME_BEFORE_BOX.search(response, max(0, box.start - 20), box.start)
        item = f"{named.group(1)}={box.content}" if named and "=" not in box.content else box.content
        if item not in items:  # `\boxed{5} \boxed{5}` repeats one answer
            items.append(item)
    return ", ".join(items)


def _stated_value(text: str) -> str | None:
    """The answer at the start of `text` (what follows "Answer:"): the rest of its line, or of the next
    line when the phrase ends one, up to the end of its sentence; without bold, `$` or `\\(`; None if empty."""
    line = text.lstrip("* \t").removeprefix("\n").lstrip("* \t").split("\n", 1)[0]
    masked = re.sub(r"\$[^$]*\$", lambda m: "x" * len(m.group()), line)  # a sentence never ends inside $...$
    end = _VALUE_END.search(masked)
    value = (line[: end.start()] if end else line).replace(r"\(", "").replace(r"\)", "")
    return value.strip(" \t*:$").rstrip(".").strip(" $") or None


def _stated_answers(response: str) -> list[tuple[int, str]]:
    """(position, value) of every answer stated outside a box: after an answer phrase, in `<answer>` tags,
    or as a bold value ending the response."""
    stated = []
    for m in _ANSWER_PHRASE.finditer(response):
        if value := _stated_value(response[m.end() :]):
            stated.append((m.end(), value))
    for m in _ANSWER_TAG.finditer(response):
        if value := _stated_value(m.group(1).strip()):
            stated.append((m.start(1), value))
    if bold := _FINAL_BOLD.search(response):
        if value := _stated_value(bold.group(1)):
            stated.append((bold.start(1), value))
    return sorted(stated)


def extract_answer(response: str, mode: str = "lenient") -> str | None:
    """The final answer of a response, or None when it gives none.

    "strict": the content of the last `\\boxed{}` (or `\\fbox{}`), the format every prompt asks for.
    "first": the content of the first one (the authors' evaluation reads this box); None if it never closes.
    "lenient", as a careful human grader reads it: the last group of boxes (several boxes joined by
    commas, `and` or `or` are one answer: roots, coordinates, or a hedge that will fail); without a box,
    the last answer stated in words ("Answer: X", "The final answer is $X$. I hope it is correct.",
    "the correct option is (C)", `<answer>X</answer>`, "#### X", a final bold value, and the same in
    other languages). An answer stated after the last box wins only when the box was explicitly
    withdrawn ("Wait, that's wrong"); a withdrawn box with no answer after it gives None. A last box that
    never closes (a truncated generation) gives None rather than an earlier box.
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {mode!r}; expected one of {ANSWER_MODES}")
    if mode == "first":
        first = _BOX.search(response)
        return _box(response, first).content if first else None
    boxes = _last_boxes(response)
    if mode == "strict":
        return boxes[-1].content if boxes else None
    if not boxes:
        stated = _stated_answers(response)
        return stated[-1][1] if stated else None
    retraction = _RETRACTION.search(response, boxes[-1].end)
    if retraction is None:
        return _final_box_group(response, boxes)
    corrections = _stated_answers(response[retraction.end() :])
    return corrections[-1][1] if corrections else None


# --------------------------------------------------------------------------- normalisation

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


# --------------------------------------------------------------------------- numbers, letters, words

_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")
_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SCIENTIFIC = re.compile(rf"(?P<mantissa>{_DECIMAL})(?:(?:[eE]|\\times10\^|\\cdot10\^|\*10\^)\{{?(?P<exp>[-+]?\d+)\}}?)?")
_POWER_OF_TEN = re.compile(r"10\^\{?(?P<exp>[-+]?\d+)\}?")
_FRAC = re.compile(r"(?P<whole>\d+)?\\frac(?:\{(?P<num>\d+)\}|(?P<num1>\d))(?:\{(?P<den>\d+)\}|(?P<den1>\d))")
_SLASH = re.compile(rf"(?P<num>{_DECIMAL})/(?P<den>{_DECIMAL})")
_REPEATING = re.compile(r"(?P<whole>\d*)\.(?P<fixed>\d*)\\overline\{?(?P<period>\d+)\}?")  # 0.1\overline{6}
MAX_EXPONENT = 1000  # a power of ten, numeric power or factorial beyond this is refused: it would not finish


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
_OPTION_INLINE = re.compile(r"\(([A-E])\)\s*([^()\n]*?)\s*(?=\([A-E]\)|\.\s|\n|$)")  # (A) 12 (B) 18
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-E])[.):][ \t]*(.+?)[ \t]*$", re.MULTILINE)  # A) 12 / A. 12 on a line
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


def _option_letter(response: str, pred: str) -> str | None:
    """The letter of the one option listed in the response (`(A) 12 (B) 18`, or `A. 12` lines) whose value
    the answer equals without sympy; None when no option or several match."""
    options = {m.group(1): m.group(2) for m in _OPTION_INLINE.finditer(response)}
    options |= {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(response)}
    letters = {letter for letter, value in options.items() if value and _compare(pred, value, use_sympy=False)}
    return letters.pop() if len(letters) == 1 else None


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class _Seq:
    """A compound answer. kind: "bracketed" (tuple, interval or vector, `brackets` like "(]"),
    "set" and "list" (order-free: a set, a list of roots), "union" (of intervals, order-free),
    "matrix" (rows in order)."""

    kind: str
    items: tuple
    brackets: str = ""


_OPEN, _CLOSE = "([{", ")]}"
_MATRIX = re.compile(r"\\begin\{(?P<env>[pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(?P<body>.*)\\end\{(?P=env)\}", re.DOTALL)
_IN_PREFIX = re.compile(r"(?:[A-Za-z]|\\[A-Za-z]+)\\in(?![A-Za-z])")
_RELATION = re.compile(r"(\\le(?![A-Za-z])|\\ge(?![A-Za-z])|<|>)")
_FLIP = {"<": ">", ">": "<", r"\le": r"\ge", r"\ge": r"\le"}
_VARIABLE = re.compile(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\w+)?(?:\([^()]*\))?")  # x, x_1, \theta, f(x)
_COMMAND = re.compile(r"\\[A-Za-z]+")
_QUANTITY = re.compile(r"(?=.*[A-Za-z])(?!.*[-+]\d)[^<>]+")  # a+b, AB, ABC, f(3), {AB}{BC}; not x+1, not 2{13}
# A name before a tuple or matrix: `P(1,2)`, `P=(1,2)`, `v=(1,2)`, `(x,y)=(1,2)`, `A=\begin{pmatrix}`.
_NAMED = re.compile(r"(?:[A-Z](?:_\{?\w+\}?|')?=?|[A-Za-z](?:_\{?\w+\}?)?=|\([A-Za-z,]+\)=)(?=[(\[\\])")
_SET_BUILDER = (r"\mid", "|", ":")


def _split_top(s: str, separator: str) -> list[str]:
    """s split at the occurrences of `separator` outside every (), [] and {} group."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in _OPEN:
            depth += 1
        elif s[i] in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(separator, i):
            parts.append(s[start:i])
            i = start = i + len(separator)
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """Whether the first bracket of s closes at its last character (`(1,2)` but not `(a)(b)`)."""
    depth = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _parse(s: str) -> str | _Seq:
    """The structure of a normalised answer; its leaves are normalised strings."""
    pieces = _split_top(s, r"\cup")
    if len(pieces) > 1:
        return _Seq("union", tuple(_parse(piece) for piece in pieces))
    pieces = _split_top(s, r"\setminus")
    if len(pieces) == 2 and (difference := _without_points(*pieces)):
        return difference
    s = _IN_PREFIX.sub("", s, count=1) if _IN_PREFIX.match(s) else s
    if _THOUSANDS.fullmatch(s):
        return s
    if (named := _NAMED.match(s)) and (_encloses(s[named.end() :]) or s.startswith(r"\begin", named.end())):
        s = s[named.end() :]
    if matrix := _MATRIX.search(s):
        before, after = s[: matrix.start()], s[matrix.end() :]
        if not after or before + after in ("[]", "()"):
            scalar = "" if after else re.sub(r"\\(?:cdot|times)$", "", before)
            if "=" not in scalar and "," not in scalar:
                return _matrix(matrix.group("body"), scalar)
    if s.startswith(r"\{") and s.endswith(r"\}") and _encloses(s):
        return _set(s[2:-2])
    if s[:1] in ("(", "[") and s[-1:] in (")", "]") and _encloses(s):
        parts = _split_top(s[1:-1], ",")
        if len(parts) > 1:
            return _Seq("bracketed", tuple(_parse(part) for part in parts), s[0] + s[-1])
    if len(_split_top(s, ",")) > 1 or len(_split_top(s, r"\pm")) == 2:
        return _Seq("list", _items(s))
    return _inequality(s) or s


def _items(s: str) -> tuple:
    """The elements of an order-free collection; `a \\pm b` stands for both a+b and a-b."""
    items = []
    for part in filter(None, _split_top(s, ",")):
        plus_minus = _split_top(part, r"\pm")
        if len(plus_minus) == 2:
            a, b = plus_minus
            b = f"({b})" if re.search(r"[-+]", b) else b
            items += [_parse(f"{a}+{b}"), _parse(f"{a}-{b}")]
        else:
            items.append(_parse(part))
    return tuple(items)


def _set(body: str) -> str | _Seq:
    """The inside of `\\{...\\}`: its elements, or what set-builder notation describes (`x \\mid x > 3`)."""
    for bar in _SET_BUILDER:
        parts = _split_top(body, bar)
        if len(parts) == 2 and (_VARIABLE.fullmatch(parts[0]) or _IN_PREFIX.match(parts[0])):
            return _parse(parts[1])
    return _Seq("set", _items(body))


def _without_points(whole: str, removed: str) -> _Seq | None:
    """`\\mathbb{R} \\setminus \\{0, 3\\}` as the union of intervals it leaves; None unless an interval
    minus a set of numbers."""
    interval, points = _parse(_WORD_ANSWERS.get(whole.lower(), whole)), _parse(removed)
    if not (isinstance(interval, _Seq) and interval.kind == "bracketed" and len(interval.items) == 2):
        return None
    if not (isinstance(points, _Seq) and points.kind == "set") and not isinstance(points, str):
        return None
    cuts = points.items if isinstance(points, _Seq) else (points,)
    values = [_as_number(cut) if isinstance(cut, str) else None for cut in cuts]
    if None in values:
        return None
    edges = [interval.items[0], *(cut for _, cut in sorted(zip(values, cuts))), interval.items[1]]
    last = len(edges) - 2
    return _Seq("union", tuple(
        _Seq("bracketed", (lo, hi), (interval.brackets[0] if k == 0 else "(") + (interval.brackets[1] if k == last else ")"))
        for k, (lo, hi) in enumerate(zip(edges, edges[1:]))
    ))


def _matrix(body: str, scalar: str = "") -> _Seq:
    """A matrix by rows, each entry times `scalar` if one stands before it; a single row or column is a
    vector and compares like a tuple."""
    def entry(text: str) -> str | _Seq:
        return _parse(f"({scalar})({text})" if scalar else text)

    rows = [tuple(entry(text) for text in _split_top(row, "&")) for row in _split_top(body, "\\\\") if row]
    if len(rows) == 1 or all(len(row) == 1 for row in rows):
        return _Seq("bracketed", tuple(entry for row in rows for entry in row), "()")
    return _Seq("matrix", tuple(_Seq("bracketed", row, "()") for row in rows))


def _inequality(s: str) -> _Seq | None:
    """`x > 3`, `3 \\le x`, `-2 \\le x < 7` as the interval they describe, else None."""
    parts = [part.strip() for part in _RELATION.split(s)]
    if len(parts) == 3:
        lhs, op, rhs = parts
        if _VARIABLE.fullmatch(rhs) and not _VARIABLE.fullmatch(lhs):
            lhs, op, rhs = rhs, _FLIP[op], lhs
        if not _VARIABLE.fullmatch(lhs):
            return None
        if op in ("<", r"\le"):
            return _Seq("bracketed", (r"-\infty", rhs), "(" + (")" if op == "<" else "]"))
        return _Seq("bracketed", (rhs, r"\infty"), ("(" if op == ">" else "[") + ")")
    if len(parts) == 5 and _VARIABLE.fullmatch(parts[2]):
        lo, low_op, _, high_op, hi = parts
        if low_op in (">", r"\ge") and high_op in (">", r"\ge"):
            lo, low_op, high_op, hi = hi, _FLIP[high_op], _FLIP[low_op], lo
        if low_op in ("<", r"\le") and high_op in ("<", r"\le"):
            return _Seq("bracketed", (lo, hi), ("(" if low_op == "<" else "[") + (")" if high_op == "<" else "]"))
    return None


# --------------------------------------------------------------------------- comparison
# Comparisons are three-valued: True, False, or None when only sympy can tell (`use_sympy=False`).


_LEADING_TEXT = re.compile(  # `\text{The total is } 250`, `\text{Answer: } 16`
    r"\s*\\(?:text|textbf|textrm|mbox|mathrm)\{\s*(?P<words>[A-Za-z][A-Za-z ]*?)\s*(?P<colon>[:=])?\s*\}\s*(?P<equals>=)?\s*"
)
_APPROX = re.compile(r"\\approx(?![A-Za-z])|\\simeq(?![A-Za-z])|≈")
_DECIMAL_GOLD = re.compile(r"-?\d*\.\d+")
_LONE_I, _LONE_J = (re.compile(rf"(?<![A-Za-z\\]){letter}(?![A-Za-z])") for letter in "ij")


def _answer_part(pred: str, gold: str) -> str:
    """What in a boxed answer is the answer: without leading words (`\\text{The total is } 250`), the
    exact value before `\\approx` (the decimal after it when the gold is a decimal)."""
    lead = _LEADING_TEXT.match(pred)
    if lead and pred[lead.end() :].strip() and (lead.group("colon") or lead.group("equals") or " " in lead.group("words")):
        pred = pred[lead.end() :]
    sides = _APPROX.split(pred)
    return sides[-1] if len(sides) > 1 and _DECIMAL_GOLD.fullmatch(gold.strip()) else sides[0]


def _compare(pred: str, gold: str, use_sympy: bool) -> bool | None:
    """Whether an extracted answer equals the gold answer."""
    if letter := _gold_choice(gold):
        return _pred_choice(pred) == letter
    p, g = _normalise(_answer_part(pred, gold)), _normalise(gold)
    if _LONE_J.search(p) and not _LONE_I.search(p) and _LONE_I.search(g):  # an engineer's imaginary unit
        p = _LONE_J.sub("i", p)
    return p == g or _match(_parse(p), _parse(g), use_sympy)


def _match(pred: str | _Seq, gold: str | _Seq, use_sympy: bool) -> bool | None:
    if isinstance(pred, str) and isinstance(gold, str):
        return _match_leaf(pred, gold, use_sympy)
    if r"\emptyset" in (pred, gold):  # `\{\emptyset\}` is a set with one element, not the empty set
        return False
    if isinstance(gold, str) and pred.kind == "list":  # `15\frac{39}{40}, or \frac{639}{40}`: one value, restated
        return _match_in_order(pred.items, (gold,) * len(pred.items), use_sympy)
    p = pred if isinstance(pred, _Seq) else _Seq("list", (pred,))
    g = gold if isinstance(gold, _Seq) else _Seq("list", (gold,))
    kinds = {p.kind, g.kind}
    if len(p.items) != len(g.items):
        return False
    if kinds == {"bracketed"}:
        return p.brackets == g.brackets and _match_in_order(p.items, g.items, use_sympy)
    if kinds == {"matrix"} or (kinds == {"bracketed", "list"} and "()" in (p.brackets, g.brackets)):
        return _match_in_order(p.items, g.items, use_sympy)  # `(2, 3)` written as `2, 3`
    if kinds <= {"set", "list"} or kinds <= {"union", "list"}:  # `x < -1 or x > 4` is a union
        return _match_any_order(p.items, g.items, use_sympy)
    return False


def _match_in_order(preds: tuple, golds: tuple, use_sympy: bool) -> bool | None:
    undecided = False
    for p, g in zip(preds, golds):
        verdict = _match(p, g, use_sympy)
        if verdict is False:
            return False
        undecided |= verdict is None
    return None if undecided else True


def _match_any_order(preds: tuple, golds: tuple, use_sympy: bool) -> bool | None:
    """Whether the items pair up one to one, in any order (a perfect bipartite matching)."""
    if _match_in_order(preds, golds, use_sympy):
        return True
    verdicts = [[_match(p, g, use_sympy) for g in golds] for p in preds]
    if _has_perfect_matching([[v is True for v in row] for row in verdicts]):
        return True
    if not _has_perfect_matching([[v is not False for v in row] for row in verdicts]):
        return False
    return None


def _has_perfect_matching(allowed: list[list[bool]]) -> bool:
    """Kuhn's augmenting paths on the square relation allowed[pred][gold]."""
    owner = [-1] * len(allowed)

    def augment(i: int, seen: list[bool]) -> bool:
        for j, ok in enumerate(allowed[i]):
            if ok and not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, [False] * len(allowed)) for i in range(len(allowed)))


def _match_leaf(p: str, g: str, use_sympy: bool) -> bool | None:
    if p == g:
        return True
    if not p or not g or r"\emptyset" in (p, g):
        return False
    p_sides, g_sides = _split_top(p, "="), _split_top(g, "=")
    if len(p_sides) == 2 and len(g_sides) == 2:
        return _match_equations(p_sides, g_sides, use_sympy)
    if len(p_sides) > 2 and len(g_sides) == 2:  # `x = 2+3 = 5` against `x = 5`
        value = _value_of(p_sides)
        return p_sides[0] == g_sides[0] and value is not None and _match_leaf(value, g_sides[1], use_sympy)
    if len(p_sides) > 1 or len(g_sides) > 1:  # `x = 3`, `a+b = 2+3 = 5` against `3`
        solved, other = (p_sides, g) if len(p_sides) > 1 else (g_sides, p)
        value = _value_of(solved)
        return value is not None and len(_split_top(other, "=")) == 1 and _match_leaf(value, other, use_sympy)
    p_number, g_number = _as_number(p), _as_number(g)
    if p_number and g_number:
        return _numbers_equal(p_number, g_number)
    for answer, other in ((p, g), (g, p)):  # `52_8` written without its base
        if (based := _BASE_NUMBER.fullmatch(answer)) and based.group("digits") == other:
            return True
    if _is_word(p) or _is_word(g):
        return p.lower() == g.lower()
    if not use_sympy:
        return None
    from spark.verify import sympy_check as verifier_sympy  # only worker processes pay for importing sympy

    return verifier_sympy.equal(p, g)


def _value_of(sides: list[str]) -> str | None:
    """The value an equation or chain gives the quantity it names (`x=3`, `3=x`, `a+b=2+3=5`,
    `\\angle ABC=30`: the last side); None if no side names one (`x+1=5` is an equation, not a value)."""
    if len(sides) == 2 and _VARIABLE.fullmatch(sides[1]) and not _VARIABLE.fullmatch(sides[0]):
        return sides[0]
    return sides[-1] if _VARIABLE.fullmatch(sides[0]) or _QUANTITY.fullmatch(_COMMAND.sub("", sides[0])) else None


def _match_equations(p_sides: list[str], g_sides: list[str], use_sympy: bool) -> bool | None:
    same_sides = _match_in_order(tuple(p_sides), tuple(g_sides), use_sympy)
    if same_sides or _match_in_order(tuple(p_sides), tuple(reversed(g_sides)), use_sympy):
        return True
    if p_sides[0] == g_sides[0] and same_sides is False:  # `x=5` against `x=6`
        return False
    if not use_sympy:
        return None
    from spark.verify import sympy_check as verifier_sympy

    return verifier_sympy.equations_equal(p_sides, g_sides)


def _is_word(s: str) -> bool:
    return bool(_WORD.fullmatch(s)) and s.lower() not in _MATH_WORDS


# --------------------------------------------------------------------------- worker processes


def _check(pred: str, gold: str) -> str:
    """The verdict of a worker process: "equal", "different" or "rejected" (would not finish)."""
    from spark.verify import sympy_check as verifier_sympy

    try:
        return "equal" if _compare(pred, gold, use_sympy=True) else "different"
    except verifier_sympy.TooLarge:
        return "rejected"
    except Exception:  # sympy raises many kinds of error on odd input; any of them means "not shown equal"
        return "different"


def _worker_main() -> None:
    """A worker process: answer each JSON [pred, gold] line on stdin with a verdict line on stdout."""
    # Ctrl-C and preemption notices (spark.preemption) are the parent's to handle; a worker ends when its input does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    _check("x+1", "1+x")  # import sympy and warm its caches before declaring readiness
    print("ready", flush=True)
    for line in sys.stdin:
        print(_check(*json.loads(line)), flush=True)


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    ready: bool = False


class _Pool:
    """Worker processes that run checks under a deadline; a worker past its deadline is killed and replaced.

    Workers are plain `python -c` subprocesses talking JSON lines over pipes: unlike multiprocessing's
    spawn or forkserver they never re-import the caller's main module (a trainer would drag torch into
    every worker), and unlike fork they are safe in a threaded caller. A deadline starts when a check is
    sent, so start-up time (importing sympy) is never charged to a check.
    """

    MAX_FAILED_STARTS = 3
    STARTUP_TIMEOUT = 120.0

    def __init__(self, size: int):
        self.failed_starts = 0
        self.workers = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        repo_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-c", "from spark.verifier import _worker_main; _worker_main()"]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        return _Worker(process)

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.wait()
        with contextlib.suppress(OSError):  # input it will never read
            worker.process.stdin.close()
        worker.process.stdout.close()
        self.workers[self.workers.index(worker)] = self._start()

    def run(self, tasks: list[tuple[str, str]], timeout: float) -> list[str]:
        """The verdict of each (pred, gold) task, or "timeout" / "crashed" (its worker died twice on it)."""
        verdicts = [""] * len(tasks)
        queue = deque(range(len(tasks)))
        died_on: set[int] = set()  # tasks whose first worker died: sent once more
        running: dict[_Worker, tuple[int, float]] = {}  # worker -> (task index, deadline)
        while queue or running:
            for worker in self.workers:
                if queue and worker.ready and worker not in running:
                    i = queue.popleft()
                    try:
                        worker.process.stdin.write(json.dumps(tasks[i]) + "\n")
                        worker.process.stdin.flush()
                    except BrokenPipeError:  # the worker died while idle: the task waits for another
                        queue.appendleft(i)
                        self._replace(worker)
                        continue
                    running[worker] = (i, time.monotonic() + timeout)
            waiting = {w.process.stdout: w for w in self.workers if w in running or not w.ready}
            deadline = min((d for _, d in running.values()), default=time.monotonic() + self.STARTUP_TIMEOUT)
            readable = wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
            if not readable and not running:
                raise RuntimeError(f"spark.verifier: no worker process started within {self.STARTUP_TIMEOUT:.0f} s")
            for stream in readable:
                worker = waiting[stream]
                message = stream.readline().strip()  # one whole line: a worker writes one line per task
                if message == "ready":
                    worker.ready, self.failed_starts = True, 0
                elif message:
                    verdicts[running.pop(worker)[0]] = message
                else:  # the worker died
                    if worker in running:
                        i = running.pop(worker)[0]
                        if i in died_on:
                            verdicts[i] = "crashed"
                        else:
                            died_on.add(i)
                            queue.append(i)
                            _stats["retried"] += 1
                    elif not worker.ready:
                        self.failed_starts += 1
                        if self.failed_starts >= self.MAX_FAILED_STARTS:
                            raise RuntimeError("spark.verifier: worker processes keep dying at start-up")
                    self._replace(worker)
            now = time.monotonic()
            for worker, (i, deadline) in list(running.items()):
                if now >= deadline:
                    del running[worker]
                    verdicts[i] = "timeout"
                    self._replace(worker)
        return verdicts

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):  # a worker that already died
                worker.process.stdin.close()  # end of input: an idle worker exits
        for worker in self.workers:
            try:
                worker.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.process.stdout.close()


_pool: _Pool | None = None
_num_workers = min(4, os.cpu_count() or 1)
_lock = threading.Lock()
_stats: Counter[str] = Counter()
_STAT_KEYS = ("checked", "cheap", "sympy", "timeouts", "rejected", "crashed", "retried")
_FAILURES = {"timeout": "timeouts", "rejected": "rejected", "crashed": "crashed"}  # worker verdict -> counter


def _forget_pool_in_child() -> None:
    """A forked child must not talk to its parent's workers: it starts its own pool when it needs one."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def configure(num_workers: int) -> None:
    """Set the number of worker processes (default min(4, cpu count)); restarts the pool lazily."""
    global _num_workers
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    shutdown()
    _num_workers = num_workers


def shutdown() -> None:
    """Stop the worker processes (registered with atexit; the next check starts a new pool)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None


atexit.register(shutdown)


def verifier_stats() -> dict[str, int]:
    """Counters since import: rows checked, decided cheaply in the caller, sent to sympy workers,
    and how many of those timed out, were rejected as too large, or crashed their worker twice, and how
    many checks were sent again after their worker died."""
    return {key: _stats[key] for key in _STAT_KEYS}


# --------------------------------------------------------------------------- public scoring


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
    with _lock:
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
            global _pool
            _pool = _pool or _Pool(_num_workers)
            _stats["sympy"] += len(tasks)
            for i, verdict in zip(hard, _pool.run(tasks, timeout)):
                if verdict in _FAILURES:
                    _stats[_FAILURES[verdict]] += 1
                scores[i] = float(verdict == "equal")
    return scores


def is_correct(response: str, gold: str, timeout: float = 2.0, *, mode: str = "lenient") -> bool:
    """Whether the final answer of `response`, found as `mode` says, equals `gold` (a bare answer such as
    `\\frac{1}{2}` or `72`)."""
    return score_batch([response], [gold], timeout=timeout, mode=mode)[0] == 1.0


# --------------------------------------------------------------------------- judge verdicts

_VERDICT_PREFIX = re.compile(r"^(?:answer|response|option)", re.IGNORECASE)
_BETTER = re.compile(r"answer\s*([12])\s*is\s*(?:the\s*)?better", re.IGNORECASE)
_VERDICTS = {
    "pointwise": {"yes": "Yes", "no": "No"},
    "pairwise": {"a": "A", "b": "B", "1": "A", "2": "B"},
}


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
