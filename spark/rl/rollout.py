"""Rollouts: verifiable prompts -> n sampled responses each, scored by the rule verifier.

Sampling goes through `ChatModel.complete`, the generation path that evaluation and test-time scaling use
too, so training and evaluation see the same prompt ids. Each response becomes an `Experience` that
carries its group id (the index of its prompt in the call): advantages are normalised within a group and
recycling reads a group's responses by that id, whatever the order of the list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from spark.data.images import ImageConfig, image_label
from spark.data.rows import Sample
from spark.distributed.groups import reduce_metrics
from spark.errors import DataError
from spark.generation.chat import ChatModel, ChatPrompt
from spark.generation.sampler import Sampling
from spark.tasks.table import TASKS, verifier_kind
from spark.verify import score_batch


@dataclass
class Experience:
    """One sampled response to one prompt, with what the update needs."""

    sample: Sample
    prompt_ids: list[int]
    response_ids: list[int]
    response: str
    reward: float
    truncated: bool  # stopped by max_new_tokens, not by a stop token
    advantage: float = 0.0
    shaping: float = 0.0  # added to the reward for the advantage only (overlong_penalty): recycling reads the verdict
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # the prompt's image inputs (ChatPrompt.images)
    group: int = 0  # responses to the same prompt share it
    sampler_logprobs: torch.Tensor | None = None  # [len(response_ids)] as the sampler computed them
    # [len(response_ids)], computed by the trainer before the update's first optimizer step (0 where masked):
    old_logprobs: torch.Tensor | None = None  # pi_old, the policy that sampled (the ratio's denominator)
    ref_logprobs: torch.Tensor | None = None  # the frozen reference (the KL term)


def task_image_configs(checkpoint: ImageConfig | None, *, min_pixels: int = 0, max_pixels: int = 0,
                       judge_max_pixels: int = 0) -> dict[str, ImageConfig | None]:
    """Each task's image preprocessing: the checkpoint's, with min_pixels / max_pixels for policy prompts
    and judge_max_pixels for the recycled (judge and reflection) ones; a setting of 0 changes nothing."""
    if checkpoint is None:
        return dict.fromkeys(TASKS)
    bounds = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    policy = dataclasses.replace(checkpoint, **{k: v for k, v in bounds.items() if v})
    recycled = dataclasses.replace(policy, max_pixels=judge_max_pixels or policy.max_pixels)
    return {task: policy if task == "policy" else recycled for task in TASKS}


class Rollouts:
    """Samples and scores responses to `Sample`s with one chat model (the trainer's sampling copy)."""

    def __init__(self, chat: ChatModel, image_configs: dict[str, ImageConfig | None], max_prompt_tokens: int):
        self.chat, self.image_configs, self.max_prompt_tokens = chat, image_configs, max_prompt_tokens

    def render(self, samples: list[Sample]) -> list[ChatPrompt]:
        """Chat-templated prompts with their image inputs, each image at its task's resolution; a prompt
        over `max_prompt_tokens` is a DataError naming its source row."""
        # One render per image resolution, so that a question's recycled prompts share its image decode.
        by_config: dict[ImageConfig | None, list[int]] = {}
        for i, sample in enumerate(samples):
            by_config.setdefault(self.image_configs[sample.task], []).append(i)
        prompts: list[ChatPrompt] = [None] * len(samples)
        for config, indices in by_config.items():
            rendered = self.chat.render([samples[i].prompt for i in indices], [samples[i].images for i in indices],
                                        image_config=config)
            for i, prompt in zip(indices, rendered):
                prompts[i] = prompt
        for sample, prompt in zip(samples, prompts):
            if len(prompt.ids) > self.max_prompt_tokens:
                raise DataError(sample.meta.get("source", "<recycled>"), None, "question",
                                f"prompt is {len(prompt.ids)} tokens, over data.max_prompt_tokens="
                                f"{self.max_prompt_tokens}")
        return prompts

    def prompt_errors(self, samples: list[Sample]) -> list[str]:
        """What is wrong with each sample that `render` refuses (over max_prompt_tokens, an unreadable
        image or one the processor cannot resize): the check of every training row before step 1."""
        errors = []
        for sample in samples:
            try:
                self.render([sample])
            except DataError as e:
                errors.append(str(e))
            except ValueError as e:  # e.g. an image's aspect ratio
                errors.append(f"{sample.meta.get('source', '<recycled>')}: {e}")
        return errors

    def sample(self, samples: list[Sample], sampling: Sampling, n: int, seed: int,
               group_ids: list[int] | None = None) -> list[Experience]:
        """n responses per sample (unscored: reward 0 until `score`); the group id of each sample is its
        `group_ids` entry (unique per sample: the trainer passes its position in the global batch), by default
        its index. Collective with a tensor-parallel sampler (`ChatModel.sample_group`): every member calls it,
        with samples or none."""
        prompts = self.render(samples)
        completions = self.chat.complete(prompts, sampling, n=n, seed=seed)
        group_ids = range(len(samples)) if group_ids is None else group_ids
        return [Experience(sample, prompt.ids, c.token_ids, c.text, 0.0, c.finish_reason == "length",
                           images=prompt.images, group=group, sampler_logprobs=c.logprobs)
                for group, sample, prompt, group_completions in zip(group_ids, samples, prompts, completions)
                for c in group_completions]


def score(experiences: list[Experience], answer_mode: str) -> None:
    """Set each experience's reward: the rule verifier on its response against its sample's gold, the
    final answer found as `answer_mode` says (spark.verify.ANSWER_MODES)."""
    rewards = score_batch([e.response for e in experiences], [e.sample.gold for e in experiences],
                          kinds=[verifier_kind(e.sample.task, e.sample.gold) for e in experiences], mode=answer_mode)
    for experience, reward in zip(experiences, rewards):
        experience.reward = reward


def overlong_penalty(length: int, max_new_tokens: int, buffer: int, penalty: float) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13), added to the reward:

    0                                          for length <= max_new_tokens - buffer
    -penalty * (length - (max_new_tokens - buffer)) / buffer   beyond, down to -penalty at max_new_tokens
    A response cannot pass max_new_tokens (the sampler stops it there). buffer = 0: off.
    """
    if not buffer:
        return 0.0
    return -penalty * max(0, length - (max_new_tokens - buffer)) / buffer


def varied(group: list[Experience]) -> bool:
    """Whether a group's verifier rewards differ: a group whose rewards are all equal has advantage 0 on every
    response and so no policy gradient (DAPO's dynamic sampling drops it)."""
    return len({e.reward for e in group}) > 1


def by_group(experiences: list[Experience]) -> list[list[Experience]]:
    """The experiences of each group, groups in id order, responses in their order within the list."""
    groups: dict[int, list[Experience]] = {}
    for experience in experiences:
        groups.setdefault(experience.group, []).append(experience)
    return [groups[g] for g in sorted(groups)]


@dataclass
class RolloutGroup:
    """One policy prompt and its rollouts. `sample.prompt` is the full user message (question + MATH_SUFFIX),
    so the raw question, which the judge and reflection templates quote, is `sample.meta["question"]`."""

    sample: Sample
    responses: list[str]
    rewards: list[float]  # 0/1 verifier scores, one per response



def rollout_groups(experiences: list[Experience]) -> list[RolloutGroup]:
    """The policy prompts' groups, as recycling takes them."""
    return [RolloutGroup(group[0].sample, [e.response for e in group], [e.reward for e in group])
            for group in by_group([e for e in experiences if e.sample.task == "policy"])]


def rollout_metrics(experiences: list[Experience]) -> dict[str, float]:
    """Over all ranks: reward per task (policy accuracy, judge accuracies, reflection success), response
    lengths, truncation rate, generated tokens, the mean overlong shaping."""
    sums = {"response_tokens": sum(len(e.response_ids) for e in experiences), "responses": len(experiences),
            "truncated": sum(e.truncated for e in experiences), "shaping": sum(e.shaping for e in experiences)}
    for task in TASKS:
        rewards = [e.reward for e in experiences if e.sample.task == task]
        sums[f"reward/{task}"], sums[f"count/{task}"] = sum(rewards), len(rewards)
    totals = reduce_metrics(sums)
    longest = reduce_metrics({"max": max((len(e.response_ids) for e in experiences), default=0)}, op="max")["max"]
    metrics = {f"reward/{task}": totals[f"reward/{task}"] / totals[f"count/{task}"]
               for task in TASKS if totals[f"count/{task}"]}
    responses = max(totals["responses"], 1)
    return {**metrics, "response_len/mean": totals["response_tokens"] / responses, "response_len/max": longest,
            "truncation_rate": totals["truncated"] / responses, "generated_tokens": totals["response_tokens"],
            "reward/overlong_shaping": totals["shaping"] / responses}


def heldout_metrics(rollouts: Rollouts, eval_sets: dict[str, list[Sample]], greedy: Sampling, answer_mode: str, *,
                    rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Greedy held-out policy accuracy (`eval_sets["policy"]`) and balanced pointwise judge accuracy (the mean
    of the Yes-row and No-row accuracies, `eval_sets["pointwise"]`), each rank on every world_size-th row."""
    tallies = {}
    for task, rows in eval_sets.items():
        experiences = rollouts.sample(rows[rank::world_size], greedy, 1, seed=0)
        score(experiences, answer_mode)
        for label in ("Yes", "No") if task == "pointwise" else ("",):
            mine = [e.reward for e in experiences if label in ("", e.sample.gold)]
            tallies[f"{task}{label}/right"], tallies[f"{task}{label}/rows"] = sum(mine), len(mine)
    totals = reduce_metrics(tallies)
    metrics = {}
    if eval_sets["policy"]:
        metrics["eval/policy_acc"] = totals["policy/right"] / totals["policy/rows"]
    if eval_sets["pointwise"]:
        metrics["eval/judge_acc"] = 0.5 * sum(totals[f"pointwise{label}/right"] /
                                              max(totals[f"pointwise{label}/rows"], 1) for label in ("Yes", "No"))
    return metrics


def first_of_each_task(experiences: list[Experience]) -> list[dict]:
    """One completion per task, as the text rows of samples.jsonl."""
    shown: dict[str, Experience] = {}
    for e in experiences:
        shown.setdefault(e.sample.task, e)
    return [{"task": e.sample.task, "prompt": e.sample.prompt, "images": [image_label(i) for i in e.sample.images],
             "response": e.response, "gold": e.sample.gold, "reward": e.reward} for e in shown.values()]
