"""Verifiable prompts and the files they come from.

A `Sample` is one prompt whose answer a rule can check: a policy question with its gold answer,
or a recycled judge / reflection prompt with its label, with the images it shows. Rows are read from
JSONL, JSON (a list of rows, or JSON Lines) or Parquet (file lists may hold glob patterns); a bad row is
a `DataError` naming the file, the line (1-based; in a Parquet file or a JSON list, the row's number) and
the field. Training rows are all checked before a run starts, and `DataErrors` lists every bad one, so
one pass over the data finds them all. A run may train on a seeded subset of them (`subset_rows`).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from spark.data.images import check_images, check_placeholders, image_sources
from spark.data.messages import chat_question
from spark.errors import DataError, DataErrors, collect_errors

# How a training row holds its question: our fields (question, answer, image), or the authors' chat of
# one user message (spark.data.messages).
RowFormat = Literal["rows", "messages"]


@dataclass
class Sample:
    """One verifiable prompt. `gold` is what the rule reward checks the response against:
    the gold answer (policy, reflection), `Yes`/`No` (pointwise) or `A`/`B` (pairwise)."""

    prompt: str  # the user message, before the chat template
    gold: str
    task: str = "policy"  # a name in spark.tasks.table.TASKS
    images: list[str | bytes] = field(default_factory=list)  # spark.data.images.ImageSource, in order; recycled prompts carry them
    meta: dict = field(default_factory=dict)  # provenance: source file/line, group id, variant


def expand_paths(patterns: list[str]) -> list[str]:
    """Data files named by paths or glob patterns (`data/ViRL39K/*.parquet`), each pattern's matches in
    sorted order; a pattern that matches nothing is a DataError."""
    files = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            files.append(pattern)
            continue
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataError(pattern, None, None, "no file matches this pattern")
        files += matches
    return files


def read_records(path: str | Path, errors: list[DataError | str] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row dict) from a .jsonl, .json or .parquet file; malformed rows raise DataError,
    or given `errors`, are added to it and skipped. A .json file is a JSON list of rows or JSON Lines, as
    `datasets`' json loader reads it."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(path, None, None, "reading Parquet needs pyarrow: pip install pyarrow") from e
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
        return
    if path.suffix == ".json" and first_char(path) == "[":
        yield from read_json_list(path, errors)
        return
    with open(path, encoding="utf-8") as f:
        for i, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = parse_line(text, path, i)
            except DataError as e:
                if errors is None:
                    raise
                errors.append(e)
                continue
            yield i, row


def first_char(path: Path) -> str:
    """The file's first character that is not white space ("" for a blank file)."""
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(4096):
            if chunk.strip():
                return chunk.lstrip()[0]
    return ""


def read_json_list(path: Path, errors: list[DataError | str] | None) -> Iterator[tuple[int, dict]]:
    """(row number, row dict) of a file holding one JSON list of rows; a row that is not an object is a
    DataError, or given `errors`, added to it and skipped."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"not valid JSON ({e.msg})") from None
    for i, row in enumerate(rows, start=1):
        if isinstance(row, dict):
            yield i, row
            continue
        error = DataError(path, i, None, f"expected a JSON object, got {type(row).__name__}")
        if errors is None:
            raise error
        errors.append(error)


def parse_line(text: str, path: Path, line: int) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, line, None, f"not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    return row


def require_str(row: dict, key: str, path: str | Path, line: int) -> str:
    """row[key] as a non-empty string (numbers are converted); anything else is a DataError."""
    if key not in row or row[key] is None:
        raise DataError(path, line, key, "missing")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise DataError(path, line, key, "empty")
    return value


def load_questions(paths: list[str], *, question_field: str = "question", answer_field: str = "answer",
                   image_field: str = "image", prompt: Callable[[str], str] = lambda q: q,
                   row_format: RowFormat = "rows") -> list[Sample]:
    """Training rows {question, answer, images?} as policy Samples; `paths` may hold glob patterns.
    `prompt` turns the question into the user message (e.g. spark.tasks.prompts.math_prompt); the raw question
    stays in `meta["question"]` for the recycling templates. The image field holds what
    `spark.data.images.image_sources` accepts (paths relative to the data file, embedded images, lists); a
    question may mark where its images go with `<image>`, one per image (ViRL39K does). With
    row_format="messages" a row is the authors' {chat, answer} instead: `question_field` holds the chat,
    whose user message gives the question and the images (spark.data.messages.chat_question). Every bad row is
    reported (DataErrors), not only the first; every image is decoded here, so a corrupt one fails the load,
    not the step that draws its row."""
    samples, image_rows, errors = [], [], []
    for path in expand_paths(paths):
        for line, row in read_records(path, errors):
            with collect_errors(errors):
                if row_format == "messages":
                    if row.get(question_field) is None:
                        raise DataError(path, line, question_field, "missing")
                    question, written = chat_question(row[question_field], path=path, line=line, key=question_field)
                    images_key = question_field  # the chat holds the images
                else:
                    question = require_str(row, question_field, path, line)
                    written, images_key = row.get(image_field), image_field
                images = image_sources(written, Path(path).parent, path=path, line=line, key=images_key)
                check_placeholders(question, len(images), path=path, line=line, key=question_field)
                image_rows.append((images, path, line, images_key))
                samples.append(Sample(prompt=prompt(question), gold=require_str(row, answer_field, path, line),
                                      images=images, meta={"question": question, "source": f"{path}:{line}"}))
    DataErrors.raise_any(errors)
    if not samples:
        raise DataError(", ".join(paths) or "<no files>", None, None, "no training rows")
    check_images(image_rows)
    return samples


def subset_rows(rows: list[Sample], max_rows: int, *, seed: int, source: str) -> list[Sample]:
    """`max_rows` of `rows` drawn at random by `seed`, in their file order (all rows for 0): a function of
    the rows alone, so every rank and every resume trains on the same subset, and a larger max_rows of
    the same seed only adds rows. More rows than there are is a DataError naming `source`, the files."""
    if not max_rows:
        return rows
    if max_rows > len(rows):
        raise DataError(source, None, None, f"data.max_rows = {max_rows} is more than the {len(rows)} rows there")
    picked = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_rows]
    return [rows[i] for i in sorted(picked.tolist())]


def load_judge_rows(paths: list[str], *, render: Callable[..., str]) -> list[Sample]:
    """Held-out pointwise judge rows {question, answer, label: Yes|No, cot?} as pointwise Samples;
    `answer` is the candidate shown to the judge (a final answer, or a whole response with cot=true) and
    `render(question, answer, cot=cot)` builds the judge prompt (spark.tasks.prompts.pointwise_prompt)."""
    samples = []
    for path in paths:
        for line, row in read_records(path):
            label = require_str(row, "label", path, line)
            if label not in ("Yes", "No"):
                raise DataError(path, line, "label", f"must be Yes or No, got {label!r}")
            question, answer = require_str(row, "question", path, line), require_str(row, "answer", path, line)
            shown = render(question, answer, cot=bool(row.get("cot", False)))
            samples.append(Sample(shown, label, task="pointwise", meta={"source": f"{path}:{line}"}))
    return samples


def step_prompts(questions: list[Sample], step: int, per_step: int, *, seed: int, rank: int = 0,
                 world_size: int = 1) -> list[Sample]:
    """The data cursor, a pure function of the step: this rank's share of the step's prompts, i.e. positions
    [step * per_step, (step + 1) * per_step) of the concatenated per-epoch permutations (epoch e shuffled
    with seed + e), every world_size-th from this rank's offset."""
    orders: dict[int, list[int]] = {}  # epoch -> its permutation, drawn once per call
    picked = []
    for position in range(step * per_step + rank, (step + 1) * per_step, world_size):
        epoch, index = divmod(position, len(questions))
        if epoch not in orders:
            orders[epoch] = torch.randperm(len(questions), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        picked.append(questions[orders[epoch][index]])
    return picked
