"""The gradients of the parts outside the blocks (embedding, head, vision patch embedding and merger) alive at once
during an update, with those parts in the FSDP root unit (as before) and as units of their own (spark's
`own_units`), on CPU:

    torchrun --nproc_per_node 2 benchmarks/root_gradients.py [--vl]

Each rank runs one forward + backward of a tiny model's packed log-probs under FSDP2 (gloo) and records every
tensor created with a fresh storage in the shape of one of those parameters (their unsharded gradients, and
their fp32 copies under mixed precision), and the most bytes of them alive at one time (`peak_bytes`); and, at
each unit's reduce-scatter, the bytes of the unsharded gradients it takes at once plus their flat copy in the
reduce dtype (`largest_reduce_bytes`: FSDP2's foreach_reduce, wrapped). Rank 0 prints one line per layout, then
one JSON object.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fsdp_param_group
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark.distributed import groups  # noqa: E402


class LiveTensors(TorchDispatchMode):
    """The bytes of the tensors of `shapes` that ops create (a new storage, not a view) while it is active: the
    most alive at once. A storage is alive while anything but this record holds it (autograd may keep a gradient's
    storage under another tensor object), and holds memory while not resized to 0 bytes (FSDP frees so)."""

    def __init__(self, shapes: set[tuple[int, ...]]):
        super().__init__()
        self.shapes, self.storages, self.peak = shapes, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if type(t) is torch.Tensor}
        for tensor in tree_flatten(out)[0]:
            if type(tensor) is torch.Tensor and tuple(tensor.shape) in self.shapes \
                    and tensor.untyped_storage().data_ptr() not in inputs:
                self.storages.append(tensor.untyped_storage())
        self.storages = [s for s in self.storages if torch._C._storage_Use_Count(s._cdata) > 1]
        self.peak = max(self.peak, sum(s.nbytes() for s in self.storages))
        return out


class ReduceScatters:
    """While active, the bytes of each FSDP2 reduce-scatter's input: the unsharded gradients of one unit, all alive
    at once, and their flat copy in the reduce dtype (FSDP2's foreach_reduce, wrapped)."""

    def __enter__(self) -> ReduceScatters:
        self.sizes: list[int] = []
        self.reduce = reduce = fsdp_param_group.foreach_reduce

        def recording_reduce(*args, **kwargs):
            call = inspect.signature(reduce).bind(*args, **kwargs).arguments
            grads = call["unsharded_grads"]
            reduce_dtype = call["reduce_dtype"] or grads[0].dtype
            self.sizes.append(sum(g.nbytes + g.numel() * reduce_dtype.itemsize for g in grads))
            return reduce(*args, **kwargs)

        fsdp_param_group.foreach_reduce = recording_reduce
        return self

    def __exit__(self, *exc) -> None:
        fsdp_param_group.foreach_reduce = self.reduce


def root_part_shapes(model: torch.nn.Module) -> set[tuple[int, ...]]:
    """The shapes of the parameters outside the blocks, besides 1-D ones (norms, biases: small)."""
    layers = [model.model.layers] + ([model.visual.blocks] if hasattr(model, "visual") else [])
    blocks = {id(p) for stack in layers for p in stack.parameters()}
    return {tuple(p.shape) for p in model.parameters() if id(p) not in blocks and p.dim() > 1}


def backward_peak(checkpoint: Path, own_units: bool, mixed_precision: bool) -> dict:
    """One forward + backward of packed log-probs over 48 tokens under FSDP2: the most bytes of root-part-shaped
    gradients alive at once on this rank."""
    from spark.models import Packing, load_model

    model = load_model(checkpoint).train()
    shapes = root_part_shapes(model)
    default = groups.own_units
    groups.own_units = default if own_units else (lambda model: [])
    try:
        groups.shard_model(model, mixed_precision=mixed_precision, methods=("logprobs",))
    finally:
        groups.own_units = default
    torch.manual_seed(0)
    ids, targets = torch.randint(0, model.config.vocab_size, (2, 1, 48))
    with LiveTensors(shapes) as live, ReduceScatters() as reduces:
        logp, _ = model.logprobs(ids, targets, packing=Packing.from_lengths([20, 28]))
        logp.sum().backward()
    return {"peak_bytes": live.peak, "largest_reduce_bytes": max(reduces.sizes),
            "largest_root_part_bytes": max(math.prod(s) for s in shapes) * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args()
    from spark.models.tiny import make_tiny_checkpoint

    world = groups.init_distributed()
    folder = Path(tempfile.mkdtemp()) if world.is_main else None
    folder = Path(groups.all_gather_objects(str(folder))[0])
    if world.is_main:
        make_tiny_checkpoint(folder / "text", vocab_size=1000, hidden_size=64, intermediate_size=128, tie=False)
    torch.distributed.barrier()
    result = {layout: backward_peak(folder / "text", layout == "own units", args.mixed_precision)
              for layout in ("root", "own units")}
    if world.is_main:
        for layout, figures in result.items():
            print(f"{layout:>10}: {figures['peak_bytes']:>9,d} bytes of root-part gradients alive at once, "
                  f"{figures['largest_reduce_bytes']:>9,d} bytes in the largest reduce-scatter")
        print(json.dumps(result))
    groups.close_distributed()


if __name__ == "__main__":
    main()
