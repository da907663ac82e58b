"""Verifiable prompts and the files they come from.

A `Sample` is one prompt whose answer a rule can check: a policy question with its gold answer,
or a recycled judge / reflection prompt with its label. Rows are read from JSONL or Parquet; a bad
row is a `DataError` naming the file, the line (1-based) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("policy", "pointwise", "pairwise", "reflection")


class DataError(ValueError):
    """A row that cannot be used, with where it is."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


@dataclass
class Sample:
    """One verifiable prompt. `gold` is what the rule reward checks the response against:
    the gold answer (policy, reflection), `Yes`/`No` (pointwise) or `A`/`B` (pairwise)."""

    prompt: str  # the user message, before the chat template
    gold: str
    task: str = "policy"  # one of TASKS
    image: str | None = None  # path of the image, travels with recycled prompts
    meta: dict = field(default_factory=dict)  # provenance: source file/line, group id, variant


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row dict) from a .jsonl or .parquet file; malformed rows raise DataError."""
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
    with open(path, encoding="utf-8") as f:
        for i, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, i, None, f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, i, None, f"expected a JSON object, got {type(row).__name__}")
            yield i, row


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
                   image_field: str = "image", prompt: Callable[[str], str] = lambda q: q) -> list[Sample]:
    """Training rows {question, answer, image?} as policy Samples. `prompt` turns the question into the
    user message (e.g. spark.prompts.math_prompt); the raw question stays in `meta["question"]` for the
    recycling templates. Image paths are relative to their data file and must exist."""
    samples = []
    for path in paths:
        for line, row in read_records(path):
            question = require_str(row, question_field, path, line)
            image = row.get(image_field)
            if image is not None:
                image = str((Path(path).parent / require_str(row, image_field, path, line)).resolve())
                if not Path(image).exists():
                    raise DataError(path, line, image_field, f"image file not found: {image}")
            samples.append(Sample(prompt=prompt(question), gold=require_str(row, answer_field, path, line),
                                  image=image, meta={"question": question, "source": f"{path}:{line}"}))
    if not samples:
        raise DataError(", ".join(paths) or "<no files>", None, None, "no training rows")
    return samples
