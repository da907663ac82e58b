"""Device memory freed between uses and given back, in place: the trainer's `model.offload`.

A `Parked` set of tensors keeps every tensor object (a parameter of the sampler's model, a DTensor's local shard
in AdamW's state) while the device memory under it is freed, by pointing the tensor at an empty one (`.data`:
its storage may not be resizable, e.g. one read from a safetensors file); `restore` allocates it again, with the
values it had when `keep` copied them to host memory, or for the caller to fill (the sampler's weights, which the
trainer copies from the shards before every rollout anyway). The owners (the optimizer, the model) keep the same
tensor objects throughout; only their memory comes and goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from spark.generation.sampler import STATIC_CACHES


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank stores: a DTensor's local shard (the object itself, outside autograd), else the
    tensor itself."""
    with torch.no_grad():
        return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Parked:
    """Tensors whose memory `release` frees and `restore` allocates again (each tensor object once). With `keep`,
    release first copies each to host memory (pinned when it lives on an accelerator) and restore copies it back,
    so the values survive; without, restore leaves them undefined."""

    def __init__(self, tensors: Iterable[torch.Tensor], *, keep: bool):
        self.tensors = list({id(t): t for t in map(local_tensor, tensors)}.values())
        self.shapes = [t.shape for t in self.tensors]
        self.keep = keep
        self.released = False
        self.host: list[torch.Tensor] = []

    @property
    def device_bytes(self) -> int:
        """Bytes the tensors hold now (0 once released)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors)

    @torch.no_grad()
    def release(self) -> None:
        if self.released:
            return
        if self.keep:
            self.host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda").copy_(t)
                         for t in self.tensors]
        for tensor in self.tensors:
            tensor.data = tensor.new_empty(0)
        self.released = True

    @torch.no_grad()
    def restore(self) -> None:
        if not self.released:
            return
        for tensor, shape in zip(self.tensors, self.shapes):
            tensor.data = tensor.new_empty(shape)
        for tensor, host in zip(self.tensors, self.host):
            tensor.copy_(host)
        self.host = []
        self.released = False


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)."""
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


class PhaseMemory:
    """What `model.offload` frees around the update of a step. "optimizer" and "all" release the sampler's
    weights (and the compiled sampler's kept KV cache) from the update's start until the next rollout, or
    evaluation, or export, gives them back (`sampler_needed`, before the weights are copied in); "optimizer" also
    keeps AdamW's state in host memory from the end of one update to the start of the next. ("all" needs no
    moves here: FSDP2's CPUOffloadPolicy keeps the shards and the optimizer state on the host.)"""

    def __init__(self, offload: str, sampler: nn.Module, optimizer: torch.optim.Optimizer):
        self.offload, self.sampler_model, self.optimizer = offload, sampler, optimizer
        self.sampler = Parked(sampler.parameters(), keep=False) if offload != "none" else None
        self.state: Parked | None = None

    def update_begins(self) -> None:
        if self.sampler is not None:
            self.sampler.release()
            STATIC_CACHES.pop(self.sampler_model, None)
        self.optimizer_needed()

    def update_ends(self) -> None:
        if self.offload == "optimizer":
            self.state = Parked(optimizer_state(self.optimizer), keep=True)
            self.state.release()

    def sampler_needed(self) -> None:
        if self.sampler is not None:
            self.sampler.restore()

    def optimizer_needed(self) -> None:
        if self.state is not None:
            self.state.restore()
            self.state = None

    @contextmanager
    def optimizer_on_device(self) -> Iterator[None]:
        """The optimizer's state where it trains, for the duration (a checkpoint's save), then back."""
        parked = self.state is not None
        self.optimizer_needed()
        try:
            yield
        finally:
            if parked:
                self.update_ends()
