"""The tasks one model is trained on, each defined once.

The policy task answers questions from the data. The recycled tasks are made from one step's policy rollouts
and their rewards (spark.rl.recycle): judges (pointwise, pairwise) and reflection. Every task is trained with the
same GRPO loss on a rule reward; a task's entry says how that reward reads a response (`verifier`, a kind of
spark.verify.score_batch), which template renders its prompt, how many template variants it draws from, its
default loss weight (`spark.task_weights`), how it is made, and what test-time scaling (spark.evaluation.tts)
uses it for.

A new recycled task is one `register_task` call with its templates and a `recycle` rule that turns one prompt's
rollout group into a sample (tests/tasks/test_table.py adds one and trains a step with it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from spark.tasks.prompts import (
    NUM_VARIANTS,
    POINTWISE_VERDICTS,
    math_prompt,
    pairwise_prompt,
    pointwise_prompt,
    reflection_prompt,
)

# How a task's samples are made: from the data, by the paper's recycling rules for judges or for reflections
# (spark.rl.recycle, which balance and cap them together), or by the task's own `recycle` rule.
Source = Literal["data", "judge", "reflection", "rule"]
# What test-time scaling uses a task for: the first answer, judging it, answering again after a rejection.
TTSRole = Literal["answer", "judge", "reflect", ""]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    verifier: str  # spark.verify.score_batch's kind: "math" (the gold answer), "pointwise" (Yes/No), "pairwise" (A/B)
    render: Callable[..., str]  # the user message (spark.tasks.prompts)
    variants: int  # template variants drawn from, per content form (answer-based, CoT-based)
    source: Source
    weight: float = 1.0  # the default of `spark.task_weights[name]`
    tts: TTSRole = ""
    # source "rule": one prompt's rollout group (spark.rl.rollout.RolloutGroup) and the step's random.Random ->
    # a spark.data.rows.Sample of this task, or None
    recycle: Callable[[Any, random.Random], Any] | None = None

    def __post_init__(self):
        if (self.source == "rule") != (self.recycle is not None):
            raise ValueError(f"task {self.name!r}: a `recycle` rule goes with source 'rule', and only with it")


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the table (a name already there is an error)."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already in spark.tasks.table.TASKS")
    TASKS[spec.name] = spec
    return spec


register_task(TaskSpec("policy", verifier="math", render=math_prompt, variants=1, source="data", tts="answer"))
register_task(TaskSpec("pointwise", verifier="pointwise", render=pointwise_prompt,
                       variants=NUM_VARIANTS["pointwise"], source="judge", tts="judge"))
register_task(TaskSpec("pairwise", verifier="pairwise", render=pairwise_prompt,
                       variants=NUM_VARIANTS["pairwise"], source="judge"))
register_task(TaskSpec("reflection", verifier="math", render=reflection_prompt,
                       variants=NUM_VARIANTS["reflection"], source="reflection", tts="reflect"))


def recycled_tasks() -> tuple[str, ...]:
    """The tasks made from policy rollouts, in table order."""
    return tuple(name for name, spec in TASKS.items() if spec.source != "data")


def judge_tasks() -> tuple[str, ...]:
    return tuple(name for name, spec in TASKS.items() if spec.source == "judge")


def tts_task(role: TTSRole) -> TaskSpec:
    """The task whose templates test-time scaling uses for `role`."""
    (spec,) = [spec for spec in TASKS.values() if spec.tts == role]
    return spec


def verifier_kind(task: str, gold: str) -> str:
    """spark.verify.score_batch's kind for a sample of `task` with this gold: the task's, except that a pointwise
    sample in the A/B coding (gold "A" or "B") is read as pairwise verdicts are, by letter."""
    if task == "pointwise" and gold in POINTWISE_VERDICTS["ab"].values():
        return TASKS["pairwise"].verifier
    return TASKS[task].verifier
