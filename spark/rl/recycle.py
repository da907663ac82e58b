"""Recycling: turn one step's policy rollouts into judge and reflection prompts (SPARK, sec. 3.2).

From each prompt group (question, gold answer, n rollouts with 0/1 rewards):
- all rollouts correct -> one pointwise sample of a correct rollout, label `Yes`
- all rollouts wrong   -> one pointwise sample of a wrong rollout, label `No`
- mixed                -> a pairwise sample (one correct, one wrong rollout; label the correct one's letter)
                          with probability `mixed_pairwise_prob`, else a pointwise sample of a correct
                          (probability `mixed_pointwise_correct_prob`) or a wrong rollout
- any wrong rollout    -> one reflection sample: a wrong rollout to fix, label the gold answer
A judge kind switched off gives nothing, and mixed groups then give the other judge kind.
Then, over the batch: pointwise Yes/No are balanced by dropping the majority (a step whose pointwise
samples share one label keeps none of them), each kind is capped at `max_per_kind`, judge and reflection
samples are kept at `judge_to_reflection` : 1 by subsampling the larger kind (0: each kind only capped),
and pairwise A/B positions are dealt out evenly.

Each sample is rendered with a template variant drawn from spark.tasks.prompts. A pointwise sample asks for Yes/No,
or with probability `pointwise_ab_prob` for a letter (A: correct, B: incorrect; its gold is then the letter,
scored as pairwise verdicts are: spark.tasks.table.verifier_kind). A reflection's template leaves open whether the answer
shown is right, or with probability `reflection_says_wrong_prob` says that it is wrong (it always is).

A sample shows a rollout's final answer (answer-based) or its whole response (CoT-based): judges as
`content` says, reflections CoT-based with probability `reflection_cot_prob`. Rollouts without a final
answer (found as the reward finds it: `answer_mode`) are never shown answer-based; a sample with no
rollout it can show is not made (counted in `skipped_no_answer`). Recycled prompts are scored by the same
rule verifier as policy prompts (spark.tasks.table.verifier_kind).

A task of spark.tasks.table with a rule of its own (source "rule") is then made by that rule from each group,
at most `max_per_kind` of it, when the ablation `mode` recycles all tasks.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import random
import typing
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from spark.data.rows import Sample
from spark.errors import check_ranges, ranged
from spark.rl.rollout import RolloutGroup
from spark.tasks.prompts import POINTWISE_VERDICTS
from spark.tasks.table import TASKS, judge_tasks, recycled_tasks
from spark.verify import extract_answer

# The recycled tasks the paper's rules make (this module's doc), each switched on or off by RecycleConfig.
PAPER_KINDS = ("pointwise", "pairwise", "reflection")

# The paper's ablation rows (`spark.mode`); what each one means is `ABLATIONS`.
Mode = Literal["policy-only", "reward-only", "policy+reward", "spark"]
# What the judges see: final answers, whole responses, or half each.
Content = Literal["answer", "cot", "both"]


@dataclass(frozen=True)
class Ablation:
    """One ablation row: whether the policy prompts' loss is trained, and which recycled tasks are made: none,
    the judges (spark.tasks.table's source "judge"), or all of the table's recycled tasks."""

    trains_policy: bool
    recycles: Literal["none", "judges", "all"]

    def recycled(self) -> tuple[str, ...]:
        return {"none": (), "judges": judge_tasks(), "all": recycled_tasks()}[self.recycles]


ABLATIONS: dict[str, Ablation] = {
    "policy-only": Ablation(trains_policy=True, recycles="none"),  # plain GRPO
    "reward-only": Ablation(trains_policy=False, recycles="judges"),  # rollouts only feed the judges
    "policy+reward": Ablation(trains_policy=True, recycles="judges"),
    "spark": Ablation(trains_policy=True, recycles="all"),  # the full method
}
assert set(ABLATIONS) == set(typing.get_args(Mode))


@dataclass
class RecycleConfig:
    """What one step's rollouts are recycled into.

    Defaults: the method's reference rules, plus balancing."""

    pointwise: bool = True  # judge one rollout: is it correct? (Yes/No)
    pairwise: bool = True  # judge a correct and a wrong rollout: which is correct? (A/B)
    reflection: bool = True  # fix a wrong rollout (label: the gold answer)
    content: Content = "both"  # judges see "answer" (final answers), "cot" (responses) or "both" (half each)
    mixed_pairwise_prob: float = ranged(0.7, "[0, 1]")  # a mixed group gives a pairwise sample with this chance, else pointwise
    mixed_pointwise_correct_prob: float = ranged(0.5, "[0, 1]")  # chance a mixed group's pointwise shows a correct rollout
    reflection_cot_prob: float = ranged(0.5, "[0, 1]")  # chance a reflection shows the whole response, else the final answer
    judge_to_reflection: float = ranged(1.0, ">= 0")  # judge : reflection samples kept, the larger kind subsampled; 0: no ratio
    balance_labels: bool = True  # as many Yes as No (majority dropped), as many A as B (positions dealt)
    # keep at most this many judge and this many reflection samples per step, over all ranks (each rank its share)
    max_per_kind: int | None = ranged(None, ">= 0")
    pointwise_ab_prob: float = ranged(0.0, "[0, 1]")  # chance a pointwise sample asks for A (correct) / B (incorrect), else Yes/No
    reflection_says_wrong_prob: float = ranged(0.0, "[0, 1]")  # chance a reflection's template says the answer shown is wrong

    def __post_init__(self):
        if self.content not in typing.get_args(Content):
            raise ValueError(f"RecycleConfig.content must be one of {typing.get_args(Content)}, got {self.content!r}")
        check_ranges(self)


def recycled_kinds(mode: str, rules: RecycleConfig) -> RecycleConfig | None:
    """`rules` with only the kinds that both the ablation `mode` and the rules switch on; None when nothing
    is recycled (policy-only)."""
    recycles = ABLATIONS[mode].recycled()
    kinds = {kind: kind in recycles and getattr(rules, kind) for kind in PAPER_KINDS}
    return dataclasses.replace(rules, **kinds) if any(kinds.values()) or rule_tasks(mode) else None


def rule_tasks(mode: str) -> tuple[str, ...]:
    """The recycled tasks the ablation `mode` makes with their own rules (spark.tasks.table's source "rule")."""
    return tuple(task for task in ABLATIONS[mode].recycled() if TASKS[task].source == "rule")


@dataclass
class _Draft:
    """A recycled sample before rendering: which rollouts of which group it shows, and how."""

    group: int
    task: str
    rollouts: tuple[int, ...]  # in display order; pairwise: (correct, wrong) until the letters are dealt
    cot: bool  # shows whole responses, else final answers
    label: str = ""  # pointwise: Yes/No; pairwise: the correct rollout's letter; reflection: unused


def recycle(
    groups: list[RolloutGroup], config: RecycleConfig, rng: random.Random, *, answer_mode: str = "strict",
    rule_tasks: tuple[str, ...] = (),
) -> tuple[list[Sample], dict[str, float]]:
    """Recycled samples (shuffled) and stats for one step's rollout groups; the rules are in the module doc.

    Each sample carries all the group's images, a template variant drawn from spark.tasks.prompts, and in `meta` the
    group's meta plus its provenance: `group` (index in `groups`), `rollouts` (indices, in display
    order), `variant` and `content` ("answer" or "cot"), and the template family that rendered it: `coding`
    ("yesno" or "ab") for pointwise samples, `says_wrong` for reflections. Stats: group outcomes, samples
    per kind, samples skipped or dropped, and `pointwise_yes_frac` / `pairwise_a_frac` (Yes = a correct
    answer shown, in either coding) when those kinds are present.
    """
    answers = []  # per group, per rollout: the final answer or None
    wanted: list[_Draft | None] = []
    outcomes = {"groups_all_correct": 0, "groups_all_wrong": 0, "groups_mixed": 0}
    for index, group in enumerate(groups):
        _check_group(group, index)
        answers.append([extract_answer(response, answer_mode) for response in group.responses])
        has_answer = [answer is not None for answer in answers[index]]
        correct = [i for i, reward in enumerate(group.rewards) if reward == 1]
        wrong = [i for i, reward in enumerate(group.rewards) if reward == 0]
        mixed = bool(correct and wrong)
        outcomes["groups_mixed" if mixed else "groups_all_correct" if correct else "groups_all_wrong"] += 1

        judge_cot = config.content == "cot" or (config.content == "both" and rng.random() < 0.5)
        if mixed and config.pairwise and (not config.pointwise or rng.random() < config.mixed_pairwise_prob):
            wanted.append(_choose(index, "pairwise", [correct, wrong], judge_cot, has_answer, rng))
        elif config.pointwise:
            shows_correct = not wrong or (mixed and rng.random() < config.mixed_pointwise_correct_prob)
            pool, label = (correct, "Yes") if shows_correct else (wrong, "No")
            wanted.append(_choose(index, "pointwise", [pool], judge_cot, has_answer, rng, label))
        if config.reflection and wrong:
            reflection_cot = rng.random() < config.reflection_cot_prob
            wanted.append(_choose(index, "reflection", [wrong], reflection_cot, has_answer, rng))
    picks = [p for p in wanted if p is not None]
    judges = [p for p in picks if p.task != "reflection"]
    reflections = [p for p in picks if p.task == "reflection"]

    units = _judge_units(judges, config.balance_labels, rng)
    judge_quota, reflection_quota = _quotas(sum(len(unit) for unit in units), len(reflections), config)
    kept_judges = [p for unit in _subsample_units(units, judge_quota, rng) for p in unit]
    kept_reflections = rng.sample(reflections, reflection_quota)
    _deal_letters([p for p in kept_judges if p.task == "pairwise"], config.balance_labels, rng)

    samples = [_render(p, groups[p.group], answers[p.group], config, rng) for p in kept_judges + kept_reflections]
    by_rule = {task: _by_rule(task, groups, config, rng) for task in rule_tasks}
    samples += [sample for made in by_rule.values() for sample in made]
    rng.shuffle(samples)
    stats = {
        **outcomes,
        "skipped_no_answer": wanted.count(None),
        "dropped_for_balance": len(judges) - sum(len(unit) for unit in units),
        "dropped_for_quota": sum(len(unit) for unit in units) + len(reflections) - len(samples),
        **_label_stats(kept_judges, kept_reflections),
        **{task: len(made) for task, made in by_rule.items()},
    }
    return samples, stats


def _check_group(group: RolloutGroup, index: int) -> None:
    where = f"recycle: group {index}"
    if group.sample.task != "policy":
        raise ValueError(f"{where}: only policy prompts are recycled, got task {group.sample.task!r}")
    if "question" not in group.sample.meta:
        raise ValueError(f"{where}: sample.meta has no 'question' (the raw question the templates quote)")
    if not group.responses:
        raise ValueError(f"{where}: no responses")
    if len(group.responses) != len(group.rewards):
        raise ValueError(f"{where}: {len(group.responses)} responses but {len(group.rewards)} rewards")
    if any(reward not in (0, 1) for reward in group.rewards):
        raise ValueError(f"{where}: rewards must be 0 or 1, got {group.rewards}")


def _choose(
    group: int,
    task: str,
    pools: list[list[int]],
    cot: bool,
    has_answer: list[bool],
    rng: random.Random,
    label: str = "",
) -> _Draft | None:
    """One rollout drawn from each pool; None when a pool has no rollout that can be shown (answer-based
    samples only show rollouts with a final answer)."""
    if not cot:
        pools = [[i for i in pool if has_answer[i]] for pool in pools]
    if not all(pools):
        return None
    return _Draft(group, task, tuple(rng.choice(pool) for pool in pools), cot, label)


def _judge_units(judges: list[_Draft], balance: bool, rng: random.Random) -> list[list[_Draft]]:
    """Judges grouped into the units that are kept or dropped together: with `balance`, each Yes is paired
    with a No and the surplus of the majority label is dropped at random; otherwise single samples."""
    if not balance:
        return [[p] for p in judges]
    yes = [p for p in judges if p.label == "Yes"]
    no = [p for p in judges if p.label == "No"]
    rng.shuffle(yes)
    rng.shuffle(no)
    return [[p] for p in judges if p.task == "pairwise"] + [list(pair) for pair in zip(yes, no)]


def _quotas(num_judges: int, num_reflections: int, config: RecycleConfig) -> tuple[int, int]:
    """How many judge and reflection samples to keep: each at most `max_per_kind`, then the larger kind cut
    to judges : reflections = judge_to_reflection : 1 (a ratio of 0 cuts neither). When one kind is empty
    (no wrong rollout this step, or a kind switched off) the other is not cut for the ratio."""
    if config.max_per_kind is not None:
        num_judges = min(num_judges, config.max_per_kind)
        num_reflections = min(num_reflections, config.max_per_kind)
    if config.judge_to_reflection and num_judges and num_reflections:
        num_judges = min(num_judges, round(config.judge_to_reflection * num_reflections))
        num_reflections = min(num_reflections, round(num_judges / config.judge_to_reflection))
    return num_judges, num_reflections


def _subsample_units(units: list[list[_Draft]], quota: int, rng: random.Random) -> list[list[_Draft]]:
    """Random whole units holding at most `quota` samples (quota - 1 when only a Yes/No pair is left)."""
    rng.shuffle(units)
    kept, size = [], 0
    for unit in units:
        if size + len(unit) <= quota:
            kept.append(unit)
            size += len(unit)
    return kept


def _deal_letters(pairwise: list[_Draft], balance: bool, rng: random.Random) -> None:
    """Put each pairwise sample's correct rollout at A or B: half and half in random order with `balance`,
    else each at random. The label is the correct rollout's letter."""
    if balance:
        letters = ["A", "B"] * math.ceil(len(pairwise) / 2)
        rng.shuffle(letters)
    else:
        letters = [rng.choice("AB") for _ in pairwise]
    for pick, letter in zip(pairwise, letters):
        pick.label = letter
        if letter == "B":
            pick.rollouts = pick.rollouts[::-1]


def _render(
    pick: _Draft, group: RolloutGroup, answers: list[str | None], config: RecycleConfig, rng: random.Random
) -> Sample:
    question = group.sample.meta["question"]
    shown = [group.responses[i] if pick.cot else answers[i] for i in pick.rollouts]
    variant = rng.randrange(TASKS[pick.task].variants)
    meta = {
        **group.sample.meta,
        "group": pick.group,
        "rollouts": list(pick.rollouts),
        "variant": variant,
        "content": "cot" if pick.cot else "answer",
    }
    if pick.task == "pointwise":
        coding = "ab" if rng.random() < config.pointwise_ab_prob else "yesno"
        prompt = TASKS["pointwise"].render(question, shown[0], cot=pick.cot, variant=variant, coding=coding)
        gold, meta["coding"] = POINTWISE_VERDICTS[coding][pick.label], coding
    elif pick.task == "pairwise":
        prompt = TASKS["pairwise"].render(question, shown[0], shown[1], cot=pick.cot, variant=variant)
        gold = pick.label
    else:
        says_wrong = rng.random() < config.reflection_says_wrong_prob
        prompt = TASKS["reflection"].render(question, shown[0], cot=pick.cot, variant=variant, says_wrong=says_wrong)
        gold, meta["says_wrong"] = group.sample.gold, says_wrong
    return Sample(prompt=prompt, gold=gold, task=pick.task, images=group.sample.images, meta=meta)


def _by_rule(task: str, groups: list[RolloutGroup], config: RecycleConfig, rng: random.Random) -> list[Sample]:
    """A task's own recycling rule applied to each group, at most `max_per_kind` samples kept."""
    made = [sample for group in groups if (sample := TASKS[task].recycle(group, rng)) is not None]
    for sample in made:
        if sample.task != task:
            raise ValueError(f"the recycling rule of task {task!r} made a sample of task {sample.task!r}")
    return made if config.max_per_kind is None else rng.sample(made, min(len(made), config.max_per_kind))


def _label_stats(judges: list[_Draft], reflections: list[_Draft]) -> dict[str, float]:
    pointwise = [p.label for p in judges if p.task == "pointwise"]
    pairwise = [p.label for p in judges if p.task == "pairwise"]
    stats = {"pointwise": len(pointwise), "pairwise": len(pairwise), "reflection": len(reflections)}
    if pointwise:
        stats["pointwise_yes_frac"] = pointwise.count("Yes") / len(pointwise)
    if pairwise:
        stats["pairwise_a_frac"] = pairwise.count("A") / len(pairwise)
    return stats


def label_counts(stats: dict) -> dict[str, float]:
    """A step's recycled sample counts per kind and of Yes / A labels, to be summed over ranks (same keys
    on every rank)."""
    counts = {kind: float(stats.get(kind, 0)) for kind in recycled_tasks()}
    counts["pointwise_yes"] = stats.get("pointwise_yes_frac", 0.0) * counts["pointwise"]
    counts["pairwise_a"] = stats.get("pairwise_a_frac", 0.0) * counts["pairwise"]
    return counts


def label_balance(counts: dict[str, float]) -> dict[str, float]:
    """Metrics of (summed) `label_counts`: samples per kind, and the Yes and A fractions where there are any."""
    metrics = {f"recycle/{kind}": counts[kind] for kind in recycled_tasks()}
    if counts["pointwise"]:
        metrics["recycle/yes_frac"] = counts["pointwise_yes"] / counts["pointwise"]
    if counts["pairwise"]:
        metrics["recycle/a_frac"] = counts["pairwise_a"] / counts["pairwise"]
    return metrics


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` cut into `parts` counts that differ by at most one, the larger first: [7, 3] -> [3, 2, 2]."""
    return [total // parts + (part < total % parts) for part in range(parts)]


def deal(waiting: list[int], total: int) -> list[int]:
    """How many of its waiting samples each rank takes so that `total` are taken over all ranks, as evenly as
    the waiting counts allow: one at a time, round-robin over the ranks that still have some.
    deal([5, 1], 4) -> [3, 1]."""
    if total > sum(waiting):
        raise ValueError(f"deal: {total} samples asked of {sum(waiting)} waiting")
    taken = [0] * len(waiting)
    while total:
        for rank, count in enumerate(waiting):
            if total and taken[rank] < count:
                taken[rank] += 1
                total -= 1
    return taken


class RecycleQueue:
    """FIFO of recycled samples waiting to be trained on; `state_dict` is plain JSON for checkpoints."""

    def __init__(self):
        self._samples: deque[Sample] = deque()

    def push(self, samples: Iterable[Sample]) -> None:
        self._samples.extend(samples)

    def pop(self, k: int) -> list[Sample]:
        """The k oldest samples (fewer if the queue is shorter)."""
        return [self._samples.popleft() for _ in range(min(k, len(self._samples)))]

    def __len__(self) -> int:
        return len(self._samples)

    def state_dict(self) -> dict:
        """Plain JSON: embedded images (bytes) are written as {"base64": ...}."""
        return {"samples": [{**dataclasses.asdict(sample), "images": [_image_to_json(i) for i in sample.images]}
                            for sample in self._samples]}

    def load_state_dict(self, state: dict) -> None:
        self._samples = deque(Sample(**{**sample, "images": [_image_from_json(i) for i in sample["images"]]})
                              for sample in state["samples"])


def _image_to_json(image: str | bytes) -> str | dict:
    return {"base64": base64.b64encode(image).decode("ascii")} if isinstance(image, bytes) else image


def _image_from_json(image: str | dict) -> str | bytes:
    return base64.b64decode(image["base64"]) if isinstance(image, dict) else image
