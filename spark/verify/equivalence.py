"""The comparison of an extracted answer with the gold answer (`_compare`).

Both sides are normalised (spark.verify.normalise), then their structures compared (spark.verify.structure:
tuples and intervals in order, sets and lists of roots in any order, matrices, unions, set-builder sets,
equations, inequalities) and finally each leaf: exact string, exact rational number, multiple-choice
letter (or, lenient, the value of an option the response lists: `_option_letter`), word, and only then
sympy (spark.verify.sympy_check, imported only when called: only worker processes pay for importing it).

Comparisons are three-valued: True, False, or None when only sympy can tell (`use_sympy=False`).
"""

from __future__ import annotations

import re

from spark.verify.literals import (
    _BASE_NUMBER,
    _WORD,
    _as_number,
    _gold_choice,
    _numbers_equal,
    _pred_choice,
)
from spark.verify.normalise import _MATH_WORDS, _normalise
from spark.verify.structure import _COMMAND, _QUANTITY, _VARIABLE, _parse, _Seq, _split_top

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
    from spark.verify.sympy_check import equal  # only worker processes pay for importing sympy

    return equal(p, g)


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
    from spark.verify.sympy_check import equations_equal

    return equations_equal(p_sides, g_sides)


def _is_word(s: str) -> bool:
    return bool(_WORD.fullmatch(s)) and s.lower() not in _MATH_WORDS


# A lenient multiple-choice answer may be the value of an option the response lists.
_OPTION_INLINE = re.compile(r"\(([A-E])\)\s*([^()\n]*?)\s*(?=\([A-E]\)|\.\s|\n|$)")  # (A) 12 (B) 18
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-E])[.):][ \t]*(.+?)[ \t]*$", re.MULTILINE)  # A) 12 / A. 12 on a line


def _option_letter(response: str, pred: str) -> str | None:
    """The letter of the one option listed in the response (`(A) 12 (B) 18`, or `A. 12` lines) whose value
    the answer equals without sympy; None when no option or several match."""
    options = {m.group(1): m.group(2) for m in _OPTION_INLINE.finditer(response)}
    options |= {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(response)}
    letters = {letter for letter, value in options.items() if value and _compare(pred, value, use_sympy=False)}
    return letters.pop() if len(letters) == 1 else None
