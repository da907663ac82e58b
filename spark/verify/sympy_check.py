r"""The sympy half of the verifier: LaTeX leaves to sympy, and equality of the results.

Only the verifier's worker processes (spark.verify.pool) import this module (sympy is slow to import and
a computation can get stuck; a worker can be killed, the trainer cannot). A small recursive-descent parser
reads the LaTeX the verifier's normaliser (spark.verify.normalise) leaves behind (sympy's own
`parse_latex` needs antlr4).

Two expressions are equal when they agree, to a relative 1e-9 at 50 digits, at a few generic
positive points for their free symbols (one point when they have none); `0.333` is not `1/3`.
Equations are equal when their sides' differences are proportional (`x - 3 = 0` is `2x = 6`).
"""

from __future__ import annotations

import cmath
import re

import sympy

from spark.verify.limits import MAX_EXPONENT

_DIGITS = 50
_RELATIVE_TOLERANCE = 1e-9
_ABSOLUTE_TOLERANCE = 1e-40  # round-off of a 50-digit evaluation of a true zero
_SAMPLES = [sympy.Rational(n, d) for n, d in ((31, 17), (7, 11), (13, 5), (5, 7), (19, 13))]
_POINTS = 3

_FUNCTIONS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
    "ln": sympy.log, "log": sympy.log, "exp": sympy.exp, "sqrt": sympy.sqrt,
}
_CONSTANTS = {"pi": sympy.pi, "infty": sympy.oo}
_LETTER_CONSTANTS = {"e": sympy.E, "i": sympy.I}
_SYMBOL_COMMANDS = set(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma "
    "tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega hbar ell odot".split()
)
_OPERATOR_COMMANDS = {r"\frac", r"\sqrt", r"\cdot", r"\times", r"\div", r"\binom", r"\choose"}
_CLOSING = {"(": ")", "{": "}", "[": "]"}

_TOKEN = re.compile(
    r"(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
    r"|(?P<function>(?<![A-Za-z])(?:(?:arc)?(?:sin|cos|tan|cot|sec|csc)h?|ln|log|exp|sqrt)(?![A-Za-z]))"
    r"|(?P<command>\\[A-Za-z]+)"
    r"|(?P<letter>[A-Za-z])"
    r"|(?P<operator>[-+*/^_!(){}\[\]|])"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.DOTALL,
)


class TooLarge(ValueError):
    """An answer whose evaluation would not finish (a huge numeric power or factorial)."""


class Unparseable(ValueError):
    """LaTeX the small parser does not read."""


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs; commands become "function", "name" (constants, Greek letters) or "command"."""
    tokens = []
    for m in _TOKEN.finditer(text):
        kind, token = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "other":
            raise Unparseable(f"unexpected character {token!r}")
        if kind == "command":
            name = token[1:]
            if token in _OPERATOR_COMMANDS:
                pass
            elif name in _FUNCTIONS:
                kind, token = "function", name
            elif name in _CONSTANTS or name in _SYMBOL_COMMANDS:
                kind, token = "name", name
            else:
                raise Unparseable(f"unknown command {token}")
        tokens.append((kind, token))
    return tokens


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    if base.is_number and exponent.is_number and abs(base) not in (0, 1) and abs(exponent) > MAX_EXPONENT:
        raise TooLarge(f"power with exponent {exponent}")
    return base**exponent


def _factorial(n: sympy.Expr) -> sympy.Expr:
    if n.is_number and abs(n) > MAX_EXPONENT:
        raise TooLarge(f"factorial of {n}")
    return sympy.factorial(n)


def _binomial(n: sympy.Expr, k: sympy.Expr) -> sympy.Expr:
    if n.is_number and abs(n) > MAX_EXPONENT:
        raise TooLarge(f"binomial of {n}")
    return sympy.binomial(n, k)


class _Parser:
    r"""Recursive descent over LaTeX tokens; juxtaposition multiplies.

        expr    := term (('+' | '-') term)*
        term    := signed (('*' | '/' | \cdot | \times | \div) signed | power)*
        signed  := ('-' | '+') signed | power
        power   := postfix ('^' exponent)?
        postfix := atom '!'*
        atom    := number | symbol ('_' subscript)? | '(' expr ')' | '{' expr (\choose expr)? '}' | '[' expr ']'
                 | '|' expr '|' | \frac arg arg | \binom arg arg | \sqrt ('[' expr ']')? arg
                 | function ('^' exponent)? argument
        argument := '(' expr ')' | '{' expr '}' | signed power*   (`\cos 2x` is cos(2x), `\sin x \cos x` two)
    """

    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.pos = 0

    def parse(self) -> sympy.Expr:
        value = self.expr()
        if self.pos != len(self.tokens):
            raise Unparseable(f"unexpected {self.peek()[1]!r}")
        return value

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        if self.pos == len(self.tokens):
            raise Unparseable("unexpected end")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise Unparseable(f"expected {text!r}")

    def starts_atom(self) -> bool:
        kind, text = self.peek()
        return kind in ("number", "letter", "name", "function") or text in ("(", "{", r"\frac", r"\sqrt", r"\binom")

    def expr(self) -> sympy.Expr:
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            sign = self.take()[1]
            value = value + self.term() if sign == "+" else value - self.term()
        return value

    def term(self) -> sympy.Expr:
        value = self.signed()
        while True:
            text = self.peek()[1]
            if text in ("*", r"\cdot", r"\times"):
                self.take()
                value = value * self.signed()
            elif text in ("/", r"\div"):
                self.take()
                value = value / self.signed()
            elif self.starts_atom():
                value = value * self.power()
            else:
                return value

    def signed(self) -> sympy.Expr:
        if self.peek()[1] in ("+", "-"):
            return -self.signed() if self.take()[1] == "-" else self.signed()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek()[1] == "^":
            self.take()
            return _power(base, self.exponent())
        return base

    def exponent(self) -> sympy.Expr:
        kind, text = self.peek()
        if kind == "number":
            return self.digit()
        if text in ("+", "-"):
            self.take()
            return -self.exponent() if text == "-" else self.exponent()
        return self.atom()

    def digit(self) -> sympy.Expr:
        """One digit of a number token: `x^23` is x^2 * 3, `\\frac43` is 4/3."""
        kind, text = self.peek()
        if not text[0].isdigit():
            raise Unparseable(f"expected a digit, got {text!r}")
        if len(text) > 1:
            self.tokens[self.pos] = (kind, text[1:])
        else:
            self.pos += 1
        return sympy.Integer(text[0])

    def argument(self) -> sympy.Expr:
        """The argument of \\frac or \\sqrt: a braced group or a single digit or symbol."""
        return self.digit() if self.peek()[0] == "number" else self.atom()

    def postfix(self) -> sympy.Expr:
        value = self.atom()
        while self.peek()[1] == "!":
            self.take()
            value = _factorial(value)
        return value

    def atom(self) -> sympy.Expr:
        kind, text = self.take()
        if kind == "number":
            return sympy.Rational(text)
        if kind == "letter" or (kind == "name" and text not in _CONSTANTS):
            return self.symbol(text)
        if kind == "name":
            return _CONSTANTS[text]
        if kind == "function":
            return self.function(text)
        if text in _CLOSING:
            value = self.expr()
            if text == "{" and self.peek()[1] == r"\choose":
                self.take()
                value = _binomial(value, self.expr())
            self.expect(_CLOSING[text])
            return value
        if text == "|":
            value = self.expr()
            self.expect("|")
            return sympy.Abs(value)
        if text == r"\frac":
            return self.argument() / self.argument()
        if text == r"\binom":
            return _binomial(self.argument(), self.argument())
        if text == r"\sqrt":
            if self.peek()[1] == "[":
                self.take()
                index = self.expr()
                self.expect("]")
                return _power(self.argument(), 1 / index)
            return sympy.sqrt(self.argument())
        raise Unparseable(f"unexpected {text!r}")

    def symbol(self, name: str) -> sympy.Expr:
        if self.peek()[1] != "_":
            return _LETTER_CONSTANTS[name] if name in _LETTER_CONSTANTS else sympy.Symbol(name)
        self.take()
        if self.peek()[1] != "{":
            return sympy.Symbol(f"{name}_{self.take()[1]}")
        self.take()
        depth, subscript = 1, []
        while depth:
            token = self.take()[1]
            depth += {"{": 1, "}": -1}.get(token, 0)
            subscript.append(token)
        return sympy.Symbol(f"{name}_{''.join(subscript[:-1])}")

    def function(self, name: str) -> sympy.Expr:
        base = exponent = None
        if name == "log" and self.peek()[1] == "_":
            self.take()
            base = self.argument()
        if self.peek()[1] == "^":
            self.take()
            exponent = self.exponent()
        if self.peek()[1] in ("(", "{"):
            argument = self.atom()
        else:
            argument = self.signed()
            while self.starts_atom() and self.peek()[0] != "function" and self.peek()[1] not in ("(", "{"):
                argument = argument * self.power()
        value = sympy.log(argument, base) if base is not None else _FUNCTIONS[name](argument)
        return value if exponent is None else _power(value, exponent)


def parse_latex(text: str) -> sympy.Expr:
    """A normalised LaTeX leaf (no commas, no `=`) as a sympy expression; Unparseable or TooLarge if not."""
    return _Parser(text).parse()


def _value(expr: sympy.Expr, point: dict) -> complex | None:
    """expr at `point` as a complex number; None where it is undefined, infinite or not a number."""
    try:
        value = complex(expr.evalf(_DIGITS, subs=point))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    return value if cmath.isfinite(value) else None


def _close(a: complex, b: complex) -> bool:
    return abs(a - b) <= _RELATIVE_TOLERANCE * max(abs(a), abs(b)) + _ABSOLUTE_TOLERANCE


def _points(exprs: list[sympy.Expr]) -> list[dict]:
    """Generic positive values for the free symbols of exprs; one empty point when there are none."""
    symbols = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    if not symbols:
        return [{}]
    return [{s: _SAMPLES[(k + 2 * j) % len(_SAMPLES)] for j, s in enumerate(symbols)} for k in range(_POINTS)]


def _safely(compare, *args) -> bool:
    """compare(*args), with any failure of parsing or of sympy meaning "not shown equal"."""
    try:
        return compare(*args)
    except TooLarge:
        raise
    except Exception:  # sympy raises many kinds of error on odd input
        return False


def _expressions_equal(pred: str, gold: str) -> bool:
    a, b = parse_latex(pred), parse_latex(gold)
    if a.has(sympy.oo, sympy.zoo, sympy.nan) or b.has(sympy.oo, sympy.zoo, sympy.nan):
        return a == b
    agreed = 0
    for point in _points([a, b]):
        value_a, value_b = _value(a, point), _value(b, point)
        if value_a is None or value_b is None:
            continue
        if not _close(value_a, value_b):
            return False
        agreed += 1
    return agreed > 0 or sympy.simplify(a - b) == 0


def _equations_equal(pred: list[str], gold: list[str]) -> bool:
    a = parse_latex(pred[0]) - parse_latex(pred[1])
    b = parse_latex(gold[0]) - parse_latex(gold[1])
    ratios = []
    for point in _points([a, b]):
        value_a, value_b = _value(a, point), _value(b, point)
        if value_a is None or value_b is None or (_close(value_a, 0) and _close(value_b, 0)):
            continue
        if _close(value_b, 0):
            return False
        ratios.append(value_a / value_b)
    if len(ratios) < 2:
        return sympy.simplify(a - b) == 0 or sympy.simplify(a + b) == 0
    return not _close(ratios[0], 0) and all(_close(r, ratios[0]) for r in ratios)


def equal(pred: str, gold: str) -> bool:
    """Whether two normalised LaTeX leaves are the same number or expression."""
    return _safely(_expressions_equal, pred, gold)


def equations_equal(pred: list[str], gold: list[str]) -> bool:
    """Whether two equations, each as [lhs, rhs], have the same solutions: lhs - rhs proportional."""
    return _safely(_equations_equal, pred, gold)
