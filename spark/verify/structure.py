"""The structure of a normalised answer (`_parse`): tuples, intervals, sets, lists of roots, matrices,
unions, set-builder sets and inequalities, down to leaves that are normalised strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spark.verify.literals import _THOUSANDS, _as_number
from spark.verify.normalise import _WORD_ANSWERS


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
