"""The tensor-parallel sampler's weights (spark.generation.tensor_parallel) from the policy's FSDP shards, one
weight at a time, by point-to-point copies of exactly the rows each rank needs: no rank ever holds a full copy of
a split weight, let alone of the model.

FSDP2 keeps rows [i * c, (i + 1) * c) of every parameter on rank i of its W ranks (c = ceil(rows / W)). The rank
at place t of a tensor-parallel group holds piece t of each split weight (`Split.ranges`: ranges of the full
weight's rows for a column split, a range of its columns for a row split). For every (FSDP rank, sampler rank)
pair the FSDP rank sends the rows they share, cut to the piece's columns and cast to the sampler's dtype, and the
sampler rank receives them straight into its piece: the largest temporary is a part of one FSDP shard. Replicated
weights (norms, the vision tower) are gathered whole, one at a time, as spark.distributed.groups.copy_full_weights
does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from spark.generation.tensor_parallel import Split, TensorParallel, split_of


def transfers(split: Split, piece: int, held: tuple[int, int]
              ) -> list[tuple[tuple[int, int], tuple[int, int] | None, int]]:
    """What of `piece` lies in the full weight's rows `held` (one FSDP shard): (its rows of the full weight,
    the columns to keep or None for all, the row of the piece where they go) per contiguous run."""
    start, end = held
    if start >= end:
        return []
    if split.dim == 1:
        (columns,) = split.ranges(piece)
        return [((start, end), columns, start)]
    runs, at = [], 0
    for first, last in split.ranges(piece):
        rows = (max(first, start), min(last, end))
        if rows[0] < rows[1]:
            runs.append((rows, None, at + rows[0] - first))
        at += last - first
    return runs


def fsdp_rows(source: DTensor) -> list[tuple[int, int]]:
    """The full weight's rows that each rank of the source's mesh holds (torch.chunk's cut along dim 0)."""
    rows, size = source.shape[0], source.device_mesh.size()
    chunk = -(-rows // size)
    return [(min(i * chunk, rows), min((i + 1) * chunk, rows)) for i in range(size)]


def exchange(source: DTensor, target: torch.Tensor, split: Split) -> None:
    """Collective over the source's mesh: every rank's piece `target` of `split` from the FSDP shards `source`."""
    me = dist.get_rank()
    mesh_ranks = source.device_mesh.mesh.flatten().tolist()
    local = source.to_local()
    held = fsdp_rows(source)
    ops = []
    for receiver in mesh_ranks:
        piece = receiver % split.size  # groups are consecutive ranks (tensor_parallel_group)
        for sender, rows_held in zip(mesh_ranks, held):
            if me not in (sender, receiver):
                continue
            for (first, last), columns, at in transfers(split, piece, rows_held):
                into = target.narrow(0, at, last - first) if receiver == me else None
                if sender == me:
                    data = local[first - rows_held[0]:last - rows_held[0]]
                    data = (data if columns is None else data[:, columns[0]:columns[1]]).to(target.dtype)
                    if receiver == me:
                        into.copy_(data)
                    else:
                        ops.append(dist.P2POp(dist.isend, data.contiguous(), receiver))
                else:
                    ops.append(dist.P2POp(dist.irecv, into, sender))
    for request in dist.batch_isend_irecv(ops) if ops else []:
        request.wait()


@torch.no_grad()
def copy_to_tensor_parallel(sharded: nn.Module, shard: nn.Module, tp: TensorParallel) -> None:
    """Collective over every rank: the FSDP-sharded model's weights into this rank's tensor-parallel shard of it."""
    targets = shard.state_dict()
    copied = set()
    for name, source in sharded.state_dict().items():
        target = targets[name]
        if target.data_ptr() in copied:  # the head tied to the embedding
            continue
        copied.add(target.data_ptr())
        split = split_of(name, shard.config, tp.size)
        if split is None:
            target.copy_(source.full_tensor() if isinstance(source, DTensor) else source)
        else:
            exchange(source, target, split)
