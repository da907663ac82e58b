"""The task table: each task defined once, and a new task added by one entry plus its template."""

from __future__ import annotations

import math
import random

import pytest

from spark.data.rows import Sample
from spark.rl.recycle import ABLATIONS, RecycleConfig, recycle, rule_tasks
from spark.rl.rollout import RolloutGroup
from spark.tasks import prompts
from spark.tasks.table import (
    TASKS,
    TaskSpec,
    judge_tasks,
    recycled_tasks,
    register_task,
    tts_task,
    verifier_kind,
)
from spark.trainer import Trainer
from tests.trainer_utils import read_metrics, tiny_config


def test_the_paper_tasks():
    assert {name: (spec.verifier, spec.source, spec.weight, spec.tts) for name, spec in TASKS.items()} == {
        "policy": ("math", "data", 1.0, "answer"),
        "pointwise": ("pointwise", "judge", 1.0, "judge"),
        "pairwise": ("pairwise", "judge", 1.0, ""),
        "reflection": ("math", "reflection", 1.0, "reflect"),
    }
    assert [TASKS[name].variants for name in ("pointwise", "pairwise", "reflection")] == [
        prompts.NUM_VARIANTS[name] for name in ("pointwise", "pairwise", "reflection")]
    assert recycled_tasks() == ("pointwise", "pairwise", "reflection") and judge_tasks() == ("pointwise", "pairwise")
    assert tts_task("judge").render is prompts.pointwise_prompt and tts_task("reflect").render is prompts.reflection_prompt
    assert ABLATIONS["reward-only"].recycled() == ("pointwise", "pairwise")
    assert [verifier_kind("pointwise", gold) for gold in ("Yes", "No", "A", "B")] == ["pointwise"] * 2 + ["pairwise"] * 2


def test_a_rule_goes_with_source_rule_only():
    with pytest.raises(ValueError, match="source 'rule'"):
        TaskSpec("x", verifier="math", render=str, variants=1, source="rule")
    with pytest.raises(ValueError, match="already in"):
        register_task(TaskSpec("policy", verifier="math", render=str, variants=1, source="data"))


RESTATE = "Restate the question below, then answer it.\n\n{question}\n\nPut the final answer in \\boxed{{}}."


def restate_prompt(question: str) -> str:
    return RESTATE.format(question=question)


def restate_rule(group: RolloutGroup, rng: random.Random) -> Sample | None:
    """A toy recycled task: a group with a wrong rollout asks its question again in other words."""
    if all(group.rewards):
        return None
    question = group.sample.meta["question"]
    return Sample(prompt=restate_prompt(question), gold=group.sample.gold, task="restate", images=group.sample.images,
                  meta={**group.sample.meta, "variant": 0})


@pytest.fixture
def restate_task():
    spec = register_task(TaskSpec("restate", verifier="math", render=restate_prompt, variants=1, source="rule",
                                  weight=0.5, recycle=restate_rule))
    yield spec
    del TASKS["restate"]


def test_a_new_task_is_one_entry_and_trains_a_step(restate_task, run_files, tmp_path):
    groups = [RolloutGroup(Sample("Q?", "5", meta={"question": "Q?"}), ["\\boxed{5}", "\\boxed{4}"], [1.0, 0.0])]
    assert rule_tasks("spark") == ("restate",) and rule_tasks("policy+reward") == ()
    samples, stats = recycle(groups, RecycleConfig(), random.Random(0), rule_tasks=("restate",))
    assert stats["restate"] == 1 and [s.prompt for s in samples if s.task == "restate"] == [restate_prompt("Q?")]

    out = tmp_path / "run"
    config = tiny_config(*run_files, out, "run.max_steps=1", "spark.recycle.max_per_kind=4")
    assert config.spark.task_weights["restate"] == 0.5  # the table's default weight
    Trainer(config).train()
    (metrics,) = read_metrics(out)
    assert metrics["recycle/restate"] >= 1 and 0 <= metrics["reward/restate"] <= 1
    assert math.isfinite(metrics["recycled/loss"])

