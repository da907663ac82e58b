"""Checkpoints loaded straight into FSDP2 shards, on every rank of a torchrun group.

torchrun --nproc_per_node N tests/distributed/dist_loading.py RESULT.json CHECKPOINT [CHECKPOINT ...]
For each checkpoint (fp32 and bf16): whether the shards gathered equal the plain load, tensor for tensor, and how
many elements the ranks read from the files (summed: each element once), the largest read and shard of rank 0.
"""

import functools
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spark.distributed.groups import close_distributed, full_state_dict, init_distributed, shard_model  # noqa: E402
from spark.models import checkpoint  # noqa: E402


class CountedReads:
    """A safetensors file (or one tensor's slice of it) that counts the elements read through its slices."""

    def __init__(self, handle, reads: list[int]):
        self.handle, self.reads = handle, reads

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def get_slice(self, name):
        return CountedReads(self.handle.get_slice(name), self.reads)

    def __getitem__(self, rows):
        tensor = self.handle[rows]
        self.reads.append(tensor.numel())
        return tensor


def counting(open_weights, reads: list[int]):
    @contextmanager
    def counted(file, device="cpu"):
        with open_weights(file, device) as handle:
            yield CountedReads(handle, reads)
    return counted


def main(out: str, *paths: str) -> None:
    world = init_distributed()
    opened = checkpoint.open_weights
    results = {}
    for path in paths:
        for dtype in (torch.float32, torch.bfloat16):
            reads: list[int] = []
            checkpoint.open_weights = counting(opened, reads)
            sharded = checkpoint.load_model(path, dtype=dtype,
                                            prepare=functools.partial(shard_model, mixed_precision=False))
            checkpoint.open_weights = opened
            plain = checkpoint.load_model(path, dtype=dtype).state_dict()
            gathered = full_state_dict(sharded)
            total = torch.tensor([sum(reads)])
            dist.all_reduce(total)
            results[f"{Path(path).name}/{str(dtype).removeprefix('torch.')}"] = {
                "equal": sorted(gathered) == sorted(plain) and all(
                    gathered[name].dtype == dtype and torch.equal(gathered[name], plain[name]) for name in plain),
                "read_all_ranks": total.item(),
                "checkpoint_elements": sum(tensor.numel() for name, tensor in plain.items() if not (
                    name == "lm_head.weight" and sharded.config.tie_word_embeddings)),
                "largest_read": max(reads),
                "largest_shard": max(param.to_local().numel() for param in sharded.parameters()),
                "largest_tensor": max(tensor.numel() for tensor in plain.values()),
            }
    if world.is_main:
        Path(out).write_text(json.dumps(results))
    close_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
