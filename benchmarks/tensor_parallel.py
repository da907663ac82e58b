"""The tensor-parallel sampler's cost on CPU: 2 gloo ranks sampling their prompts with T = 1 (each rank its own
prompts on a full copy) and T = 2 (the group samples the union of both ranks' prompts, each rank holding half of
every split weight and of the KV cache's heads), and the weight copy from the policy's FSDP shards before a
rollout (spark.distributed.groups.copy_full_weights against spark.distributed.resharding.copy_to_tensor_parallel).

The model of benchmarks/sampler.py (a ~27M-parameter Qwen2: hidden 512, 8 layers, 8 heads / 2 KV heads, vocab
8192, fp32, random weights); each rank has 8 prompts of 32-96 tokens and samples exactly 128 new tokens per row at
temperature 1, seeded per rank, so both settings draw the same tokens (checked). Times are the slower rank's, the
median of several runs after a warm-up; memory is counted from the tensors (parameters, the KV cache's shape, and
the largest tensor an op makes during a weight copy).
On CPU, T = 2 is expected to be slower: each rank does the same multiply-adds as with T = 1 (half of each weight
for twice the rows) plus two all-reduces per layer and a gather of the logits per step. The point is memory.

Run: `OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 benchmarks/tensor_parallel.py [--runs 3]`.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark.distributed.groups import (  # noqa: E402
    close_distributed,
    copy_full_weights,
    init_distributed,
    shard_model,
)
from spark.distributed.resharding import copy_to_tensor_parallel  # noqa: E402
from spark.generation.sampler import SamplingParams, cache_heads, generate  # noqa: E402
from spark.generation.tensor_parallel import load_sharded_model, tensor_parallel_group  # noqa: E402
from spark.models import load_model  # noqa: E402

PROMPTS_PER_RANK, MIN_PROMPT, MAX_PROMPT, NEW_TOKENS = 8, 32, 96, 128
CONFIG = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
              max_position_embeddings=4096, eos_token_id=None, pad_token_id=None, bos_token_id=None)


def prompts_of(rank: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(rank)
    lengths = torch.randint(MIN_PROMPT, MAX_PROMPT + 1, (PROMPTS_PER_RANK,), generator=g)
    return [torch.randint(0, CONFIG["vocab_size"], (int(n),), generator=g).tolist() for n in lengths]


def slowest(seconds: float) -> float:
    value = torch.tensor(seconds)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def timed(fn, runs: int) -> tuple[float, object]:
    """Median over `runs` of the slower rank's seconds for fn(), after one warm-up call; fn's last result."""
    result = fn()
    seconds = []
    for _ in range(runs):
        dist.barrier()
        start = time.perf_counter()
        result = fn()
        seconds.append(slowest(time.perf_counter() - start))
    return statistics.median(seconds), result


class LargestTemporary(TorchDispatchMode):
    """The most bytes of any plain tensor an op makes while it is on (a DTensor op shows again as its local op)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if type(tensor) is torch.Tensor:
                self.bytes = max(self.bytes, tensor.numel() * tensor.element_size())
        return out


def largest_temporary_megabytes(fn) -> float:
    with LargestTemporary() as largest:
        fn()
    return largest.bytes / 2**20


def megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def kv_cache_megabytes(model, rows: int, length: int) -> float:
    """The bytes of the sampler's KV cache for `rows` rows of `length` positions (its allocation's shape)."""
    heads, dim = cache_heads(model)
    return 2 * model.config.num_hidden_layers * rows * length * heads * dim * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    world = init_distributed()
    folder = [tempfile.mkdtemp() if world.is_main else None]
    dist.broadcast_object_list(folder)  # rank 0's folder, which every rank reads
    path = Path(folder[0]) / "model"
    if world.is_main:
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**CONFIG)).float().save_pretrained(path)
    dist.barrier()
    tp = tensor_parallel_group(2)
    full, shard = load_model(path), load_sharded_model(path, tp)
    policy = load_model(path, prepare=functools.partial(shard_model, mixed_precision=False))
    dist.barrier()
    if world.is_main:
        shutil.rmtree(folder[0])

    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0)
    everyone = [prompts_of(rank) for rank in range(world.size)]
    mine, seed = everyone[world.rank], 1000 + world.rank
    union = [prompt for prompts in everyone for prompt in prompts]
    seeds = [(1000 + rank, PROMPTS_PER_RANK) for rank in range(world.size)]
    rows = slice(world.rank * PROMPTS_PER_RANK, (world.rank + 1) * PROMPTS_PER_RANK)

    alone_s, alone = timed(lambda: generate(full, mine, params, seed=seed), args.runs)
    together_s, together = timed(lambda: generate(shard, union, params, seed=seeds), args.runs)
    same = together.tokens[rows] == alone.tokens
    with torch.no_grad():
        copy_full_s, _ = timed(lambda: copy_full_weights(policy, full), args.runs)
        copy_tp_s, _ = timed(lambda: copy_to_tensor_parallel(policy, shard, tp), args.runs)
        copy_full_mb = largest_temporary_megabytes(lambda: copy_full_weights(policy, full))
        copy_tp_mb = largest_temporary_megabytes(lambda: copy_to_tensor_parallel(policy, shard, tp))
    length = MAX_PROMPT + NEW_TOKENS
    tokens = world.size * PROMPTS_PER_RANK * NEW_TOKENS
    result = {
        "ranks": world.size, "threads_per_rank": torch.get_num_threads(),
        "same_tokens_on_every_rank": bool(min(dist_all(same))),
        "t1": {"rollout_s": round(alone_s, 3), "tokens_per_s": round(tokens / alone_s, 1),
               "weights_mb_per_rank": round(megabytes(full.parameters()), 1),
               "kv_cache_mb_per_rank": round(kv_cache_megabytes(full, PROMPTS_PER_RANK, length), 1),
               "weight_copy_s": round(copy_full_s, 3), "weight_copy_largest_temporary_mb": round(copy_full_mb, 1)},
        "t2": {"rollout_s": round(together_s, 3), "tokens_per_s": round(tokens / together_s, 1),
               "weights_mb_per_rank": round(megabytes(shard.parameters()), 1),
               "kv_cache_mb_per_rank": round(kv_cache_megabytes(shard, world.size * PROMPTS_PER_RANK, length), 1),
               "weight_copy_s": round(copy_tp_s, 3), "weight_copy_largest_temporary_mb": round(copy_tp_mb, 1)},
    }
    result["t2_over_t1_time"] = round(together_s / alone_s, 2)
    if world.is_main:
        print(json.dumps(result, indent=2))


def dist_all(flag: bool) -> list[bool]:
    flags: list = [None] * dist.get_world_size()
    dist.all_gather_object(flags, flag)
    return flags


if __name__ == "__main__":
    main()
    close_distributed()
