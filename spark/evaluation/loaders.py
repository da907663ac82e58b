"""Benchmark files -> items to evaluate.

Three kinds of benchmark, each a list of items whose position is the row index (resume and sharding
key on it):
- "math": `Sample`s (prompt = math_prompt(question), gold = the normalised gold answer, images).
  Built-in loaders for the files in data/eval/, loaders for the vision benchmarks in the Parquet
  schemas their hub repositories ship (`HUB`: MathVista, MathVerse, MathVision, WeMath, DynaMath,
  LogicVista, MMK12; images embedded), and a generic JSONL/Parquet loader with a field mapping.
- "rb2": RewardBench2 rows (prompt, chosen: list, rejected: list, subset) -> `BestOfNItem`.
- "vlrb": VL-RewardBench rows (id, query, response: [2], human_ranking, image) -> `PairItem`.

A benchmark is named by a spec string (`parse_spec`): a built-in name (`gsm8k`), a hub benchmark and
its file(s) (`mathvista:data/MathVista/data/testmini-*.parquet`), a file with a field mapping
(`file:path.jsonl:question=q,answer=a,image=img,choices=c`; the image(s) are read from `image` unless
mapped), `rb2:PATH` or `vlrb:PATH`; `:name=N` renames any of them (the key of its results). Images are
checked when the benchmark is loaded. A row that cannot be used is a DataError naming the file, line and field.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from spark.data.images import ImageSource, check_images, image_sources
from spark.data.rows import Sample, expand_paths, read_records, require_str
from spark.errors import DataError, UserError
from spark.tasks.prompts import math_prompt
from spark.verify import extract_answer

KINDS = ("math", "rb2", "vlrb")

# Multiple-choice questions are asked with lettered options and graded on the letter.
CHOICES_INSTRUCTION = "Answer with the letter of the correct option."


@dataclass
class FieldMap:
    """Which row fields hold the question, the gold answer, the image(s) and the choices. The image(s) are read
    from `image` as training reads them (absent or null in a text row); a field the spec maps (`require_image`,
    `choices`) must be in every row, since a typo in the mapping must not turn into a silent text-only run. Its
    value may be null: MathVista has choices only for its multiple-choice rows."""

    question: str = "question"
    answer: str = "answer"
    image: str = "image"
    choices: str | None = None
    require_image: bool = False  # the spec mapped the image field


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
    images: list[ImageSource] = field(default_factory=list)


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


def _records(files: str | Path, limit: int | None) -> Iterator[tuple[Path, int, dict]]:
    """(file, line, row) of the first `limit` rows of the file(s) `files` names (a glob may name several,
    read in sorted order)."""
    rows = ((Path(file), line, row) for file in expand_paths([str(files)]) for line, row in read_records(file))
    return islice(rows, limit)


def _images(row: dict, key: str, path: Path, line: int) -> list[ImageSource]:
    return image_sources(row[key], path.parent, path=path, line=line, key=key)


def load_math(
    files: str | Path,
    fields: FieldMap,
    *,
    bench: str,
    gold: Callable[[str], str] = canonical_number,
    limit: int | None = None,
) -> list[Sample]:
    """Rows of a math benchmark -> Samples. `gold` normalises the answer field's text (multiple-choice
    golds become letters instead). Image paths are relative to the file."""
    samples: list[Sample] = []
    image_rows = []
    for path, line, row in _records(files, limit):
        question = require_str(row, fields.question, path, line)
        choices = _optional(row, fields.choices, path, line, _choices)
        images = _optional(row, fields.image, path, line, _images, required=fields.require_image) or []
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
        samples.append(Sample(prompt=math_prompt(question), gold=answer, images=images, meta=meta))
        image_rows.append((images, path, line, fields.image))
    check_images(image_rows)
    return samples


def _optional(row: dict, key: str | None, path: Path, line: int, read: Callable, *, required: bool = True):
    """An optional field: may be null, and must be in the row when `required` (a field the spec maps)."""
    if key is None or key not in row and not required:
        return None
    if key not in row:
        raise DataError(path, line, key, "missing (a row without one holds null)")
    return None if row[key] is None else read(row, key, path, line)


def load_rb2(files: str | Path, *, limit: int | None = None) -> list[BestOfNItem]:
    """RewardBench2 rows as the hub ships them (allenai/reward-bench-2, dataset card: id, prompt, chosen
    (list), rejected (list), num_correct, num_incorrect, total_completions, models, subset,
    additional_metadata). Public rows have one chosen and three rejected (best-of-4); Ties rows have
    several chosen."""
    items: list[BestOfNItem] = []
    for path, line, row in _records(files, limit):
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


def load_vlrb(files: str | Path, *, limit: int | None = None) -> list[PairItem]:
    """VL-RewardBench rows as the hub ships them (MMInstruction/VL-RewardBench, dataset card: id, query,
    response [2], image (the `datasets` Image feature, embedded), human_ranking [2] (rank per response,
    0 = better), models, judge, rationale, query_source, meta, ground_truth). `image` may also be a path
    relative to the file, or null; subset from the row if it has one, else from the id."""
    items: list[PairItem] = []
    image_rows = []
    for path, line, row in _records(files, limit):
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
            images=_optional(row, "image", path, line, _images) or [],
        ))
        image_rows.append((items[-1].images, path, line, "image"))
    check_images(image_rows)
    return items


# ---- the vision benchmarks in the schemas their hub repositories ship (Parquet, images embedded) ----


@dataclass(frozen=True)
class HubItem:
    question: str  # what the model is asked (math_prompt is added), options included
    gold: str
    meta: dict = field(default_factory=dict)  # scoring extras, e.g. MathVista's float precision


def _gold(row: dict, key: str, path: Path, line: int, normalise: Callable[[str], str] = canonical_number) -> str:
    """row[key] through `normalise`; a value it rejects is a DataError naming the field."""
    text = require_str(row, key, path, line)
    try:
        return normalise(text)
    except ValueError as e:
        raise DataError(path, line, key, str(e)) from None


def option_letters(text: str) -> str:
    """A gold answer of one or more option letters: 'B', '(B)', 'B.' -> 'B'; 'A, C' -> 'A, C' (sorted)."""
    letters = re.findall(r"\b([A-Z])\b", text.upper())
    if not letters or re.sub(r"[\sA-Z,;()./]", "", text.upper()):
        raise ValueError(f"{text!r} is not an option letter (or a list of them)")
    return ", ".join(sorted(set(letters)))


def mathvista_item(row: dict, path: Path, line: int) -> HubItem:
    """AI4Math/MathVista, testmini (dataset card, huggingface.co/datasets/AI4Math/MathVista: pid, question,
    image, decoded_image, choices, unit, precision, answer, question_type multi_choice | free_form,
    answer_type text | integer | float | list, metadata, query). The model is asked `query`: the question
    with MathVista's own hint for its type (an option letter, an integer, a float with `precision`
    decimals...) and its choices. Multiple choice: the gold is the letter of `answer` among `choices`.
    Free form: integers canonical; floats kept with `precision` decimals, and a prediction counts when
    it rounds to the gold there (the official rule, `scoring.rounds_to`); `unit` is not part of the
    answer."""
    question = require_str(row, "query", path, line)
    if row.get("question_type") == "multi_choice":
        choices = _choices(row, "choices", path, line)
        return HubItem(question, _gold(row, "answer", path, line, lambda a: choice_letter(a, choices)))
    if row.get("answer_type") == "float":
        precision = row.get("precision")
        if isinstance(precision, bool) or not isinstance(precision, int | float) or precision < 0:
            raise DataError(path, line, "precision", "a float answer needs its number of decimals")
        gold = _gold(row, "answer", path, line, lambda a: f"{float(a):.{int(precision)}f}")
        return HubItem(question, gold, {"precision": int(precision)})
    if row.get("answer_type") == "integer":
        return HubItem(question, _gold(row, "answer", path, line))
    return HubItem(question, _gold(row, "answer", path, line, str.strip))


def mathverse_item(row: dict, path: Path, line: int) -> HubItem:
    """AI4Math/MathVerse, testmini (dataset card, huggingface.co/datasets/AI4Math/MathVerse: sample_index,
    problem_index, problem_version, question, image, answer, question_type multi-choice | free-form,
    metadata, query_wo, query_cot, question_for_eval). The model is asked `query_cot`, MathVerse's own
    chain-of-thought query (in the Vision Only version the question is only in the diagram, so
    `question` alone can be empty). A multiple-choice question lists its options in its text and its
    answer is the letter."""
    question = require_str(row, "query_cot", path, line)
    normalise = option_letters if row.get("question_type") == "multi-choice" else canonical_number
    return HubItem(question, _gold(row, "answer", path, line, normalise))


def mathvision_item(row: dict, path: Path, line: int) -> HubItem:
    """MathLLMs/MathVision, test or testmini (dataset card, huggingface.co/datasets/MathLLMs/MathVision:
    id, question, options, image, decoded_image, answer, solution, level, subject). `options` is empty
    for a free-form question; otherwise they are listed with letters and the answer is the letter."""
    question = require_str(row, "question", path, line)
    options = row.get("options")
    if options:
        choices = _choices(row, "options", path, line)
        return HubItem(format_choices(question, choices),
                       _gold(row, "answer", path, line, lambda a: choice_letter(a, choices)))
    return HubItem(question, _gold(row, "answer", path, line))


def wemath_item(row: dict, path: Path, line: int) -> HubItem:
    """We-Math/We-Math, testmini (its Parquet's dataset_info: ID, split, knowledge concept, question,
    option, answer, image_path (the image, embedded), key, question number, knowledge concept
    description). Every question is multiple choice: `option` is one string ('A. 3; B. 4; ...') and
    the answer is the letter."""
    options = require_str(row, "option", path, line)
    question = f"{require_str(row, 'question', path, line)}\n{options}\n{CHOICES_INSTRUCTION}"
    return HubItem(question, _gold(row, "answer", path, line, option_letters))


def dynamath_item(row: dict, path: Path, line: int) -> HubItem:
    """DynaMath/DynaMath_Sample, one sample_variant split (dataset card, huggingface.co/datasets/DynaMath/
    DynaMath_Sample: id, question, image, decoded_image, ground_truth, answer_type multiple choice |
    float | free form, subject, knowledge_level). A multiple-choice question lists its options in its
    text and its ground truth is the letter; floats are compared as numbers by the verifier."""
    normalise = option_letters if row.get("answer_type") == "multiple choice" else canonical_number
    return HubItem(require_str(row, "question", path, line), _gold(row, "ground_truth", path, line, normalise))


def logicvista_item(row: dict, path: Path, line: int) -> HubItem:
    """LogicVista (github.com/Yijia-Xiao/LogicVista; the Parquet lmms-eval's `logicvista` task reads:
    question, image, answer). Every question is multiple choice with its options in its text; the
    answer is one or more letters ('A, C'), all needed."""
    return HubItem(require_str(row, "question", path, line), _gold(row, "answer", path, line, option_letters))


def mmk12_item(row: dict, path: Path, line: int) -> HubItem:
    """FanqingM/MMK12, test split (dataset card, huggingface.co/datasets/FanqingM/MMK12: id, question,
    answer, subject, image). Fill-in-the-blank questions, answers checked by the verifier."""
    return HubItem(require_str(row, "question", path, line), _gold(row, "answer", path, line))


@dataclass(frozen=True)
class HubBenchmark:
    image: str  # the field holding the row's image(s)
    item: Callable[[dict, Path, int], HubItem]


HUB: dict[str, HubBenchmark] = {
    "mathvista": HubBenchmark("decoded_image", mathvista_item),
    "mathverse": HubBenchmark("image", mathverse_item),
    "mathvision": HubBenchmark("decoded_image", mathvision_item),
    "wemath": HubBenchmark("image_path", wemath_item),
    "dynamath": HubBenchmark("decoded_image", dynamath_item),
    "logicvista": HubBenchmark("image", logicvista_item),
    "mmk12": HubBenchmark("image", mmk12_item),
}


def load_hub(files: str | Path, schema: str, *, bench: str, limit: int | None = None) -> list[Sample]:
    """Rows of hub benchmark `schema` (a key of HUB) -> Samples; every row has at least one image."""
    hub = HUB[schema]
    samples: list[Sample] = []
    image_rows = []
    for path, line, row in _records(files, limit):
        if row.get(hub.image) is None:
            raise DataError(path, line, hub.image, "missing (every row of this benchmark has an image)")
        images = _images(row, hub.image, path, line)
        item = hub.item(row, path, line)
        meta = {"bench": bench, "index": len(samples), "line": line, "question": item.question} | item.meta
        samples.append(Sample(prompt=math_prompt(item.question), gold=item.gold, images=images, meta=meta))
        image_rows.append((images, path, line, hub.image))
    check_images(image_rows)
    return samples


# name -> (file in the data directory, fields, gold normaliser)
BUILTIN: dict[str, tuple[str, FieldMap, Callable[[str], str]]] = {
    "gsm8k": ("gsm8k.jsonl", FieldMap("question", "answer"), gsm8k_gold),
    "math500": ("math500.jsonl", FieldMap("problem", "answer"), canonical_number),
    "aime24": ("aime24.jsonl", FieldMap("problem", "answer"), canonical_number),
    "amc23": ("amc23.jsonl", FieldMap("problem", "answer"), canonical_number),
    "minerva_math": ("minerva_math.jsonl", FieldMap("problem", "solution"), last_boxed_gold),
    "mmlu_stem": ("mmlu_stem.jsonl", FieldMap("question", "answer", choices="choices"), canonical_number),
}
_MAPPING_KEYS = {"file": {"name", "question", "answer", "image", "choices"}, "rb2": {"name"}, "vlrb": {"name"}} | {
    name: {"name"} for name in HUB}


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
    """A benchmark spec -> its Benchmark: NAME (built-in), HUB:PATH[:name=NAME] (a hub benchmark's Parquet,
    PATH may be a glob), file:PATH[:key=field,...] (math, fields question, answer, image, choices;
    name=NAME), rb2:PATH[:name=NAME], vlrb:PATH[:name=NAME]. A benchmark is named (its results' key)
    after its schema (file: after its file) unless name= says otherwise."""
    if spec in BUILTIN:
        file, fields, gold = BUILTIN[spec]
        items = load_math(Path(data_dir) / file, fields, bench=spec, gold=gold, limit=limit)
        return Benchmark(spec, "math", items)
    kind, _, rest = spec.partition(":")
    if kind not in _MAPPING_KEYS or not rest:
        raise UserError(f"unknown benchmark {spec!r}: expected one of {sorted(BUILTIN)}, NAME:PATH with NAME one "
                         f"of {sorted(HUB)}, file:PATH[:question=...,answer=...,image=...,choices=...], "
                         "rb2:PATH or vlrb:PATH")
    file, mapping = rest, {}
    if ":" in rest and "=" in rest.rsplit(":", 1)[1]:
        file, pairs = rest.rsplit(":", 1)
        mapping = dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)
    unknown = set(mapping) - _MAPPING_KEYS[kind]
    if unknown:
        raise UserError(f"{spec!r}: unknown keys {sorted(unknown)}, expected {sorted(_MAPPING_KEYS[kind])}")
    name = mapping.pop("name", Path(file).stem if kind == "file" else kind)
    if not re.fullmatch(r"[\w.-]+", name):
        raise UserError(f"{spec!r}: benchmark name {name!r} must be letters, digits, '_', '-' or '.'")
    if kind == "rb2":
        return Benchmark(name, "rb2", load_rb2(file, limit=limit))
    if kind == "vlrb":
        return Benchmark(name, "vlrb", load_vlrb(file, limit=limit))
    if kind in HUB:
        return Benchmark(name, "math", load_hub(file, kind, bench=name, limit=limit))
    fields = FieldMap(**mapping, require_image="image" in mapping)
    return Benchmark(name, "math", load_math(file, fields, bench=name, limit=limit))
