r"""Verifiable reward: does a response's final answer equal the gold answer?

The reward is the only ground truth the method has, so the verifier aims to grade like a careful
human and to stay bounded in time whatever the input.

- `extract_answer` finds the final answer: the last `\boxed{}` / `\fbox{}`, else a fallback such as
  "The answer is X" or GSM8K's `#### X`.
- `score_batch` / `is_correct` normalise both sides (spacing, `\text{}`, units, degrees, `\$`, `\%`),
  then compare structure (tuples and intervals in order, sets and lists of roots in any order,
  matrices, unions, equations, inequalities) and finally each leaf: exact string, exact rational
  number, multiple-choice letter, word, and only then sympy.
- The sympy part runs in a reusable pool of worker processes. A check that exceeds its timeout has
  its worker killed and replaced; it scores 0 and is counted in `verifier_stats()`, never raised.
- `parse_judgment` reads a judge's verdict: `Yes`/`No` (pointwise) or `A`/`B` (pairwise).
"""

from __future__ import annotations

import atexit
import contextlib
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

MAX_ANSWER_CHARS = 1000  # longer answers are rejected unseen: no gold answer is near this long
MAX_NESTING = 24  # deeper bracket nesting is rejected before any recursive parsing
JUDGE_KINDS = ("pointwise", "pairwise")

# --------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_FALLBACKS = {
    "answer_is": re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE),
    "gsm8k": re.compile(r"####\s*(.+)"),
}


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


def extract_answer(response: str, fallbacks: tuple[str, ...] = ("answer_is", "gsm8k")) -> str | None:
    """The final answer of a response: the content of its last `\\boxed{}` (or `\\fbox{}`).

    A response without a box is tried against `fallbacks` in order ("answer_is": the rest of the
    last line saying "answer is ...", "gsm8k": the text after the last `####`). A last box that never
    closes (a truncated generation) gives None rather than an earlier box.
    """
    unknown = set(fallbacks) - set(_FALLBACKS)
    if unknown:
        raise ValueError(f"unknown fallbacks {sorted(unknown)}; known: {sorted(_FALLBACKS)}")
    if last := _last_match(_BOX, response):
        rest = response[last.end() :].lstrip()
        if rest.startswith("{"):
            content = _braced(rest, 0)
            return None if content is None else content.strip()
        bare = re.match(r"[^\s$]+", rest)  # `\boxed 5`
        return bare.group() if bare else None
    for name in fallbacks:
        if last := _last_match(_FALLBACKS[name], response):
            return last.group(1).strip().rstrip(".").strip("$ ") or None
    return None


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
_NUMBER_WITH_UNIT = re.compile(r"(?P<value>[-+]?[\d.,]*\d%?)\s+(?P<unit>[A-Za-z]{2,}[A-Za-z ]*)(?:\^\{?\d\}?)?")
_SPACES = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|\s+")
_SINGLE_BRACED = re.compile(r"(?<=[_^])\{(\w)\}")
_MATH_WORDS = {"pi", "sin", "cos", "tan", "cot", "sec", "csc", "ln", "log", "exp", "sqrt", "i", "e"}
_NO_SOLUTION = {
    "nosolution", "nosolutions", "norealsolution", "norealsolutions", "noroots", "norealroots", "none",
    "dne", "doesnotexist", r"\emptyset", r"\{\}", "{}",
}


def _normalise(answer: str) -> str:
    """A canonical spelling of an answer: equal strings mean equal answers.

    Drops presentation (`$`, `\\left`, thin spaces, `^\\circ`, `\\$`), unit words after a value,
    `\\text{}` wrappers, whitespace and a trailing period; keeps everything with mathematical meaning.
    """
    s = answer.translate(_UNICODE)
    for pattern, replacement in _RENAMES:
        s = pattern.sub(replacement, s)
    s = _DELETE.sub("", s)
    s = _TEXT_CONNECTIVE.sub(",", s).strip().rstrip(".").strip()
    if unit := _TRAILING_UNIT.fullmatch(s):
        s = unit.group("value")
    s = _TEXT.sub(r"\1", s).strip()
    if (unit := _NUMBER_WITH_UNIT.fullmatch(s)) and not set(unit.group("unit").lower().split()) & _MATH_WORDS:
        s = unit.group("value")
    s = _SPACES.sub(lambda m: m.group(1) + " " if m.group(1) else "", s).rstrip(".")
    s = _SINGLE_BRACED.sub(r"\1", s)
    s = s[1:] if s.startswith("+") else s
    return r"\emptyset" if s.lower() in _NO_SOLUTION else s


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
_MAX_EXPONENT = 400


def _as_number(s: str) -> tuple[Fraction, bool] | None:
    """s as an exact rational and whether it was a percentage; None unless s is a plain number literal.

    Literals: 72, -3.5, .35, 1,000, 4.5e33, 4.5\\times10^{33}, 10^{-3}, 3/4, \\frac{3}{4}, \\frac43,
    1\\frac{4}{5} (a mixed number), each optionally followed by %.
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
            if abs(exponent) > _MAX_EXPONENT:
                return None
            value = Fraction(m.group("mantissa")) * Fraction(10) ** exponent
        elif m := _POWER_OF_TEN.fullmatch(s):
            exponent = int(m.group("exp"))
            if abs(exponent) > _MAX_EXPONENT:
                return None
            value = Fraction(10) ** exponent
        elif m := _FRAC.fullmatch(s):
            value = int(m.group("whole") or 0) + Fraction(int(m.group("num") or m.group("num1")),
                                                          int(m.group("den") or m.group("den1")))
        elif m := _SLASH.fullmatch(s):
            value = Fraction(m.group("num")) / Fraction(m.group("den"))
        else:
            return None
    except (ValueError, ZeroDivisionError):  # a zero denominator, or more digits than int() allows
        return None
    return sign * value, percent


def _numbers_equal(pred: tuple[Fraction, bool], gold: tuple[Fraction, bool]) -> bool:
    """Exact equality; a percentage also matches its value over 100 (`50%` is `50` and `0.5`)."""
    (p, p_percent), (g, g_percent) = pred, gold
    return p == g or (p_percent and not g_percent and p / 100 == g) or (g_percent and not p_percent and g / 100 == p)


_GOLD_CHOICE = re.compile(r"\(?([A-E])\)?\.?")
_PRED_CHOICE = re.compile(r"\(([A-E])\)|([A-E])(?:[.:)]|\s|$)")
_BASE_NUMBER = re.compile(r"(?P<digits>\d[0-9A-Z]*)_\{?(?P<base>\d+)\}?")  # 52_8, 1F_{16}
_WORD = re.compile(r"[A-Za-z]{3,}")


def _unwrap_text(answer: str) -> str:
    """The answer without `\\text{}`-like wrappers and `$`, for reading letters and words."""
    for pattern, replacement in _RENAMES:
        answer = pattern.sub(replacement, answer)
    return _TEXT.sub(r"\1", answer).replace("$", "").strip()


def _gold_choice(gold: str) -> str | None:
    """The letter of a multiple-choice gold answer (`A`, `(A)`, `A.`, `\\text{(A)}`), else None."""
    m = _GOLD_CHOICE.fullmatch(_unwrap_text(gold))
    return m.group(1) if m else None


def _pred_choice(pred: str) -> str | None:
    """The letter a response's answer picks (`A`, `(A)`, `A.`, `A. Point B`, `(A) 12`), else None."""
    m = _PRED_CHOICE.match(_unwrap_text(pred))
    return (m.group(1) or m.group(2)) if m else None


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
    s = _IN_PREFIX.sub("", s, count=1) if _IN_PREFIX.match(s) else s
    if _THOUSANDS.fullmatch(s):
        return s
    if matrix := _MATRIX.fullmatch(s):
        return _matrix(matrix.group("body"))
    if s.startswith(r"\{") and s.endswith(r"\}") and _encloses(s):
        return _Seq("set", _items(s[2:-2]))
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


def _matrix(body: str) -> _Seq:
    """A matrix by rows; a single row or column is a vector and compares like a tuple."""
    rows = [tuple(_parse(entry) for entry in _split_top(row, "&")) for row in _split_top(body, "\\\\") if row]
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


def _compare(pred: str, gold: str, use_sympy: bool) -> bool | None:
    """Whether an extracted answer equals the gold answer."""
    if letter := _gold_choice(gold):
        return _pred_choice(pred) == letter
    p, g = _normalise(pred), _normalise(gold)
    return p == g or _match(_parse(p), _parse(g), use_sympy)


def _match(pred: str | _Seq, gold: str | _Seq, use_sympy: bool) -> bool | None:
    if isinstance(pred, str) and isinstance(gold, str):
        return _match_leaf(pred, gold, use_sympy)
    p = pred if isinstance(pred, _Seq) else _Seq("list", (pred,))
    g = gold if isinstance(gold, _Seq) else _Seq("list", (gold,))
    kinds = {p.kind, g.kind}
    if len(p.items) != len(g.items):
        return False
    if kinds == {"bracketed"}:
        return p.brackets == g.brackets and _match_in_order(p.items, g.items, use_sympy)
    if kinds == {"matrix"} or (kinds == {"bracketed", "list"} and "()" in (p.brackets, g.brackets)):
        return _match_in_order(p.items, g.items, use_sympy)  # `(2, 3)` written as `2, 3`
    if kinds <= {"set", "list"} or kinds == {"union"}:
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
    if len(p_sides) == 2 or len(g_sides) == 2:  # `x = 3` against `3`
        solved, other = (p_sides, g) if len(p_sides) == 2 else (g_sides, p)
        value = _value_of(solved)
        return value is not None and _match_leaf(value, other, use_sympy)
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
    from spark import verifier_sympy  # only worker processes pay for importing sympy

    return verifier_sympy.equal(p, g)


def _value_of(sides: list[str]) -> str | None:
    """The value an equation gives its variable (`x=3` and `3=x` -> `3`); None if neither side is one."""
    lhs, rhs = sides
    if _VARIABLE.fullmatch(lhs):
        return rhs
    return lhs if _VARIABLE.fullmatch(rhs) else None


def _match_equations(p_sides: list[str], g_sides: list[str], use_sympy: bool) -> bool | None:
    same_sides = _match_in_order(tuple(p_sides), tuple(g_sides), use_sympy)
    if same_sides or _match_in_order(tuple(p_sides), tuple(reversed(g_sides)), use_sympy):
        return True
    if p_sides[0] == g_sides[0] and same_sides is False:  # `x=5` against `x=6`
        return False
    if not use_sympy:
        return None
    from spark import verifier_sympy

    return verifier_sympy.equations_equal(p_sides, g_sides)


def _is_word(s: str) -> bool:
    return bool(_WORD.fullmatch(s)) and s.lower() not in _MATH_WORDS


# --------------------------------------------------------------------------- worker processes


def _check(pred: str, gold: str) -> str:
    """The verdict of a worker process: "equal", "different" or "rejected" (would not finish)."""
    from spark import verifier_sympy

    try:
        return "equal" if _compare(pred, gold, use_sympy=True) else "different"
    except verifier_sympy.TooLarge:
        return "rejected"
    except Exception:  # sympy raises many kinds of error on odd input; any of them means "not shown equal"
        return "different"


def _worker_main() -> None:
    """A worker process: answer each JSON [pred, gold] line on stdin with a verdict line on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
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
        """The verdict of each (pred, gold) task, or "timeout" / "crashed"."""
        verdicts = [""] * len(tasks)
        queue = deque(range(len(tasks)))
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
                        verdicts[running.pop(worker)[0]] = "crashed"
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
_STAT_KEYS = ("checked", "cheap", "sympy", "timeouts", "rejected", "crashed")
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
    and how many of those timed out, were rejected as too large, or crashed their worker."""
    return {key: _stats[key] for key in _STAT_KEYS}


# --------------------------------------------------------------------------- public scoring


def _cheap_verdict(response: str, gold: str) -> tuple[str, str | None]:
    """("equal" | "different" | "rejected", None), or ("undecided", pred) when sympy must decide."""
    pred = extract_answer(response)
    if pred is None:
        return "different", None
    if max(len(pred), len(gold)) > MAX_ANSWER_CHARS or max(_nesting(pred), _nesting(gold)) > MAX_NESTING:
        return "rejected", None
    verdict = _compare(pred, gold, use_sympy=False)
    if verdict is None:
        return "undecided", pred
    return ("equal" if verdict else "different"), None


def score_batch(
    responses: list[str], golds: list[str], kinds: list[str] | None = None, timeout: float = 2.0
) -> list[float]:
    """1.0 or 0.0 per row: whether responses[i] answers golds[i].

    kinds[i] is "math" (default: the final answer against a gold answer), "pointwise" or "pairwise"
    (the judge's parsed verdict against "Yes"/"No" or "A"/"B"). Rows that only sympy can decide run
    in parallel in the worker pool, each within `timeout` seconds; a timeout scores 0.0 and is counted.
    """
    kinds = kinds if kinds is not None else ["math"] * len(responses)
    if not len(responses) == len(golds) == len(kinds):
        raise ValueError(f"score_batch: {len(responses)} responses, {len(golds)} golds, {len(kinds)} kinds")
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
            verdict, pred = _cheap_verdict(response, gold)
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


def is_correct(response: str, gold: str, timeout: float = 2.0) -> bool:
    """Whether the final answer of `response` equals `gold` (a bare answer such as `\\frac{1}{2}` or `72`)."""
    return score_batch([response], [gold], timeout=timeout)[0] == 1.0


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
    boxed = extract_answer(response, fallbacks=())
    if boxed is not None:
        if len(boxed) > MAX_ANSWER_CHARS:
            return None
        verdict = _VERDICT_PREFIX.sub("", re.sub(r"[^A-Za-z0-9]", "", _normalise(boxed)))
        return _VERDICTS[kind].get(verdict.lower())
    if kind == "pairwise":
        better = _last_match(_BETTER, response)
        return "AB"[int(better.group(1)) - 1] if better else None
    return None
