"""Mistakes a person running spark can fix, and the ranges of settings.

A `UserError` is a mistake in what a program was given: a bad config or flag (`spark.config.ConfigError`,
`spark.cli.UsageError`), bad data (`DataError`), a missing or broken checkpoint (`CheckpointError`).
Its message names the file, row, field or key and the value, and the command lines print it as one line,
without a traceback (`spark.cli`). So is a `RunStopped`: a run that diverged, which is no mistake in the input.

A settings dataclass declares the range of each numeric field with `ranged` and checks them in `__post_init__`
with `check_ranges`, so that a value out of range is refused wherever it comes from: a TOML file, a flag or code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """A mistake in a program's input; its message says what and where, in one line."""


class RunStopped(RuntimeError):
    """A run that cannot go on (its updates diverged): the message says what happened, what was kept and what to
    change, and the command lines print it as one line, like a UserError's."""


class CheckpointError(UserError):
    """A checkpoint directory that cannot be loaded, naming the path, the file and the tensor."""


class SettingError(UserError):
    """A setting outside its range. `name` is the field (a dotted path below it for a table's entry, or a path from
    the config's top for a rule across tables), `rule` what it must be, `others` the other keys the rule reads."""

    def __init__(self, owner: str, name: str, value: Any, rule: str, others: tuple[str, ...] = ()):
        super().__init__(f"{owner}.{name} = {value!r} {rule}")
        self.name, self.value, self.rule, self.others = name, value, rule, others


class DataError(UserError):
    """A row that cannot be used, with where it is."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


class DataErrors(DataError):
    """The bad rows one pass found (DataErrors, or their messages): the message lists the first MAX_LISTED,
    then how many more."""

    MAX_LISTED = 20

    def __init__(self, errors: list[DataError | str]):
        listed = "".join(f"\n  {error}" for error in errors[:self.MAX_LISTED])
        more = f"\n  ... and {len(errors) - self.MAX_LISTED} more" if len(errors) > self.MAX_LISTED else ""
        ValueError.__init__(self, str(errors[0]) if len(errors) == 1 else f"{len(errors)} bad rows:{listed}{more}")
        self.errors = [str(error) for error in errors]
        self.path, self.line, self.field = "", None, None  # each listed error names its own

    @classmethod
    def raise_any(cls, errors: list[DataError | str]) -> None:
        """Raise nothing, the one DataError itself (with its file, line and field), or all of them."""
        if len(errors) == 1 and isinstance(errors[0], DataError):
            raise errors[0]
        if errors:
            raise cls(errors)


@contextmanager
def collect_errors(errors: list[DataError | str]) -> Iterator[None]:
    """Add a DataError raised in the block to `errors` instead of raising it."""
    try:
        yield
    except DataError as e:
        errors.append(e)


def ranged(default: Any = dataclasses.MISSING, rule: str = "", *, zero: str = "",
           factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose values must satisfy `rule`: ">= 0", "> 0", or an interval "[0, 1)" (each
    entry of a tuple or dict must). `zero`: what 0 means where 0 is allowed outside the rule (dual_clip's "off")."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"range": rule, "zero": zero})


def satisfies(value: float, rule: str) -> bool:
    """Whether `value` satisfies a `ranged` rule; NaN satisfies none."""
    if rule.startswith(">"):
        operator, bound = rule.split()
        return value >= float(bound) if operator == ">=" else value > float(bound)
    low, high = (float(bound) for bound in rule[1:-1].split(","))
    above = low <= value if rule[0] == "[" else low < value
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def check_ranges(settings: Any) -> None:
    """Raise a SettingError for the first `ranged` field of the dataclass `settings` out of its range. Floats
    must also be finite; None (an optional setting left unset) is not checked."""
    for f in dataclasses.fields(settings):
        rule = f.metadata.get("range")
        if not rule:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, dict):
            entries = [(f"{f.name}.{key}", item) for key, item in value.items()]
        elif isinstance(value, tuple | list):
            entries = [(f.name, item) for item in value]
        else:
            entries = [(f.name, value)]
        for name, item in entries:
            if item is None or f.metadata["zero"] and item == 0:
                continue
            shown = item if name != f.name else value
            if isinstance(item, float) and not math.isfinite(item):
                raise SettingError(type(settings).__name__, name, shown, "must be a finite number")
            if not satisfies(item, rule):
                zero = f"0 ({f.metadata['zero']}) or " if f.metadata["zero"] else ""
                each = " each" if isinstance(value, tuple | list) else ""
                where = f"in {rule}" if rule[0] in "[(" else rule
                raise SettingError(type(settings).__name__, name, shown, f"must be {zero}{where}{each}")
