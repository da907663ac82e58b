from __future__ import annotations

import json
import random

import pytest

from spark.data.rows import Sample
from spark.rl.recycle import RecycleConfig, RecycleQueue, recycle, recycled_kinds
from spark.rl.rollout import Experience, RolloutGroup, score
from spark.tasks.prompts import pointwise_prompt, reflection_prompt
from spark.tasks.table import verifier_kind

QUESTION = "What is 2 + 3?"
CORRECT = "2 + 3 = 5, so the answer is \\boxed{5}."


def wrong(k: int) -> str:
    return f"2 + 3 = {6 + k}, so the answer is \\boxed{{{6 + k}}}."


def group(rewards: list[int], images: list[str] = (), responses: list[str] | None = None) -> RolloutGroup:
    if responses is None:
        responses = [CORRECT if r else wrong(i) for i, r in enumerate(rewards)]
    sample = Sample(prompt=f"{QUESTION}\n...", gold="5", images=list(images), meta={"question": QUESTION, "line": 7})
    return RolloutGroup(sample, responses, [float(r) for r in rewards])


def by_task(samples: list[Sample]) -> dict[str, list[Sample]]:
    tasks: dict[str, list[Sample]] = {"pointwise": [], "pairwise": [], "reflection": []}
    for s in samples:
        tasks[s.task].append(s)
    return tasks


UNBALANCED = RecycleConfig(balance_labels=False, content="answer")


def test_all_correct_group_gives_one_yes_pointwise():
    samples, stats = recycle([group([1, 1, 1, 1])], UNBALANCED, random.Random(0))
    assert len(samples) == 1
    (s,) = samples
    assert (s.task, s.gold) == ("pointwise", "Yes")
    assert QUESTION in s.prompt and "\n5\n" in s.prompt  # answer-based: the final answer on its own line
    assert s.meta["group"] == 0 and s.meta["content"] == "answer" and s.meta["line"] == 7
    assert stats["groups_all_correct"] == 1 and stats["pointwise_yes_frac"] == 1.0


def test_all_wrong_group_gives_no_pointwise_and_reflection():
    samples, stats = recycle([group([0, 0, 0])], UNBALANCED, random.Random(0))
    tasks = by_task(samples)
    assert [s.gold for s in tasks["pointwise"]] == ["No"]
    assert [s.gold for s in tasks["reflection"]] == ["5"]  # the gold answer, checked by the math verifier
    assert not tasks["pairwise"]
    assert stats["groups_all_wrong"] == 1 and stats["reflection"] == 1


def test_mixed_group_pairwise_label_follows_the_correct_rollout():
    config = RecycleConfig(mixed_pairwise_prob=1.0, reflection=False, content="answer")
    samples, stats = recycle([group([0, 1, 0, 1])] * 40, config, random.Random(0))
    assert len(samples) == 40 and all(s.task == "pairwise" for s in samples)
    for s in samples:
        a, b = s.meta["rollouts"]
        correct, shown_wrong = (a, b) if s.gold == "A" else (b, a)
        assert correct in (1, 3) and shown_wrong in (0, 2)
        assert f"({s.gold}) 5\n" in s.prompt  # the correct final answer sits at the labelled letter
    assert stats["pairwise_a_frac"] == 0.5


def test_mixed_group_pointwise_shows_correct_or_wrong():
    for correct_prob, label in [(1.0, "Yes"), (0.0, "No")]:
        config = RecycleConfig(
            mixed_pairwise_prob=0.0,
            mixed_pointwise_correct_prob=correct_prob,
            reflection=False,
            balance_labels=False,
        )
        samples, _ = recycle([group([1, 0])], config, random.Random(0))
        assert [(s.task, s.gold) for s in samples] == [("pointwise", label)]
        assert samples[0].meta["rollouts"] == [0 if label == "Yes" else 1]


def random_batch(rng: random.Random, num_groups: int = 64, n: int = 8) -> list[RolloutGroup]:
    """Groups whose accuracies are spread over [0, 1]."""
    accuracies = [rng.random() for _ in range(num_groups)]
    return [group([int(rng.random() < accuracy) for _ in range(n)]) for accuracy in accuracies]


def test_labels_balanced_and_judges_to_reflections_one_to_one():
    rng = random.Random(0)
    samples, stats = recycle(random_batch(rng), RecycleConfig(), rng)
    tasks = by_task(samples)
    yes = sum(s.gold == "Yes" for s in tasks["pointwise"])
    a = sum(s.gold == "A" for s in tasks["pairwise"])
    assert yes == len(tasks["pointwise"]) - yes > 0
    assert abs(a - (len(tasks["pairwise"]) - a)) <= 1 and tasks["pairwise"]
    num_judges = len(tasks["pointwise"]) + len(tasks["pairwise"])
    assert abs(num_judges - len(tasks["reflection"])) <= 1
    assert stats["pointwise_yes_frac"] == 0.5
    assert stats["pointwise"] + stats["pairwise"] + stats["reflection"] == len(samples)
    assert {s.meta["content"] for s in samples} == {"answer", "cot"}
    assert len({s.meta["variant"] for s in samples}) > 1


def test_default_templates_are_yes_no_and_neutral():
    samples, _ = recycle([group([1, 0, 0])] * 20, RecycleConfig(), random.Random(0))
    assert {s.meta["coding"] for s in samples if s.task == "pointwise"} == {"yesno"}
    assert {s.meta["says_wrong"] for s in samples if s.task == "reflection"} == {False}


def test_meta_names_the_template_each_sample_was_rendered_with():
    config = RecycleConfig(pointwise_ab_prob=0.5, reflection_says_wrong_prob=0.5, balance_labels=False)
    batch = [group([1, 1]), group([0, 0]), group([1, 0])] * 20
    samples, _ = recycle(batch, config, random.Random(0))
    assert {s.meta.get("coding") for s in samples if s.task == "pointwise"} == {"yesno", "ab"}
    assert {s.meta.get("says_wrong") for s in samples if s.task == "reflection"} == {False, True}
    for s in samples:
        if s.task == "pairwise":
            continue
        response = batch[s.meta["group"]].responses[s.meta["rollouts"][0]]
        cot = s.meta["content"] == "cot"
        answer = response if cot else response.split("boxed{")[1].split("}")[0]
        if s.task == "pointwise":
            assert s.prompt == pointwise_prompt(QUESTION, answer, cot=cot, variant=s.meta["variant"],
                                                coding=s.meta["coding"])
            verdicts = {"yesno": ("Yes", "No"), "ab": ("A", "B")}[s.meta["coding"]]
            assert s.gold == verdicts[response != CORRECT]
        else:
            assert s.prompt == reflection_prompt(QUESTION, answer, cot=cot, variant=s.meta["variant"],
                                                 says_wrong=s.meta["says_wrong"])


def test_ab_coded_pointwise_is_rewarded_for_the_right_letter():
    """Render -> a judge response boxing the right or the wrong verdict of its coding -> the trainer's reward."""
    config = RecycleConfig(pointwise_ab_prob=1.0, pairwise=False, reflection=False, balance_labels=False)
    samples, stats = recycle([group([1, 1]), group([0, 0])] * 4, config, random.Random(0))
    assert sorted(s.gold for s in samples) == ["A"] * 4 + ["B"] * 4 and stats["pointwise_yes_frac"] == 0.5
    assert {verifier_kind(s.task, s.gold) for s in samples} == {"pairwise"}  # read by letter
    experiences = [Experience(s, [], [], f"I checked it.\n\\boxed{{{verdict}}}", 0.0, False)
                   for s in samples for verdict in (s.gold, {"A": "B", "B": "A"}[s.gold])]
    score(experiences, "strict")
    assert [e.reward for e in experiences] == [1.0, 0.0] * len(samples)


def test_verifier_kind_of_each_task():
    assert [verifier_kind(task, gold) for task, gold in [
        ("policy", "5"), ("policy", "A"), ("reflection", "B"), ("pointwise", "Yes"), ("pointwise", "No"),
        ("pointwise", "A"), ("pointwise", "B"), ("pairwise", "A")]] == [
        "math", "math", "math", "pointwise", "pointwise", "pairwise", "pairwise", "pairwise"]


def test_ratio_subsamples_the_larger_kind():
    # 10 all-wrong groups: 10 No judges and 10 reflections; ratio 2 keeps 10 judges and 5 reflections
    config = RecycleConfig(balance_labels=False, judge_to_reflection=2.0)
    samples, stats = recycle([group([0, 0])] * 10, config, random.Random(0))
    tasks = by_task(samples)
    assert (len(tasks["pointwise"]), len(tasks["reflection"])) == (10, 5)
    assert stats["dropped_for_quota"] == 5
    # a kind with no samples does not remove the other: all-correct groups give no reflections
    samples, _ = recycle([group([1, 1])] * 3, config, random.Random(0))
    assert len(samples) == 3


def test_ratio_zero_keeps_both_kinds_capped_independently():
    # 10 all-wrong and 6 all-correct groups: 16 judges and 10 reflections
    batch = [group([0, 0])] * 10 + [group([1, 1])] * 6
    samples, stats = recycle(batch, RecycleConfig(balance_labels=False, judge_to_reflection=0), random.Random(0))
    tasks = by_task(samples)
    assert (len(tasks["pointwise"]), len(tasks["reflection"])) == (16, 10) and stats["dropped_for_quota"] == 0
    config = RecycleConfig(balance_labels=False, judge_to_reflection=0, max_per_kind=12)
    tasks = by_task(recycle(batch, config, random.Random(0))[0])
    assert (len(tasks["pointwise"]), len(tasks["reflection"])) == (12, 10)


def test_max_per_kind_caps_each_kind_then_keeps_the_ratio():
    rng = random.Random(0)
    samples, _ = recycle(random_batch(rng), RecycleConfig(max_per_kind=16), rng)
    tasks = by_task(samples)
    num_judges = len(tasks["pointwise"]) + len(tasks["pairwise"])
    # 16 judges, or 15 when only a Yes/No pair was left for the last slot
    assert len(tasks["reflection"]) == 16 and num_judges in (15, 16)
    assert sum(s.gold == "Yes" for s in tasks["pointwise"]) == sum(s.gold == "No" for s in tasks["pointwise"])


def test_image_travels_with_every_recycled_sample():
    rng = random.Random(0)
    groups = [group([1, 0, 0, 1], images=["img/0.png", "img/0b.png"]), group([0, 0], images=["img/1.png"]),
              group([1, 1])]
    samples, _ = recycle(groups, UNBALANCED, rng)
    assert samples
    for s in samples:
        assert s.images == groups[s.meta["group"]].sample.images


def test_content_kinds():
    samples, _ = recycle([group([1, 0])] * 4, RecycleConfig(content="cot"), random.Random(0))
    judges = [s for s in samples if s.task != "reflection"]
    assert judges and all(s.meta["content"] == "cot" for s in judges)
    assert all(CORRECT in s.prompt for s in judges)  # the whole response is shown


def test_answer_based_skips_rollouts_without_an_answer():
    no_answer = group([1, 0], responses=[CORRECT, "I am not sure."])
    config = RecycleConfig(
        content="answer", reflection_cot_prob=0.0, mixed_pairwise_prob=1.0, balance_labels=False
    )
    samples, stats = recycle([no_answer], config, random.Random(0))
    assert samples == [] and stats["skipped_no_answer"] == 2
    config = RecycleConfig(content="cot", reflection_cot_prob=1.0, mixed_pairwise_prob=1.0)
    samples, stats = recycle([no_answer], config, random.Random(0))
    assert sorted(s.task for s in samples) == ["pairwise", "reflection"] and stats["skipped_no_answer"] == 0
    assert all("I am not sure." in s.prompt for s in samples)


@pytest.mark.parametrize(
    "mode, tasks",
    [
        ("policy-only", set()),
        ("reward-only", {"pointwise", "pairwise"}),
        ("policy+reward", {"pointwise", "pairwise"}),
        ("spark", {"pointwise", "pairwise", "reflection"}),
    ],
)
def test_presets_turn_kinds_off(mode, tasks):
    rng = random.Random(0)
    rules = recycled_kinds(mode, RecycleConfig())
    samples = recycle(random_batch(rng), rules, rng)[0] if rules is not None else []
    assert {s.task for s in samples} == tasks


def test_pairwise_off_gives_pointwise_for_mixed_groups():
    config = RecycleConfig(pairwise=False, reflection=False, balance_labels=False)
    samples, _ = recycle([group([1, 0])] * 5, config, random.Random(0))
    assert [s.task for s in samples] == ["pointwise"] * 5


def test_same_seed_same_samples():
    batch = random_batch(random.Random(1))
    first, second = (recycle(batch, RecycleConfig(), random.Random(3)) for _ in range(2))
    assert first == second


def test_bad_input_is_an_error():
    policy = group([1, 0])
    judge = Sample("p", "Yes", task="pointwise", meta={"question": "q"})
    with pytest.raises(ValueError, match="group 0: only policy prompts"):
        recycle([RolloutGroup(judge, ["a"], [1.0])], RecycleConfig(), random.Random(0))
    with pytest.raises(ValueError, match="group 1: sample.meta has no 'question'"):
        recycle([policy, RolloutGroup(Sample("p", "5"), ["a"], [1.0])], RecycleConfig(), random.Random(0))
    with pytest.raises(ValueError, match="2 responses but 1 rewards"):
        recycle([RolloutGroup(policy.sample, ["a", "b"], [1.0])], RecycleConfig(), random.Random(0))
    with pytest.raises(ValueError, match="0 or 1"):
        recycle([RolloutGroup(policy.sample, ["a"], [0.5])], RecycleConfig(), random.Random(0))
    with pytest.raises(ValueError, match="content"):
        RecycleConfig(content="both-ish")
    for name, value in [("pointwise_ab_prob", 1.5), ("reflection_says_wrong_prob", -0.1), ("reflection_cot_prob", 2)]:
        with pytest.raises(ValueError, match=f"^RecycleConfig.{name} = {value} must be in \\[0, 1\\]$"):
            RecycleConfig(**{name: value})
    with pytest.raises(ValueError, match=r"^RecycleConfig\.judge_to_reflection = -1\.0 must be >= 0$"):
        RecycleConfig(judge_to_reflection=-1.0)


def test_queue_is_fifo_and_round_trips_through_state_dict():
    queue = RecycleQueue()
    samples, _ = recycle([group([1, 0, 0], images=["img/0.png"])] * 3, RecycleConfig(), random.Random(0))
    queue.push(samples)
    assert queue.pop(1) == samples[:1] and len(queue) == len(samples) - 1

    restored = RecycleQueue()
    restored.load_state_dict(json.loads(json.dumps(queue.state_dict())))
    assert len(restored) == len(queue)
    assert restored.pop(100) == queue.pop(100) == samples[1:]
    assert restored.pop(1) == [] and len(restored) == 0


def test_queue_state_dict_carries_embedded_images_as_json():
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    queue = RecycleQueue()
    samples, _ = recycle([group([1, 0, 0], images=[png, "img/1.png"])] * 2, RecycleConfig(), random.Random(0))
    queue.push(samples)
    restored = RecycleQueue()
    restored.load_state_dict(json.loads(json.dumps(queue.state_dict())))
    assert restored.pop(100) == samples and samples[0].images == [png, "img/1.png"]
