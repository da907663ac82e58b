"""Packing experiences into padding-free micro-batches for the update (no model, no process group).

A micro-batch is one stream of packed sequences. The responses to one prompt share it: the prompt is packed
once and each response (all its tokens but the last, which predicts nothing) as a continuation of it
(`Packing.continues`), so that a group of n responses computes its prompt once instead of n times. The
last prompt token predicts the first token of every response; `response_index` says which stream position
predicts each response token, and `targets` holds the response tokens themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spark.generation.chat import image_inputs
from spark.models import Packing
from spark.rl.losses import mask_truncated
from spark.rl.rollout import Experience


@dataclass
class MicroBatch:
    """Packed prompts and responses, and where the response tokens are predicted.

    input_ids: [1, N] the stream; response_index [S, R]: the stream position that predicts each response
    token; targets [S, R]: the response tokens; mask [S, R] is 1 on real ones (S responses, R the longest).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    packing: Packing
    response_index: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor  # [S, 1]
    weights: torch.Tensor  # [S, 1] task weight of each sequence
    sampler_logprobs: torch.Tensor  # [S, R] the sampler's log-probs of the response tokens (0 where unknown)
    old_logprobs: torch.Tensor  # [S, R] pi_old's (Experience.old_logprobs; 0 where unknown)
    ref_logprobs: torch.Tensor  # [S, R] the reference's (Experience.ref_logprobs; 0 where unknown)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw in stream order


@dataclass
class NoLossSequence:
    """A one-token sequence with no loss, for micro-batches that would otherwise skip part of the model:
    token 0 for a text model; for a VL model an `<|image_pad|>` and a blank image of one merge unit, so
    that every rank runs the vision tower in every micro-batch (FSDP's collectives must match)."""

    token: int
    images: dict[str, torch.Tensor]

    @classmethod
    def for_model(cls, model: nn.Module) -> NoLossSequence:
        visual = getattr(model, "visual", None)
        if visual is None:
            return cls(0, {})
        cfg, merge = visual.config, visual.config.spatial_merge_size
        blank = torch.zeros(merge**2, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2)
        return cls(model.image_token_id, {"pixel_values": blank, "image_grid_thw": torch.tensor([[1, merge, merge]])})


def shared_prompt(experience: Experience) -> tuple:
    """Responses with the same key share one packed prompt: the same group and the same prompt tokens."""
    return experience.group, tuple(experience.prompt_ids)


def group_by_prompt(experiences: list[Experience]) -> dict[tuple, list[Experience]]:
    """The experiences by the prompt they share (`shared_prompt`), in first-seen order."""
    groups: dict[tuple, list[Experience]] = {}
    for experience in experiences:
        groups.setdefault(shared_prompt(experience), []).append(experience)
    return groups


def split_by_tokens(experiences: list[Experience], budget: int) -> list[list[Experience]]:
    """Micro-batches of at most `budget` stream tokens, each prompt counted once per micro-batch with its
    responses after it. Groups go largest first and stay together; a group that does not fit in what is left
    goes on in the next micro-batch, where its prompt is packed again (a prompt and one response longer
    than the budget get a micro-batch of their own)."""
    groups = group_by_prompt(experiences)

    def size(group: list[Experience]) -> int:
        return len(group[0].prompt_ids) + sum(len(e.response_ids) - 1 for e in group)

    batches: list[list[Experience]] = []
    used, packed = 0, set()  # tokens in batches[-1], and the prompts it holds
    for key, group in sorted(groups.items(), key=lambda item: size(item[1]), reverse=True):
        for experience in sorted(group, key=lambda e: len(e.response_ids), reverse=True):
            cost = len(experience.response_ids) - 1 + (0 if key in packed else len(experience.prompt_ids))
            if not batches or used + cost > budget:
                batches.append([])
                used, packed = 0, set()
                cost = len(experience.prompt_ids) + len(experience.response_ids) - 1
            batches[-1].append(experience)
            used += cost
            packed.add(key)
    return batches


def pack(experiences: list[Experience], *, no_loss: NoLossSequence, task_weights: dict[str, float], drop_truncated: bool,
         device: torch.device | str = "cpu") -> MicroBatch:
    """One micro-batch of `experiences`; with none, the no-loss sequence alone (no loss). With
    `drop_truncated`, responses cut at max_new_tokens carry no loss."""
    if not experiences:
        zero = torch.zeros(1, 1, device=device)
        stream = torch.tensor([[no_loss.token]], device=device)
        return MicroBatch(stream, zero.long(), Packing.from_lengths([1], device), zero.long(), zero,
                          zero, zero, zero, zero, zero, image_inputs([no_loss.images], device))
    stream, lengths, continues, index, images = [], [], [], [], []
    prompts: dict[tuple, tuple[int, int]] = {}  # shared prompt -> (its sequence, the position of its last token)
    for e in experiences:
        key = shared_prompt(e)
        if key not in prompts:
            prompts[key] = (len(lengths), len(stream) + len(e.prompt_ids) - 1)
            stream += e.prompt_ids
            lengths.append(len(e.prompt_ids))
            continues.append(-1)
            images.append(e.images)
        prompt, last = prompts[key]
        own = e.response_ids[:-1]
        index.append([last, *range(len(stream), len(stream) + len(own))])
        if own:
            stream += own
            lengths.append(len(own))
            continues.append(prompt)
    if no_loss.images and not any(images):
        stream.append(no_loss.token)
        lengths.append(1)
        continues.append(-1)
        images = [no_loss.images]
    width = max(len(e.response_ids) for e in experiences)
    response_index = torch.tensor([i + [0] * (width - len(i)) for i in index], device=device)
    targets = torch.tensor([e.response_ids + [0] * (width - len(e.response_ids)) for e in experiences], device=device)
    mask = torch.tensor([[1.0] * len(i) + [0.0] * (width - len(i)) for i in index], device=device)
    if drop_truncated:
        mask = mask_truncated(mask, torch.tensor([e.truncated for e in experiences], device=device))
    return MicroBatch(
        torch.tensor([stream], device=device), targets, Packing.from_lengths(lengths, device, continues),
        response_index, mask,
        torch.tensor([[e.advantage] for e in experiences], device=device),
        torch.tensor([[task_weights[e.sample.task]] for e in experiences], device=device),
        *(per_token(experiences, name, width, device) for name in ("sampler_logprobs", "old_logprobs", "ref_logprobs")),
        image_inputs(images, device))


def per_token(experiences: list[Experience], name: str, width: int, device: torch.device | str) -> torch.Tensor:
    """The experiences' per-response-token tensors `name` as rows [S, width], 0 where an experience has none."""
    rows = torch.zeros(len(experiences), width, device=device)
    for row, e in enumerate(experiences):
        values = getattr(e, name)
        if values is not None:
            rows[row, :len(e.response_ids)] = values
    return rows


def experience_keys(experiences: list[Experience]) -> list[tuple[int, int]]:
    """(group id, position among the group's responses in the list) of each experience: unique in a batch,
    and the same on any number of ranks where the group ids are (the trainer's are positions in the global
    batch)."""
    seen: dict[int, int] = {}
    keys = []
    for e in experiences:
        keys.append((e.group, seen.get(e.group, 0)))
        seen[e.group] = keys[-1][1] + 1
    return keys


def mini_batches(keys: list[tuple[int, int]], size: int, passes: int, seed: int,
                 keep_groups: bool = True) -> list[list[tuple[int, int]]]:
    """The optimizer steps of one update, as lists of experience keys (`experience_keys`): `passes` passes over
    the batch, each in its own seeded random order, cut into mini-batches of `size` (the last one may be
    smaller). With `keep_groups` the order shuffles whole groups, whose responses stay together (a mini-batch then
    packs each prompt once, as verl keeps them), else single rollouts (as OpenRLHF shuffles). A batch that fits
    in one mini-batch (or `size` 0) keeps its order. Every rank calls it with the keys of the whole (global)
    batch and trains its own experiences of each mini-batch, so the mini-batches do not depend on the number of
    ranks."""
    keys = sorted(keys)
    if not size or size >= len(keys):
        return [keys for _ in range(passes)] if keys else []
    units: dict = {}
    for key in keys:
        units.setdefault(key[0] if keep_groups else key, []).append(key)
    units = list(units.values())
    batches = []
    for epoch in range(passes):
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        shuffled = [key for unit in order for key in units[unit]]
        batches += [shuffled[start:start + size] for start in range(0, len(shuffled), size)]
    return batches
