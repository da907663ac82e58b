"""Process group set-up and FSDP2 sharding (torchtitan style: one `fully_shard` per block, then the root).

Runs under `torchrun` (gloo on CPU, NCCL on GPU, one node or several) and also as a plain
`python train.py`, which becomes a one-process group.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.constants import default_pg_timeout
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import DTensor


@dataclass
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float | None = None, *, host_collectives: bool = False) -> World:
    """Join (or create) the default process group and pick this rank's device. A collective that waits
    longer than `timeout_s` (default: torch's) fails, so a rank whose peer died errors out instead of hanging.
    `host_collectives`: on GPU, collectives on host tensors too (gloo beside NCCL), as the gradient norm of
    shards that FSDP2's CPUOffloadPolicy keeps on the host needs (torchtitan's set-up for CPU offload)."""
    if "RANK" not in os.environ:  # plain `python train.py`: a group of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl" if host_collectives else "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None,
                                **_restart_store(timeout))
    return World(dist.get_rank(), dist.get_world_size(), device)


def _restart_store(timeout: timedelta | None) -> dict:
    """The store of a process restarted by torchrun (`--max-restarts`), in a namespace of its own attempt.

    torchrun's agent keeps one TCPStore for all the attempts of a run (TORCHELASTIC_USE_AGENT_STORE), and
    the process group's keys are the same in each: a restarted rank can read a dead peer's address from the
    attempt before and fail to connect ("Connection refused") or wait for it forever in gloo's connectFullMesh
    (pytorch/pytorch#135712; tests/distributed/test_faults.py restarts two ranks to show it). The workers of a node restart
    together, so on one node the attempt number is the same on every rank. Across nodes it is too when every
    node's workers fail with the dead one, but an agent that restarts its workers because a node is waiting to
    join does not count that restart: there, `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun ...` gives each
    attempt a store of its own (and this function nothing to do). Empty (torch's own env:// set-up) outside
    torchrun and on its first attempt."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or attempt == 0:
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout or default_pg_timeout)
    return {"store": dist.PrefixStore(f"spark/attempt_{attempt}", store), "rank": int(os.environ["RANK"]),
            "world_size": int(os.environ["WORLD_SIZE"])}


def close_distributed() -> None:
    """Leave the process group once a run is done, after its last user (the trainer) is gone. A gloo group that
    something still holds (FSDP's device mesh, in a trainer that a reference cycle keeps alive) is freed only at
    interpreter exit, where its threads can abort the process ("terminate called without an active exception")
    after all its work succeeded: tests/test_plan.py's two-rank test (tests/dist_plan.py) aborted so at times, with
    close_distributed called from inside the function that held the trainer and no collection. Hence the
    collection first."""
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def own_units(model: nn.Module) -> list[nn.Module]:
    """The parts outside the blocks that are FSDP units of their own (torchtitan's embedding and output units):
    the embedding, the head, the vision tower's patch embedding and merger. Each one's gradient then exists
    unsharded only from its own backward to its reduce-scatter (the head's at the start of the backward, the
    embedding's at its end), not all of them together until the root's, at the end of the backward. Tied
    embeddings are one parameter of two modules, so they stay in the root."""
    units = [] if model.config.tie_word_embeddings else [model.model.embed_tokens, model.lm_head]
    visual = getattr(model, "visual", None)
    return units + ([visual.patch_embed, visual.merger] if visual is not None else [])


def shard_model(model: nn.Module, *, mixed_precision: bool, methods: tuple[str, ...] = (),
                offload: bool = False) -> nn.Module:
    """FSDP2: each transformer block (and vision block) is a unit, and so is each of `own_units`; the root holds
    the rest (the final norm, and the embeddings and head when tied).

    With `mixed_precision`, parameters are gathered in bf16 for compute and gradients reduced in fp32;
    the sharded master weights and optimizer state stay fp32. `methods` are extra entry points (besides
    forward) that must gather the parameters, e.g. "logprobs". `offload`: the shards and their gradients live in
    host memory (FSDP2's CPUOffloadPolicy: each unit is copied to the device for its all-gather, and an
    optimizer over the shards steps on the CPU).
    """
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision \
        else MixedPrecisionPolicy()
    # A vision block's inputs include the fp32 rotary tables, which FSDP would cast to bf16 at every block;
    # the sampler's unsharded copy applies them in fp32. Its hidden states arrive in bf16 anyway (from the
    # patch embedding's bf16 weights), so the blocks need no input cast.
    vision_policy = dataclasses.replace(policy, cast_forward_inputs=False)
    placement = {"offload_policy": CPUOffloadPolicy()} if offload else {}
    for block in model.model.layers:
        fully_shard(block, mp_policy=policy, **placement)
    visual = getattr(model, "visual", None)
    for block in getattr(visual, "blocks", []):
        fully_shard(block, mp_policy=vision_policy, **placement)
    for unit in own_units(model):
        fully_shard(unit, mp_policy=vision_policy if visual is not None and unit in visual.children() else policy,
                    **placement)
    if not model.config.tie_word_embeddings:  # the update's log-probs call the head through this method
        register_fsdp_forward_method(model.lm_head, "token_logprobs")
    fully_shard(model, mp_policy=policy, **placement)
    for method in methods:
        register_fsdp_forward_method(model, method)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full tensor on every rank (gathers the FSDP shards)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def reduce_metrics(local: dict[str, float | torch.Tensor], op: str = "sum") -> dict[str, float]:
    """Sum (or max) each named number over the ranks, all in one collective. Every rank must pass the
    same keys; values are Python numbers or 0-dim tensors on any device (read back once, here)."""
    device = "cuda" if "nccl" in dist.get_backend() else "cpu"
    keys = sorted(local)
    values = torch.stack([torch.as_tensor(local[k]).detach().to(device, torch.float64) for k in keys])
    dist.all_reduce(values, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return dict(zip(keys, values.tolist()))


@torch.no_grad()
def copy_full_weights(sharded: nn.Module, plain: nn.Module) -> None:
    """Copy a sharded model's weights into an unsharded copy of it, gathering one tensor at a time so that
    a full fp32 copy of the model never exists on top of the plain one (e.g. the policy into the sampler)."""
    plain_state = plain.state_dict()
    for name, shard in sharded.state_dict().items():
        target = plain_state[name]
        if isinstance(shard, DTensor):  # gathered where the copy lives (shards offloaded to the host included)
            shard = shard.to(target.device).full_tensor()
        target.copy_(shard)


def all_gather_objects(obj: object) -> list:
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
