"""Tensor-parallel sampling, in the way of gpt-fast's tp.py: the T ranks of a group each hold 1/T of the decoder's
weights and of its KV cache, and run every forward together.

How each weight is cut (`split_of`), rank t of the group holding piece t:
  * q/k/v (`qkv_proj`) and gate/up (`gate_up_proj`) by output rows, each fused part on its own: a rank computes
    H/T query heads, KV/T key/value heads (its KV cache holds only those) and I/T of the MLP's hidden units;
  * o_proj and down_proj by input columns: each rank's product is a partial sum of the full one, so the attention
    and the MLP end with one all-reduce each (a forward hook, as in gpt-fast; the model code is unchanged);
  * the embedding and the head by vocabulary rows: a token's embedding comes from the rank that holds its row (the
    others add zeros, one all-reduce), and the head's logits are gathered, so every rank samples from the same full
    logits with the same uniforms and draws the same token;
  * the norms, the rotary tables and the vision tower are replicated.
The sampler itself (spark.generation.sampler) runs unchanged on the sharded model; its KV cache takes its shape
from the attention layers, so it is 1/T of the unsharded one.

A sharded model is built on the meta device and filled piece by piece: `load_sharded_model` reads only this
rank's slices of the checkpoint's tensors (safetensors slices), and spark.distributed.resharding copies the
trainer's FSDP shards into it; neither ever holds a full copy of a split weight.

Collectives go through torch's functional collectives, which torch.compile traces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from spark.errors import UserError
from spark.models.checkpoint import Pieces, build_model, fill_weights, read_config, stored_tensors
from spark.models.qwen2 import ModelConfig

# torch 2.13 renamed all_gather_tensor (and warns at each call of the old name)
all_gather = getattr(funcol, "all_gather_single", funcol.all_gather_tensor)


@dataclass(frozen=True)
class TensorParallel:
    """This rank's tensor-parallel group: `size` consecutive ranks, this one at `rank` among them."""

    group: dist.ProcessGroup
    rank: int
    size: int


def tensor_parallel_group(size: int) -> TensorParallel:
    """Collective: cut the ranks into groups of `size` consecutive ones (the ranks of a node are consecutive, and
    the all-reduces of every layer need the node's links) and return this rank's."""
    world, rank = dist.get_world_size(), dist.get_rank()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world % size or local % size:
        raise UserError(f"tensor parallelism over {size} ranks: {size} must divide the {local} ranks of a node "
                        f"(and the {world} ranks in all)")
    groups = [dist.new_group(list(range(first, first + size))) for first in range(0, world, size)]  # collective
    return TensorParallel(groups[rank // size], rank % size, size)


def check_divisible(cfg: ModelConfig, size: int) -> None:
    """The heads and the MLP split in whole pieces over `size` ranks, or a UserError saying which does not."""
    for name in ("num_key_value_heads", "num_attention_heads", "intermediate_size"):
        if getattr(cfg, name) % size:
            raise UserError(f"tensor parallelism over {size} ranks: the model's {name} = {getattr(cfg, name)} is "
                            f"not divisible by {size}")


@dataclass(frozen=True)
class Split:
    """How a weight is cut: along `dim`, each of `parts` (sizes along dim, side by side in the tensor) in `size`
    pieces of ceil(part / size) (the last ones shorter when it does not divide: the vocabulary)."""

    dim: int
    parts: tuple[int, ...]
    size: int

    def ranges(self, t: int) -> list[tuple[int, int]]:
        """The [start, end) ranges along `dim` of the full tensor that piece t holds, in its order."""
        ranges, offset = [], 0
        for part in self.parts:
            piece = -(-part // self.size)
            ranges.append((offset + min(t * piece, part), offset + min((t + 1) * piece, part)))
            offset += part
        return ranges

    def local_shape(self, shape: torch.Size, t: int) -> torch.Size:
        rows = sum(end - start for start, end in self.ranges(t))
        return torch.Size([*shape[:self.dim], rows, *shape[self.dim + 1:]])


def split_of(name: str, cfg: ModelConfig, size: int) -> Split | None:
    """How the parameter `name` (our names, spark.models.qwen2) is cut over `size` ranks; None: replicated."""
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return Split(0, (cfg.vocab_size,), size)
    if not name.startswith("model.layers."):  # norms, the vision tower
        return None
    if ".self_attn.qkv_proj." in name:
        return Split(0, (q, kv, kv), size)
    if name.endswith(".self_attn.o_proj.weight"):
        return Split(1, (q,), size)
    if name.endswith(".mlp.gate_up_proj.weight"):
        return Split(0, (inter, inter), size)
    if name.endswith(".mlp.down_proj.weight"):
        return Split(1, (inter,), size)
    return None


class VocabParallelEmbedding(nn.Module):
    """The embedding rows [start, start + weight.shape[0]) of the vocabulary; the group's all-reduce adds the
    rows the other ranks hold (a token outside this rank's rows contributes zeros here)."""

    def __init__(self, weight: torch.Tensor, start: int, tp: TensorParallel):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.start, self.tp = start, tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        embeds = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[..., None], 0)
        return funcol.all_reduce(embeds, "sum", self.tp.group)


class VocabParallelHead(nn.Module):
    """The head's rows for this rank's part of the vocabulary; the logits of every rank gathered, so every rank
    returns the full [..., vocab] logits. (Not an nn.Linear: the sampler's prepacked CPU linears replace the
    forward of those.)"""

    def __init__(self, weight: torch.Tensor, vocab: int, tp: TensorParallel):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.vocab, self.tp = vocab, tp

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)
        piece = -(-self.vocab // self.tp.size)  # all-gather takes equal pieces: a short last one is padded
        logits = F.pad(logits, (0, piece - logits.shape[-1]))
        return all_gather(logits, logits.dim() - 1, self.tp.group)[..., :self.vocab]


def _all_reduce_output(tp: TensorParallel):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(output, "sum", tp.group)
    return hook


def apply_tensor_parallel(model: nn.Module, tp: TensorParallel) -> nn.Module:
    """Cut `model` (on the meta device: only shapes change) into this rank's shard: split parameters replaced by
    their piece's shape, heads per attention layer divided by T, the all-reduces and the vocabulary-parallel
    embedding and head in place. `FusedLinear.parts` keep the checkpoint's sizes (they name its tensors)."""
    cfg = model.config
    check_divisible(cfg, tp.size)
    for name, param in list(model.named_parameters()):
        split = split_of(name, cfg, tp.size)
        if split is not None and not name.startswith(("model.embed_tokens.", "lm_head.")):
            module_name, _, param_name = name.rpartition(".")
            shard = torch.empty(split.local_shape(param.shape, tp.rank), dtype=param.dtype, device=param.device)
            setattr(model.get_submodule(module_name), param_name, nn.Parameter(shard, requires_grad=False))
    for block in model.model.layers:
        block.self_attn.n_heads //= tp.size
        block.self_attn.n_kv //= tp.size
        block.self_attn.register_forward_hook(_all_reduce_output(tp))
        block.mlp.register_forward_hook(_all_reduce_output(tp))
    vocab = Split(0, (cfg.vocab_size,), tp.size)
    (start, end), = vocab.ranges(tp.rank)
    embed = model.model.embed_tokens.weight
    model.model.embed_tokens = VocabParallelEmbedding(embed.new_empty(end - start, cfg.hidden_size), start, tp)
    if cfg.tie_word_embeddings:
        model.lm_head = VocabParallelHead(model.model.embed_tokens.weight, cfg.vocab_size, tp)
    else:
        model.lm_head = VocabParallelHead(embed.new_empty(end - start, cfg.hidden_size), cfg.vocab_size, tp)
    model.tensor_parallel = tp
    return model


def sharded_skeleton(path: Path, tp: TensorParallel, *, device: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """This rank's shard of the checkpoint's model, allocated on `device` in `dtype` but not filled."""
    config = read_config(path)
    with torch.device("meta"):
        model = apply_tensor_parallel(build_model(config, path).to(dtype), tp)
    model.to_empty(device=device)
    if model.config.tie_word_embeddings:  # to_empty gave the two their own tensors
        model.lm_head.weight = model.model.embed_tokens.weight
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers(device)
    model.hf_config, model.source_dir = config, path
    return model.eval().requires_grad_(False)


@torch.no_grad()
def load_sharded_model(path: str | Path, tp: TensorParallel, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> nn.Module:
    """This rank's shard of a checkpoint directory's model, reading only its own slices of the split tensors
    (a safetensors slice is read without the rest of its tensor)."""
    path = Path(path)
    with torch.device("meta"):
        stored = stored_tensors(build_model(read_config(path), path), path)  # names and full shapes checked
    model = sharded_skeleton(path, tp, device=device, dtype=dtype)

    def pieces(name: str, local: torch.Tensor) -> Pieces:
        split = split_of(name, model.config, tp.size)
        if split is None:
            return local, 0, local.shape[0], [(0, local.shape[0])]
        return local, split.dim, sum(split.parts), split.ranges(tp.rank)

    fill_weights(model, stored, device, pieces)
    return model
