r"""Finding the final answer in a response (`extract_answer`), in one of three modes (ANSWER_MODES).

"strict" reads only the last `\boxed{}` / `\fbox{}`, the format every prompt asks for; "first" only the
first one, as the authors' evaluation scripts read answers and verdicts; "lenient" reads it as a human
grader would: several boxes that together are the answer, "Answer: X", "The final answer is $X$",
`<answer>` tags, `#### X`, a final bold value, other languages, and a boxed answer withdrawn and
corrected. Precision first: no clear final answer, or a hedge between values, is wrong.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Literal, get_args

AnswerMode = Literal["strict", "lenient", "first"]  # see extract_answer
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)

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
