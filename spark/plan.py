"""Memory plan: the bytes one GPU holds during a SPARK run, from the model's config.json and the run's config.

    python -m spark.plan configs/vl7b.toml --gpus 8 --gpu-memory 80 [section.key=value ...]

prints one row per item, the total against the GPU's memory, what would make a config that does not fit
fit, and as its last line one JSON object (`fits`, `total_gb`, the items). GB here is 2**30 bytes.

What a GPU holds (FSDP2 over `gpus` ranks; e = bytes of the compute dtype: 2 with bf16 mixed precision, else 4):
  all the time   the sampler's copy of the weights (e per parameter; with rollout.tensor_parallel = T its pieces:
                 each split weight's 1/T, norms and the vision tower whole); the policy's fp32 parameter shards
                 and AdamW's two fp32 moments (4 and 8 bytes per trainable parameter / gpus; FSDP2 cuts each
                 tensor along dim 0 in ceil(rows / gpus) rows, so rank 0 holds the most); the reference's
                 shards when kl_coef > 0 (e per parameter: frozen, it has no fp32 master copy; resharded
                 after each pass, so its gathered root is transient);
  rollout        the KV cache, rows x (max_prompt_tokens + max_new_tokens) x layers x 2 x kv_heads x head_dim x e
                 (the sampler allocates it for each call's own longest prompt: this is the most it can be),
                 rows = min(rollout.batch_size, the sequences one rank samples in one call) (a tensor-parallel
                 group samples T ranks' rows with 1/T of the KV heads each: the same per rank) (with rollout.compile
                 it is kept between calls, so it is resident instead, its length rounded up to the sampler's
                 CACHE_QUANTUM); the prefill's transients: the embeddings of the call's distinct prompts (rows / n:
                 each prompt is prefilled once for its n rollouts) and one block's MLP over one prefill chunk
                 (at most the sampler's prefill_tokens tokens), and the vision tower over every distinct image;
  update         fp32 gradient shards; FSDP's gathered copies (the root unit - the final norm, and the embedding
                 and head when tied - and two of the other units: blocks, or the embedding, the head, the vision
                 patch embedding and merger, each a unit of its own; in e bytes) and the unsharded gradients of
                 the largest unit with their flat fp32 copy for its reduce-scatter (each unit's exist from its own
                 backward to its reduce-scatter, the root's until the end of the backward);
                 the activations autograd keeps for one micro-batch of loss.micro_batch_tokens tokens; the
                 log-prob chunk (the head's fp32 gradient, [logprob_chunk, vocab] fp32 blocks).
model.offload moves items between these (`offload_placement`): "optimizer" holds AdamW's state on the GPU during
the update only and frees the sampler's copy (and a compiled sampler's cache) for it; "all" also frees the
sampler's copy, and holds the parameter, gradient, AdamW and reference shards in host memory (printed apart).
total = all the time + max(rollout, update); it fits when total <= 0.95 x memory - 2 GB (CUDA context, NCCL
buffers, allocator fragmentation).

Activations per token of one decoder block, as autograd saves them (tests/test_plan.py measures them):
  two RMSNorms 2 (4h + e h + 4)  (the fp32 input, the rsqrt, the normalised input)
  attention    e (h + 2 kv) + e (h + kv) + e h + 4 heads  (q|k|v, rotated q|k, output, log-sum-exp)
  SwiGLU MLP   4 e I  (gate|up, silu(gate), their product)
with h the width, kv = kv_heads x head_dim and I the MLP width; a vision block keeps 8 h + 8 e h + 4 e I per
patch (q, k rotated in fp32 and cast back). With activation checkpointing a decoder block keeps only its input
(e h) and one block is recomputed at a time; the vision tower is checkpointed with the decoder. Sequences of a
vision-language run are assumed to hold one image of max_pixels each and IMAGE_TEXT_TOKENS other tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spark.cli import ArgumentParser, run_command
from spark.config import TrainConfig, load_config
from spark.data.images import ImageConfig
from spark.distributed.groups import own_units
from spark.errors import UserError
from spark.generation.sampler import CACHE_QUANTUM, SamplingParams
from spark.generation.tensor_parallel import split_of
from spark.models.checkpoint import CheckpointError, build_model, read_config
from spark.models.qwen2 import ModelConfig
from spark.models.qwen2_vl import VisionConfig

GB = 2**30
USABLE_FRACTION, RESERVED = 0.95, 2 * GB  # what a run can allocate of a GPU's memory
IMAGE_TEXT_TOKENS = 256  # other tokens of a sequence beside its image (question, response), for vision sizing

# config.json dimensions of the published checkpoints the configs name, for planning without the weights.
QWEN25_TEXT = {"vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False}
VISION_32_BLOCKS = {"depth": 32, "hidden_size": 1280, "num_heads": 16, "patch_size": 14, "spatial_merge_size": 2,
                    "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                    "in_chans": 3, "hidden_act": "silu"}
KNOWN_CONFIGS: dict[str, dict] = {
    "Qwen2.5-7B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], **QWEN25_TEXT, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
    "Qwen2.5-VL-7B-Instruct": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], **QWEN25_TEXT, "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "image_token_id": 151655, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {**VISION_32_BLOCKS, "intermediate_size": 3420, "out_hidden_size": 3584}},
    "Qwen2.5-VL-32B-Instruct": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], **QWEN25_TEXT, "hidden_size": 5120,
        "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8,
        "image_token_id": 151655, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {**VISION_32_BLOCKS, "intermediate_size": 3456, "out_hidden_size": 5120}},
}


def read_model_config(path: str | Path) -> tuple[dict, str]:
    """The checkpoint's config.json, or the known dimensions of a published checkpoint of that directory name;
    (config dict, where it came from)."""
    path = Path(path)
    if (path / "config.json").exists():
        return read_config(path), str(path / "config.json")
    if path.name in KNOWN_CONFIGS:
        return KNOWN_CONFIGS[path.name], f"spark.plan.KNOWN_CONFIGS['{path.name}'] (no {path / 'config.json'})"
    raise CheckpointError(f"{path / 'config.json'}: not found, and '{path.name}' is not one of the known "
                            f"checkpoints ({', '.join(KNOWN_CONFIGS)})")


@dataclass
class Shapes:
    """Parameter shapes of a model, by FSDP unit: 'root' or a block's prefix ('model.layers.3', 'visual.blocks.0')."""

    text: ModelConfig
    vision: VisionConfig | None
    params: dict[str, tuple[str, tuple[int, ...]]]  # name -> (unit, shape); tied weights once

    @classmethod
    def from_hf(cls, hf: dict) -> Shapes:
        with torch.device("meta"):  # shapes only: no memory, even for 32B
            model = build_model(hf, Path("<plan>"))
        prefixes = {id(module): name for name, module in model.named_modules()}
        own = {prefixes[id(module)] + ".": prefixes[id(module)] for module in own_units(model)}
        params = {name: (unit_of(name, own), tuple(p.shape)) for name, p in model.named_parameters()}
        return cls(ModelConfig.from_hf(hf), VisionConfig.from_hf(hf) if "vision_config" in hf else None, params)

    def count(self, unit: str | None = None) -> int:
        """Parameters in all, or in one unit."""
        return sum(math.prod(shape) for u, shape in self.params.values() if unit is None or u == unit)

    def shard_numel(self, world: int, *, trainable_only: bool = False, freeze_vision: bool = False) -> int:
        """Elements rank 0 holds: each tensor cut along dim 0 into ceil(rows / world)-row pieces."""
        return sum(math.ceil(shape[0] / world) * math.prod(shape[1:]) for name, (_, shape) in self.params.items()
                   if not (trainable_only and freeze_vision and name.startswith("visual.")))

    def unit_sizes(self) -> dict[str, int]:
        """Parameters per FSDP unit."""
        sizes: dict[str, int] = {}
        for unit, shape in self.params.values():
            sizes[unit] = sizes.get(unit, 0) + math.prod(shape)
        return sizes

    def largest_block(self) -> int:
        return max((n for unit, n in self.unit_sizes().items() if is_block(unit)), default=0)

    def largest_outside_blocks(self) -> int:
        """The largest unit that is not a block: the root, or one of spark.distributed.groups.own_units."""
        return max(n for unit, n in self.unit_sizes().items() if not is_block(unit))

    def sampler_numel(self, tensor_parallel: int) -> int:
        """Elements of the sampler's copy on rank 0 of a tensor-parallel group of `tensor_parallel` ranks: each
        split weight's piece (spark.generation.tensor_parallel.split_of), each replicated one whole."""
        total = 0
        for name, (_, shape) in self.params.items():
            split = split_of(name, self.text, tensor_parallel) if tensor_parallel > 1 else None
            total += math.prod(split.local_shape(torch.Size(shape), 0) if split else shape)
        return total

    def tensors(self, *, freeze_vision: bool = False) -> int:
        return sum(1 for name in self.params if not (freeze_vision and name.startswith("visual.")))


def unit_of(name: str, own: dict[str, str]) -> str:
    """A parameter's FSDP unit: its block, its own unit (`own`: prefix + "." -> unit), or the root."""
    parts = name.split(".")
    if parts[:2] in (["model", "layers"], ["visual", "blocks"]):
        return ".".join(parts[:3])
    return next((unit for prefix, unit in own.items() if name.startswith(prefix)), "root")


def is_block(unit: str) -> bool:
    return unit.startswith(("model.layers.", "visual.blocks."))


# ---- the items: pure functions of the sizes --------------------------------------------------------------

def kv_cache_bytes(cfg: ModelConfig, rows: int, length: int, element: int) -> int:
    """rows x length x layers x 2 (k, v) x kv_heads x head_dim x element bytes."""
    return rows * length * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * element


def block_activation_bytes(h: int, kv: int, inter: int, heads: int, element: int) -> int:
    """Bytes autograd keeps per token of one decoder block (module doc)."""
    norms = 2 * (4 * h + element * h + 4)
    attention = element * (h + 2 * kv) + element * (h + kv) + element * h + 4 * heads
    return norms + attention + 4 * element * inter


def vision_block_activation_bytes(vision: VisionConfig, element: int) -> int:
    """Bytes autograd keeps per patch of one vision block (module doc)."""
    h = vision.hidden_size
    return 8 * h + 8 + 8 * element * h + 4 * element * vision.intermediate_size + 4 * vision.num_heads


def decoder_activation_bytes(cfg: ModelConfig, tokens: int, element: int, checkpointing: bool) -> int:
    """A micro-batch of `tokens` packed tokens through the decoder: every block's saved tensors, or with
    activation checkpointing each block's input plus one block recomputed; plus the final norm, the hidden
    states and int64 targets the log-probs read, and the rotary tables."""
    h = cfg.hidden_size
    block = block_activation_bytes(h, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size,
                                   cfg.num_attention_heads, element)
    layers = cfg.num_hidden_layers * element * h + block if checkpointing else cfg.num_hidden_layers * block
    outside = 4 * h + 2 * element * h + 4 + 8 + 2 * element * cfg.head_dim
    return tokens * (layers + outside)


def vision_activation_bytes(vision: VisionConfig, patches: int, element: int, checkpointing: bool) -> int:
    """The vision tower's saved tensors for `patches` patches: the blocks, the patch embedding's input pixels,
    the fp32 rotary tables and the merger (its norm, then e h per patch before and after its GELU)."""
    h = vision.hidden_size
    block = vision_block_activation_bytes(vision, element)
    blocks = vision.depth * element * h + block if checkpointing else vision.depth * block
    pixels = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * element
    return patches * (blocks + pixels + 2 * 4 * vision.head_dim + 4 * h + 4 + 3 * element * h)


def logprob_chunk_bytes(cfg: ModelConfig, chunk: int, element: int) -> int:
    """spark.models.logprobs.token_logprobs (GEMMs in the head's dtype): forward holds a [chunk, V] block of the
    GEMM's output and three fp32 ones (logits, softmax, their product); backward the head's fp32 gradient (and,
    in bf16, a chunk's [V, H] gradient before it is added in), two fp32 blocks and the gradient of the logits in
    the head's dtype."""
    head32, block32, block = cfg.vocab_size * cfg.hidden_size * 4, chunk * cfg.vocab_size * 4, chunk * cfg.vocab_size * element
    gemm = cfg.vocab_size * cfg.hidden_size * element if element < 4 else 0
    return max(block + 3 * block32, head32 + gemm + 2 * block32 + block)


def prefill_bytes(cfg: ModelConfig, prompts: int, prompt_tokens: int, chunk_tokens: int, element: int) -> int:
    """The sampler's prefill in inference mode: the embeddings of `prompts` distinct prompts of `prompt_tokens`
    tokens, then one chunk of at most max(chunk_tokens, prompts) tokens at a time through one block at a time:
    at most its MLP (gate|up, silu, product) and a few hidden-state tensors per token."""
    tokens = prompts * prompt_tokens
    chunk = min(tokens, max(chunk_tokens, prompts))
    return tokens * element * cfg.hidden_size + chunk * element * (4 * cfg.intermediate_size + 4 * cfg.hidden_size)


def vision_prefill_bytes(vision: VisionConfig, patches: int, element: int) -> int:
    return patches * element * (4 * vision.intermediate_size + 6 * vision.hidden_size)


# ---- the plan -----------------------------------------------------------------------------------------

ROLLOUT_ITEMS = ("KV cache", "sampler prefill")
UPDATE_ITEMS = ("gradient shards", "gathered parameters", "unsharded gradients", "activations",
                "log-prob chunk")


def phase_of(item: str) -> str:
    """Where an item is held without model.offload: "resident", "rollout" or "update"."""
    return "rollout" if item in ROLLOUT_ITEMS else "update" if item in UPDATE_ITEMS else "resident"


@dataclass
class Plan:
    gpus: int
    gpu_memory: float  # bytes
    items: dict[str, int]  # bytes per GPU
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    phases: dict[str, str] = field(default_factory=dict)  # item -> resident | rollout | update (phase_of by default)
    offload: str = "none"  # model.offload
    host: int = 0  # bytes of host memory per rank that model.offload fills
    checkpoint_max_pixels: int = ImageConfig.max_pixels  # the checkpoint's image bound, when the config sets none
    notes: list[str] = field(default_factory=list)

    def phase(self, item: str) -> str:
        return self.phases.get(item, phase_of(item))

    def during(self, phase: str) -> int:
        return sum(v for k, v in self.items.items() if self.phase(k) == phase)

    @property
    def rollout(self) -> int:
        return self.during("rollout")

    @property
    def update(self) -> int:
        return self.during("update")

    @property
    def resident(self) -> int:
        return self.during("resident")

    @property
    def total(self) -> int:
        return self.resident + max(self.rollout, self.update)

    @property
    def usable(self) -> float:
        return USABLE_FRACTION * self.gpu_memory - RESERVED

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def table(self) -> str:
        rows = [f"{'item (per GPU)':<34}{'GB':>9}  phase"]
        for name, value in self.items.items():
            rows.append(f"{name:<34}{value / GB:>9.2f}  {self.phase(name)}")
        rows.append(f"{'  activations, no checkpointing':<34}{self.activations_without_checkpointing / GB:>9.2f}")
        rows.append(f"{'  activations, checkpointing':<34}{self.activations_with_checkpointing / GB:>9.2f}")
        rows.append(f"{'total':<34}{self.total / GB:>9.2f}  resident + max(rollout, update)")
        rows.append(f"{'usable of ' + format(self.gpu_memory / GB, '.0f') + ' GB':<34}{self.usable / GB:>9.2f}  "
                    + ("fits" if self.fits else "DOES NOT FIT"))
        if self.host:
            rows.append(f"{'host memory per rank':<34}{self.host / GB:>9.2f}  model.offload = {self.offload}")
        return "\n".join(rows + [f"note: {n}" for n in self.notes])

    def summary(self) -> dict:
        return {"fits": self.fits, "total_gb": round(self.total / GB, 2), "usable_gb": round(self.usable / GB, 2),
                "gpus": self.gpus, "gpu_memory_gb": round(self.gpu_memory / GB, 1), "offload": self.offload,
                "host_gb": round(self.host / GB, 2), "items_gb": {k: round(v / GB, 3) for k, v in self.items.items()}}


def rollout_rows(config: TrainConfig, gpus: int) -> int:
    """Sequences in one sampler call on one rank: the rank's prompts x n, with up to two recycled prompts
    (a judge and a reflection) per policy prompt, in the same call (`mixed`) or a call of their own."""
    per_rank = math.ceil(config.data.prompts_per_step / gpus) * config.rollout.n
    recycled = 0 if config.spark.mode == "policy-only" else 2
    calls = per_rank * (1 + recycled) if config.spark.schedule == "mixed" else per_rank * max(1, recycled)
    return min(config.rollout.batch_size, calls)


def image_patches(config: TrainConfig, vision: VisionConfig, checkpoint_max_pixels: int) -> int:
    """Patches of the largest image a prompt carries (policy or judge resolution)."""
    max_pixels = max(config.data.max_pixels or checkpoint_max_pixels, config.data.judge_max_pixels)
    return max_pixels // vision.patch_size**2


def plan_for(config: TrainConfig, model_config: dict, world_size: int, gpu_memory_gb: float, *,
             checkpoint_max_pixels: int = ImageConfig.max_pixels) -> Plan:
    """The memory plan of `config` for the model of `model_config` (a config.json dict) on `world_size`
    GPUs of `gpu_memory_gb` (2**30 bytes) each."""
    shapes = Shapes.from_hf(model_config)
    cfg, vision = shapes.text, shapes.vision
    element = 2 if config.model.mixed_precision else 4
    freeze = config.model.freeze_vision and vision is not None
    loss, rollout = config.loss, config.rollout
    rows = rollout_rows(config, world_size)
    length = config.data.max_prompt_tokens + rollout.max_new_tokens
    if rollout.compile:  # the sampler's static cache, rounded up and kept between calls
        length = -(-length // CACHE_QUANTUM) * CACHE_QUANTUM
    prompts = -(-rows // rollout.n)  # distinct prompts per call: the n rollouts of a prompt share its prefill
    trainable_shard = shapes.shard_numel(world_size, trainable_only=True, freeze_vision=freeze)
    root, outside = shapes.count(unit="root"), shapes.largest_outside_blocks()
    items = {
        "sampler weights": shapes.sampler_numel(rollout.tensor_parallel) * element,
        "parameter shards": shapes.shard_numel(world_size) * 4,
        "AdamW state": 2 * trainable_shard * 4 + 4 * shapes.tensors(freeze_vision=freeze),
        "reference shards": shapes.shard_numel(world_size) * element if loss.kl_coef > 0 else 0,
        "KV cache": 0 if rollout.compile else kv_cache_bytes(cfg, rows, length, element),
        "sampler prefill": prefill_bytes(cfg, prompts, config.data.max_prompt_tokens,
                                         SamplingParams.prefill_tokens, element),
        "gradient shards": trainable_shard * 4,
        # the root stays gathered from forward to backward; a block or an own unit and the next one prefetched
        "gathered parameters": (root + 2 * max(shapes.largest_block(), outside)) * element,
        # the largest unit's gradients (each unit's exist from its backward to its reduce-scatter, the root's to
        # the end of the backward), and their flat fp32 copy for it (benchmarks/root_gradients.py measures both)
        "unsharded gradients": max(shapes.largest_block(), outside) * (element + 4),
    }
    tokens = loss.micro_batch_tokens
    activations = {ac: decoder_activation_bytes(cfg, tokens, element, ac) for ac in (False, True)}
    notes = []
    if vision is not None:
        patches = image_patches(config, vision, checkpoint_max_pixels)
        image_tokens = patches // vision.spatial_merge_size**2
        items["sampler prefill"] += vision_prefill_bytes(vision, prompts * patches, element)
        notes.append(f"{patches} patches ({image_tokens} image tokens) per image; the sampler encodes each "
                     f"prompt's image once, {prompts} prompts ({rows} rows) per call")
        if not freeze:
            batch_patches = tokens * image_tokens // (image_tokens + IMAGE_TEXT_TOKENS) * vision.spatial_merge_size**2
            for ac in (False, True):
                activations[ac] += vision_activation_bytes(vision, batch_patches, element, ac)
    if rollout.compile:
        items["static KV cache"] = kv_cache_bytes(cfg, rows, length, element)
    items["activations"] = activations[config.model.activation_checkpointing]
    items["log-prob chunk"] = logprob_chunk_bytes(cfg, loss.logprob_chunk, element)
    notes.append(f"{shapes.count() / 1e9:.2f}B parameters; KV cache of {rows} rows x {length} tokens")
    phases, host = offload_placement(items, config.model.offload, shapes, world_size)
    return Plan(world_size, gpu_memory_gb * GB, items, activations[False], activations[True], phases,
                config.model.offload, host, checkpoint_max_pixels, notes)


def offload_placement(items: dict[str, int], offload: str, shapes: Shapes, world_size: int
                      ) -> tuple[dict[str, str], int]:
    """What model.offload changes (spark.distributed.offload.PhaseMemory): with "optimizer" or "all" the sampler's
    weights and the compiled sampler's kept cache are freed during the update (rollout items); "optimizer" holds
    AdamW's state on the GPU during the update only; "all" holds the parameter, gradient, AdamW and reference
    shards in host memory (their items become 0 here) and copies each unit's shard in for its all-gather (two at
    a time, fp32, added to the gathered parameters). Changes `items` in place; (phases, host bytes per rank)."""
    if offload == "none":
        return {}, 0
    phases = {"sampler weights": "rollout", "static KV cache": "rollout"}
    if offload == "optimizer":
        return {**phases, "AdamW state": "update"}, items["AdamW state"]
    moved = ("parameter shards", "AdamW state", "gradient shards", "reference shards")
    host = sum(items[k] for k in moved)
    items.update(dict.fromkeys(moved, 0))
    largest_unit = max(shapes.largest_block(), shapes.largest_outside_blocks())
    items["gathered parameters"] += 2 * math.ceil(largest_unit / world_size) * 4
    return phases, host


# ---- what would make it fit ----------------------------------------------------------------------------

def with_setting(config: TrainConfig, key: str, value) -> TrainConfig:
    """A copy of `config` with `section.key` set."""
    section, name = key.split(".")
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: value})})


GPUS_PER_NODE = 8  # the node size fitting_settings assumes for a tensor-parallel sampler (it may not span nodes)


def candidate_changes(config: TrainConfig, vision: bool, tensor_parallel: tuple[int, ...] = ()
                      ) -> list[tuple[str, object]]:
    """Settings that lower the plan, gentlest first: checkpointing, AdamW's state in host memory between updates
    (a copy each way per update), smaller sampler calls, the sampler cut over `tensor_parallel` ranks (two
    all-reduces per layer), smaller micro-batches, smaller log-prob chunks, all the training state
    in host memory (the optimizer step on the CPU), then the ones that change what is trained (frozen vision, no
    KL)."""
    changes: list[tuple[str, object]] = []
    if not config.model.activation_checkpointing:
        changes.append(("model.activation_checkpointing", True))
    if config.model.offload == "none":
        changes.append(("model.offload", "optimizer"))
    changes += [("rollout.batch_size", size) for size in (128, 64, 32, 16, 8) if size < config.rollout.batch_size]
    changes += [("rollout.tensor_parallel", t) for t in tensor_parallel if t > config.rollout.tensor_parallel]
    changes += [("loss.micro_batch_tokens", n) for n in (8192, 4096, 2048) if n < config.loss.micro_batch_tokens]
    changes += [("loss.logprob_chunk", n) for n in (1024, 512, 256) if n < config.loss.logprob_chunk]
    if config.model.offload != "all":
        changes.append(("model.offload", "all"))
    if vision and not config.model.freeze_vision:
        changes.append(("model.freeze_vision", True))
    if config.loss.kl_coef > 0:
        changes.append(("loss.kl_coef", 0.0))
    return changes


def fitting_settings(config: TrainConfig, model_config: dict, world_size: int, gpu_memory_gb: float,
                     **plan_options) -> list[str] | None:
    """`section.key=value` settings that make the plan fit, each change taken in `candidate_changes`' order
    until it does (a later value of the same key replaces an earlier one), then each earlier one left out again
    when the plan fits without it (smaller batches that a later offload made unneeded); [] when it fits already,
    None when even all of them together do not fit."""
    fits = lambda c: plan_for(c, model_config, world_size, gpu_memory_gb, **plan_options).fits
    if fits(config):
        return []
    original, chosen, last = config, {}, None
    text = ModelConfig.from_hf(model_config)
    node = min(world_size, GPUS_PER_NODE)
    sizes = tuple(t for t in (2, 4, 8) if node % t == 0 and text.num_key_value_heads % t == 0)
    for last, value in candidate_changes(config, "vision_config" in model_config, sizes):
        config = with_setting(config, last, value)
        chosen[last] = value
        if fits(config):
            break
    else:
        return None
    for key in [k for k in chosen if k != last]:  # the last change made it fit: it stays
        section, name = key.split(".")
        without = with_setting(config, key, getattr(getattr(original, section), name))
        if fits(without):
            config = without
            del chosen[key]
    return [f"{k}={json.dumps(v)}" for k, v in chosen.items()]


def plan_checkpoint(config: TrainConfig, gpus: int, gpu_memory_gb: float) -> tuple[Plan, dict, str]:
    """The plan of `config` for the checkpoint at config.model.path (its config.json and image preprocessing,
    or the known sizes of its name); (plan, its config.json dict, where the sizes came from)."""
    model_config, source = read_model_config(config.model.path)
    preprocessor = Path(config.model.path) / "preprocessor_config.json"
    max_pixels = ImageConfig.from_pretrained(config.model.path).max_pixels if preprocessor.exists() \
        else ImageConfig.max_pixels
    plan = plan_for(config, model_config, gpus, gpu_memory_gb, checkpoint_max_pixels=max_pixels)
    return plan, model_config, source


def refusal(plan: Plan, config: TrainConfig, model_config: dict) -> tuple[str, list[str] | None]:
    """Why a plan that does not fit does not, and the settings that would make it fit (`fitting_settings`)."""
    fix = fitting_settings(config, model_config, plan.gpus, plan.gpu_memory / GB,
                           checkpoint_max_pixels=plan.checkpoint_max_pixels)
    needs = f"{config.model.path} needs {plan.total / GB:.1f} GB per GPU, {plan.usable / GB:.1f} GB are usable"
    return needs + (f"; it fits with: {' '.join(fix)}" if fix is not None else
                    f"; no setting of the config makes it fit on {plan.gpus} GPUs (README, 'Memory plan')"), fix


def check_memory(config: TrainConfig, world_size: int, gpu_memory_bytes: int, *, show: bool = True) -> None:
    """The trainer's start on GPU: print this run's plan; a config that cannot fit stops here, naming the
    settings that would make it fit (with run.memory_check = "warn" it only says so)."""
    plan, model_config, _ = plan_checkpoint(config, world_size, gpu_memory_bytes / GB)
    if show:
        print(plan.table(), flush=True)
    if plan.fits:
        return
    message, _ = refusal(plan, config, model_config)
    if config.run.memory_check == "refuse":
        raise UserError(f"{message}; run.memory_check=warn starts it anyway")
    if show:
        print(f"warning: {message}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m spark.plan", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB (2**30 bytes) per GPU")
    args = parser.parse_intermixed_args(argv)
    if args.gpus < 1 or not args.gpu_memory > 0:
        parser.error(f"--gpus {args.gpus} must be >= 1 and --gpu-memory {args.gpu_memory:g} > 0")
    config = load_config(TrainConfig, args.config, args.overrides)
    plan, model_config, source = plan_checkpoint(config, args.gpus, args.gpu_memory)
    print(f"{args.config} on {args.gpus} x {args.gpu_memory:g} GB; model sizes from {source}")
    print(plan.table())
    summary = plan.summary()
    if not plan.fits:
        message, summary["fitting_settings"] = refusal(plan, config, model_config)
        print(message)
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
