"""Model FLOPs and MFU: the work a step does by the model's arithmetic, not by what the kernels happened to run.

Forward FLOPs of one sequence of s tokens through the decoder:
    2 N s  +  4 L d * sum_{t=1..s} t  =  2 N s + 2 L d s (s + 1)
N: elements of the weight matrices the tokens multiply (every Linear, the lm_head; not the embedding table,
   which is a lookup, unless tied to the head; not norms or biases), L layers, d = heads x head_dim. Token t
   attends to t keys (causal): q.k and p.v are 2 d t FLOPs each per layer.
A trained token costs 3 forwards (forward + backward: 6 N + attention x 3); a rollout token one forward at
its position after the prompt (prefill included); the reference's forward one. The vision tower: per patch
2 x its block and patch-embedding weights, 2 x the merger's weights / merge^2 (the merger runs per merged
token), and 4 d_v x keys per block (a window's patches, or the whole frame in full-attention blocks).
MFU = achieved FLOP/s per GPU / the GPU's dense bf16 peak (`PEAK_TFLOPS`, or a configured value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spark.models.checkpoint import build_model
from spark.models.qwen2 import ModelConfig

# Dense bf16 tensor-core peaks, TFLOP/s (vendor datasheets: half the sparse figure), by CUDA device name
# (`by_device_name`): the SXM parts are named by the chip alone ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAK_TFLOPS = {"H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "H200 NVL": 835.0,
               "A100": 312.0}


def by_device_name(table: dict[str, float], device_name: str) -> float | None:
    """The entry of the longest key that occurs in `device_name` as whole words ("H100 PCIe" before "H100";
    "H200" not in "GH200"), or None."""
    keys = [key for key in table if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", device_name)]
    return table[max(keys, key=len)] if keys else None


def peak_tflops(device_name: str, configured: float = 0.0) -> float | None:
    """The configured peak when > 0, else the table's entry for the device name, else None."""
    if configured > 0:
        return configured
    return by_device_name(PEAK_TFLOPS, device_name)


def matmul_weights(module: nn.Module) -> int:
    """Elements of the Linear / Conv3d weights under `module`, each tensor once."""
    weights = {id(m.weight): m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv3d)}
    return sum(weights.values())


@dataclass(frozen=True)
class FlopModel:
    """The constants of the FLOP count of one model (see the module doc)."""

    matmul_params: int  # N of the decoder and head
    layers: int
    attention_width: int  # d = heads x head_dim
    vision_patch_params: int = 0  # vision blocks + patch embedding weights
    vision_merger_params: int = 0
    vision_width: int = 0
    vision_depth: int = 0
    window_patches: int = 0  # patches per attention window
    full_attention_blocks: int = 0
    merge_units: int = 4

    @classmethod
    def of(cls, model: nn.Module) -> FlopModel:
        cfg: ModelConfig = model.config
        # The embedding table is an nn.Embedding, never counted; tied to the head, it counts as the head.
        n = matmul_weights(model.model) + matmul_weights(model.lm_head)
        kwargs = {}
        visual = getattr(model, "visual", None)
        if visual is not None:
            vision = visual.config
            kwargs = dict(vision_patch_params=matmul_weights(visual.blocks) + matmul_weights(visual.patch_embed),
                          vision_merger_params=matmul_weights(visual.merger), vision_width=vision.hidden_size,
                          vision_depth=vision.depth, window_patches=(vision.window_units * vision.spatial_merge_size) ** 2,
                          full_attention_blocks=len(vision.fullatt_block_indexes),
                          merge_units=vision.spatial_merge_size**2)
        return cls(n, cfg.num_hidden_layers, cfg.num_attention_heads * cfg.head_dim, **kwargs)

    @classmethod
    def from_hf(cls, hf: dict) -> FlopModel:
        """From a config.json dict, built on the meta device (no memory)."""
        with torch.device("meta"):
            return cls.of(build_model(hf, Path("<flops>")))

    def sequence(self, length: int) -> float:
        """Forward FLOPs of one sequence of `length` tokens: 2 N s + 2 L d s (s + 1)."""
        return 2 * self.matmul_params * length + 2 * self.layers * self.attention_width * length * (length + 1)

    def shared(self, prompt: int, responses: list[int]) -> float:
        """Forward FLOPs of a prompt computed once for its responses: the prompt, plus for each response what its
        tokens add to the prompt's, sequence(p + r) - sequence(p). Both the update (a prompt packed once with its
        responses continuing it, spark.rl.packing) and the sampler (a prompt prefilled once for its n rollouts, each
        decoded token attending to all before it) cost this."""
        return self.sequence(prompt) + sum(self.sequence(prompt + r) - self.sequence(prompt) for r in responses)

    def images(self, patches: list[int]) -> float:
        """Forward FLOPs of the vision tower over images of these patch counts."""
        total = 0.0
        for p in patches:
            keys = (self.vision_depth - self.full_attention_blocks) * min(self.window_patches, p) \
                + self.full_attention_blocks * p
            total += 2 * self.vision_patch_params * p + 2 * self.vision_merger_params * p / self.merge_units \
                + 4 * self.vision_width * keys * p
        return total


def step_flops(model: FlopModel, *, updated: list[tuple[int, list[int]]], generated: list[tuple[int, list[int]]],
               reference: bool,
               ppo_epochs: int = 1, updated_patches: list[int] = (), generated_patches: list[int] = (),
               vision_trained: bool = True) -> dict[str, float]:
    """Model FLOPs of one step on one rank, by phase.

    updated / generated: (prompt length, response lengths) of each prompt trained / sampled once for its responses
    (spark.trainer.shared_prompts);
    rollout; *_patches: the patch count of each image in those sequences. The update is 3 forwards per
    epoch (plus one forward for the old log-probs when ppo_epochs > 1); the reference one forward.
    """
    text = sum(model.shared(prompt, responses) for prompt, responses in updated)
    vision = model.images(list(updated_patches))
    update_passes = 3 * ppo_epochs + (1 if ppo_epochs > 1 else 0)
    vision_passes = update_passes if vision_trained else ppo_epochs + (1 if ppo_epochs > 1 else 0)
    return {"update": update_passes * text + vision_passes * vision,
            "reference": (text + vision) if reference else 0.0,
            "rollout": sum(model.shared(prompt, new) for prompt, new in generated) + model.images(list(generated_patches))}


def throughput(flops: float, seconds: float, peak: float | None) -> dict[str, float]:
    """Achieved TFLOP/s of one GPU doing `flops` in `seconds`, and MFU against `peak` TFLOP/s (when known)."""
    achieved = flops / max(seconds, 1e-9) / 1e12
    return {"tflops": achieved, **({"mfu": achieved / peak} if peak else {})}


def flop_metrics(totals: dict[str, float], seconds: dict[str, float], gpus: int, peak: float | None
                 ) -> dict[str, float]:
    """Step metrics from `step_flops`' phases summed over the ranks (plus `trained_tokens`, `sampled_tokens`)
    and the phases' seconds (`time/update`, `time/reference`, `time/rollout`, `time/step`):
    FLOPs per trained / sampled token, and per phase TFLOP/s of one GPU (the ranks' FLOPs / gpus / seconds)
    and MFU against `peak`. The reference's forward counts with the update."""
    trained, sampled = max(totals["trained_tokens"], 1), max(totals["sampled_tokens"], 1)
    update = (totals["update"] + totals["reference"]) / gpus
    phases = {"update": (update, seconds.get("time/update", 0.0) + seconds.get("time/reference", 0.0)),
              "rollout": (totals["rollout"] / gpus, seconds.get("time/rollout", 0.0)),
              "step": (update + totals["rollout"] / gpus, seconds["time/step"])}
    metrics = {"flops_per_token/update": totals["update"] / trained,
               "flops_per_token/reference": totals["reference"] / trained,
               "flops_per_token/rollout": totals["rollout"] / sampled}
    for phase, (flops, phase_seconds) in phases.items():
        if phase_seconds > 0:
            metrics.update({f"{k}/{phase}": v for k, v in throughput(flops, phase_seconds, peak).items()})
    return metrics
