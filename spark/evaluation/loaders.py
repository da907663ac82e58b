"""Benchmark files -> items to evaluate.

Three kinds of benchmark, each a list of items whose position is the row index (resume and sharding
key on it):
- "math": `Sample`s (prompt = math_prompt(question), gold = the normalised gold answer). Built-in
  loaders for the files in data/eval/ and a generic JSONL/Parquet loader with a field mapping
  for the vision benchmarks (MathVista, MathVerse, WeMath, DynaMath, LogicVista, MMK12, MathVision).
- "rb2": RewardBench2 rows (prompt, chosen: list, rejected: list, subset) -> `BestOfNItem`.
- "vlrb": VL-RewardBench rows (id, query, response: [2], human_ranking, image) -> `PairItem`.

A benchmark is named by a spec string (`parse_spec`): a built-in name (`gsm8k`), a file with a field
mapping (`file:path.jsonl:question=q,answer=a,image=img,choices=c`), `rb2:path.jsonl` or
`vlrb:path.jsonl`. A row that cannot be used is a DataError naming the file, line and field.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from spark.data import DataError, Sample, read_records, require_str
from spark.prompts import math_prompt
from spark.verifier import extract_answer

KINDS = ("math", "rb2", "vlrb")

# Multiple-choice questions are asked with lettered options and graded on the letter.
CHOICES_INSTRUCTION = "Answer with the letter of the correct option."


@dataclass
class FieldMap:
    """Which row fields hold the question, the gold answer, the image path and the choices. A mapped
    image / choices field must be in every row (a typo in the mapping must not turn into a silent
    text-only run); its value may be null: MathVista has choices only for its multiple-choice rows."""

    question: str = "question"
    answer: str = "answer"
    image: str | None = None
    choices: str | None = None


@dataclass
class BestOfNItem:
    """A RewardBench2 row: the judge rates every response; correct only if each chosen one is rated
    strictly above every rejected one."""

    prompt: str
    chosen: list[str]
    rejected: list[str]
    subset: str
    id: str


@dataclass
class PairItem:
    """A VL-RewardBench row: two responses to a (visual) query, `better` is the human-preferred index."""

    query: str
    responses: tuple[str, str]
    better: int  # 0 or 1
    subset: str
    id: str
    image: str | None = None


@dataclass
class Benchmark:
    name: str
    kind: str  # one of KINDS
    items: list = field(default_factory=list)  # Sample | BestOfNItem | PairItem; position = row index


def canonical_number(text: str) -> str:
    """'27.0' -> '27', '025' -> '25', '-3' -> '-3'; anything that is not an integral number is unchanged."""
    if re.fullmatch(r"-?\d+(\.0*)?", text.strip()):
        return str(int(float(text)))
    return text.strip()


def gsm8k_gold(solution: str) -> str:
    """GSM8K puts the final answer after '#### ', with thousands separators: '#### 1,000' -> '1000'."""
    if "####" not in solution:
        raise ValueError("no '####' before the final answer")
    return canonical_number(solution.rsplit("####", 1)[1].replace(",", ""))


def last_boxed_gold(solution: str) -> str:
    """The gold answer of a worked solution is its last \\boxed{} (Minerva)."""
    gold = extract_answer(solution, "strict")
    if gold is None:
        raise ValueError("no \\boxed{} answer in the solution")
    return gold


def format_choices(question: str, choices: list[str]) -> str:
    options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(string.ascii_uppercase, choices))
    return f"{question}\n{options}\n{CHOICES_INSTRUCTION}"


def choice_letter(answer: object, choices: list[str]) -> str:
    """The gold of a multiple-choice row as a letter: from an index (MMLU: 2 -> 'C'), a letter ('C',
    '(C)') or the text of the correct choice (MathVista)."""
    letters = string.ascii_uppercase[: len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(choices):
            return letters[answer]
        raise ValueError(f"choice index {answer} out of range for {len(choices)} choices")
    text = str(answer).strip()
    letter = text.strip("()").upper()
    if len(letter) == 1 and letter in letters:
        return letter
    if text in choices:
        return letters[choices.index(text)]
    raise ValueError(f"{text!r} is neither a choice letter nor one of the choices")


def _strings(row: dict, key: str, path: Path, line: int, *, fewest: int, most: int | None = None) -> list[str]:
    """row[key] as a list of `fewest` to `most` (None: any number of) non-empty strings."""
    values = row.get(key)
    if not isinstance(values, list) or len(values) < fewest or (most is not None and len(values) > most):
        count = fewest if most == fewest else f"{fewest} to {most or 'any number of'}"
        raise DataError(path, line, key, f"expected a list of {count} strings")
    return [require_str({key: value}, key, path, line) for value in values]


def _choices(row: dict, key: str, path: Path, line: int) -> list[str]:
    return _strings(row, key, path, line, fewest=2, most=len(string.ascii_uppercase))


def _image(row: dict, key: str, path: Path, line: int) -> str:
    relative = require_str(row, key, path, line)
    image = path.parent / relative
    if not image.is_file():
        raise DataError(path, line, key, f"image file not found: {image}")
    return str(image)


def load_math(
    path: str | Path,
    fields: FieldMap,
    *,
    bench: str,
    gold: Callable[[str], str] = canonical_number,
    limit: int | None = None,
) -> list[Sample]:
    """Rows of a math benchmark -> Samples. `gold` normalises the answer field's text (multiple-choice
    golds become letters instead). The image path is relative to the file."""
    path = Path(path)
    samples: list[Sample] = []
    for line, row in islice(read_records(path), limit):
        question = require_str(row, fields.question, path, line)
        choices = _optional(row, fields.choices, path, line, _choices)
        image = _optional(row, fields.image, path, line, _image)
        if fields.answer not in row or row[fields.answer] is None:
            raise DataError(path, line, fields.answer, "missing")
        try:
            if choices is not None:
                answer = choice_letter(row[fields.answer], choices)
                question = format_choices(question, choices)
            else:
                answer = gold(require_str(row, fields.answer, path, line))
        except ValueError as e:
            raise DataError(path, line, fields.answer, str(e)) from None
        meta = {"bench": bench, "index": len(samples), "line": line, "question": question}
        samples.append(Sample(prompt=math_prompt(question), gold=answer, image=image, meta=meta))
    return samples


def _optional(row: dict, key: str | None, path: Path, line: int, read: Callable):
    """A mapped optional field: must be in the row, may be null."""
    if key is None:
        return None
    if key not in row:
        raise DataError(path, line, key, "missing (a row without one holds null)")
    return None if row[key] is None else read(row, key, path, line)


def load_rb2(path: str | Path, *, limit: int | None = None) -> list[BestOfNItem]:
    """RewardBench2 rows: prompt, chosen (list), rejected (list), subset, id. Public rows have one
    chosen and three rejected (best-of-4); Ties rows have several chosen."""
    path = Path(path)
    items: list[BestOfNItem] = []
    for line, row in islice(read_records(path), limit):
        items.append(BestOfNItem(
            prompt=require_str(row, "prompt", path, line),
            chosen=_strings(row, "chosen", path, line, fewest=1),
            rejected=_strings(row, "rejected", path, line, fewest=1),
            subset=require_str(row, "subset", path, line),
            id=str(row.get("id", len(items))),
        ))
    return items


# VL-RewardBench's official grouping of its sources, read from the id prefix when a row has no subset.
VLRB_GROUPS = {"rlaif": "hallucination", "rlhf": "hallucination", "povid": "hallucination",
               "mathverse": "reasoning", "mmmu": "reasoning", "wildvision": "general"}


def vlrb_subset(row_id: str) -> str:
    """'mathverse_12' -> 'reasoning'; like the official script, unknown prefixes (VLFeedback) are general."""
    prefix = re.split(r"[_-]", row_id, maxsplit=1)[0].lower()
    return VLRB_GROUPS.get(prefix, "general")


def load_vlrb(path: str | Path, *, limit: int | None = None) -> list[PairItem]:
    """VL-RewardBench rows: id, query, response (2), human_ranking (rank per response, 0 = better),
    image (path relative to the file, or null); subset from the row or else from the id."""
    path = Path(path)
    items: list[PairItem] = []
    for line, row in islice(read_records(path), limit):
        ranking = row.get("human_ranking")
        if not (isinstance(ranking, list) and len(ranking) == 2 and all(isinstance(r, int) for r in ranking)
                and ranking[0] != ranking[1]):
            raise DataError(path, line, "human_ranking", "expected two different integer ranks")
        row_id = require_str(row, "id", path, line)
        first, second = _strings(row, "response", path, line, fewest=2, most=2)
        items.append(PairItem(
            query=require_str(row, "query", path, line),
            responses=(first, second),
            better=ranking.index(min(ranking)),
            subset=require_str(row, "subset", path, line) if "subset" in row else vlrb_subset(row_id),
            id=row_id,
            image=_optional(row, "image", path, line, _image),
        ))
    return items


# name -> (file in the data directory, fields, gold normaliser)
BUILTIN: dict[str, tuple[str, FieldMap, Callable[[str], str]]] = {
    "gsm8k": ("gsm8k.jsonl", FieldMap("question", "answer"), gsm8k_gold),
    "math500": ("math500.jsonl", FieldMap("problem", "answer"), canonical_number),
    "aime24": ("aime24.jsonl", FieldMap("problem", "answer"), canonical_number),
    "amc23": ("amc23.jsonl", FieldMap("problem", "answer"), canonical_number),
    "minerva_math": ("minerva_math.jsonl", FieldMap("problem", "solution"), last_boxed_gold),
    "mmlu_stem": ("mmlu_stem.jsonl", FieldMap("question", "answer", choices="choices"), canonical_number),
}
_MAPPING_KEYS = {"file": {"name", "question", "answer", "image", "choices"}, "rb2": {"name"}, "vlrb": {"name"}}


def split_specs(arg: str) -> list[str]:
    """'gsm8k,file:a.jsonl:question=q,answer=a' -> ['gsm8k', 'file:a.jsonl:question=q,answer=a']: a
    comma followed by key=value (no ':') continues the mapping of the spec before it."""
    specs: list[str] = []
    for token in arg.split(","):
        if specs and "=" in token and ":" not in token:
            specs[-1] += "," + token
        elif token.strip():
            specs.append(token.strip())
    return specs


def parse_spec(spec: str, data_dir: str | Path, *, limit: int | None = None) -> Benchmark:
    """A benchmark spec -> its Benchmark: NAME (built-in), file:PATH[:key=field,...] (math, fields
    question, answer, image, choices; name=NAME), rb2:PATH[:name=NAME], vlrb:PATH[:name=NAME]."""
    if spec in BUILTIN:
        file, fields, gold = BUILTIN[spec]
        items = load_math(Path(data_dir) / file, fields, bench=spec, gold=gold, limit=limit)
        return Benchmark(spec, "math", items)
    kind, _, rest = spec.partition(":")
    if kind not in _MAPPING_KEYS or not rest:
        raise ValueError(f"unknown benchmark {spec!r}: expected one of {sorted(BUILTIN)}, "
                         "file:PATH[:question=...,answer=...,image=...,choices=...], rb2:PATH or vlrb:PATH")
    file, mapping = rest, {}
    if ":" in rest and "=" in rest.rsplit(":", 1)[1]:
        file, pairs = rest.rsplit(":", 1)
        mapping = dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)
    unknown = set(mapping) - _MAPPING_KEYS[kind]
    if unknown:
        raise ValueError(f"{spec!r}: unknown keys {sorted(unknown)}, expected {sorted(_MAPPING_KEYS[kind])}")
    name = mapping.pop("name", Path(file).stem if kind == "file" else kind)
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"{spec!r}: benchmark name {name!r} must be letters, digits, '_', '-' or '.'")
    if kind == "rb2":
        return Benchmark(name, "rb2", load_rb2(file, limit=limit))
    if kind == "vlrb":
        return Benchmark(name, "vlrb", load_vlrb(file, limit=limit))
    return Benchmark(name, "math", load_math(file, FieldMap(**mapping), bench=name, limit=limit))
