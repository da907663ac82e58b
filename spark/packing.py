"""Packing experiences into padding-free micro-batches for the update (no model, no process group).

A micro-batch is one stream of concatenated sequences (prompt + response, each predicting the next
token), with `Packing` telling attention where each sequence starts, and an index of the positions
that predict each response token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spark.chat import image_inputs
from spark.losses import mask_truncated
from spark.models import Packing
from spark.rollout import Experience


@dataclass
class MicroBatch:
    """Packed sequences (prompt + response) and where their response tokens sit.

    input_ids/targets: [1, N] (targets are input_ids shifted by one); response_index [S, R] indexes the
    flat [N] stream at the positions that predict each response token; mask [S, R] is 1 on real ones.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    packing: Packing
    response_index: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor  # [S, 1]
    weights: torch.Tensor  # [S, 1] task weight of each sequence
    sampler_logprobs: torch.Tensor  # [S, R] the sampler's log-probs of the response tokens (0 where unknown)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_grid_thw in stream order


@dataclass
class Filler:
    """A one-token sequence with no loss, for micro-batches that would otherwise skip part of the model:
    token 0 for a text model; for a VL model an `<|image_pad|>` and a blank image of one merge unit, so
    that every rank runs the vision tower in every micro-batch (FSDP's collectives must match)."""

    token: int
    images: dict[str, torch.Tensor]

    @classmethod
    def for_model(cls, model: nn.Module) -> Filler:
        visual = getattr(model, "visual", None)
        if visual is None:
            return cls(0, {})
        cfg, merge = visual.config, visual.config.spatial_merge_size
        blank = torch.zeros(merge**2, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2)
        return cls(model.image_token_id, {"pixel_values": blank, "image_grid_thw": torch.tensor([[1, merge, merge]])})


def packed_length(experience: Experience) -> int:
    """Stream positions a sequence takes: its tokens but the last, whose prediction is never used."""
    return len(experience.prompt_ids) + len(experience.response_ids) - 1


def split_by_tokens(experiences: list[Experience], budget: int) -> list[list[Experience]]:
    """Longest first, each micro-batch filled until the next sequence would pass `budget` tokens (a
    sequence longer than the budget gets a micro-batch of its own)."""
    batches: list[list[Experience]] = []
    used = 0  # tokens in batches[-1]
    for experience in sorted(experiences, key=packed_length, reverse=True):
        if not batches or used + packed_length(experience) > budget:
            batches.append([])
            used = 0
        batches[-1].append(experience)
        used += packed_length(experience)
    return batches


def pack(experiences: list[Experience], *, filler: Filler, task_weights: dict[str, float], drop_truncated: bool,
         device: torch.device | str = "cpu") -> MicroBatch:
    """One micro-batch of `experiences`; with none, the filler sequence alone (no loss). With
    `drop_truncated`, responses cut at max_new_tokens carry no loss."""
    if not experiences:
        zero = torch.zeros(1, 1, device=device)
        stream = torch.tensor([[filler.token]], device=device)
        return MicroBatch(stream, torch.zeros_like(stream), Packing.from_lengths([1], device), zero.long(), zero,
                          zero, zero, zero, image_inputs([filler.images], device))
    streams, targets, index, lengths = [], [], [], []
    for e in experiences:
        tokens = e.prompt_ids + e.response_ids
        first = len(streams) + len(e.prompt_ids) - 1  # the position that predicts the first response token
        index.append(list(range(first, first + len(e.response_ids))))
        streams += tokens[:-1]
        targets += tokens[1:]
        lengths.append(len(tokens) - 1)
    images = [e.images for e in experiences]
    if filler.images and not any(images):
        streams.append(filler.token)
        targets.append(0)
        lengths.append(1)
        images = [filler.images]
    width = max(map(len, index))
    response_index = torch.tensor([i + [0] * (width - len(i)) for i in index], device=device)
    mask = torch.tensor([[1.0] * len(i) + [0.0] * (width - len(i)) for i in index], device=device)
    if drop_truncated:
        mask = mask_truncated(mask, torch.tensor([e.truncated for e in experiences], device=device))
    sampler_logprobs = torch.zeros(len(experiences), width, device=device)
    for row, e in enumerate(experiences):
        if e.sampler_logprobs is not None:
            sampler_logprobs[row, :len(e.response_ids)] = e.sampler_logprobs
    return MicroBatch(
        torch.tensor([streams], device=device), torch.tensor([targets], device=device),
        Packing.from_lengths(lengths, device), response_index, mask,
        torch.tensor([[e.advantage] for e in experiences], device=device),
        torch.tensor([[task_weights[e.sample.task]] for e in experiences], device=device), sampler_logprobs,
        image_inputs(images, device))
