"""What the trainer allocates on each rank, for the memory plan's test.

torchrun --nproc_per_node N tests/dist_plan.py CHECKPOINT DATA OUT_DIR RESULT.json [section.key=value ...]
Each rank builds the trainer, runs one update on fixed experiences and reports the bytes of its parameter,
reference, gradient and optimizer-state shards, of the sampler's weights during the update and of the optimizer
state after it (what model.offload leaves on the device), and the largest reduce-scatter's unsharded gradients and
their flat copy (benchmarks/root_gradients.py's count); rank 0 writes the list to RESULT.json.
"""

import json
import sys
from pathlib import Path

from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from root_gradients import ReduceScatters  # noqa: E402

from spark.distributed.groups import all_gather_objects, close_distributed  # noqa: E402
from spark.trainer import Trainer  # noqa: E402
from tests.dist_update import fixed_experiences  # noqa: E402
from tests.trainer_utils import tiny_config  # noqa: E402


def local_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (DTensors count their local shard)."""
    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors)


def main(checkpoint: str, data: str, out_dir: str, result: str, *overrides: str) -> None:
    trainer = Trainer(tiny_config(Path(checkpoint), Path(data), Path(out_dir), *overrides))
    measured = {"parameter shards": local_bytes(trainer.policy.parameters()),
                "reference shards": local_bytes(trainer.reference.parameters()) if trainer.reference else 0,
                "sampler weights": local_bytes(trainer.rollouts.chat.model.parameters())}
    step = trainer.optimizer.step

    def measuring_step():  # grads exist between backward and zero_grad, state after the first step
        measured["gradient shards"] = local_bytes(p.grad for p in trainer.policy.parameters() if p.grad is not None)
        measured["sampler weights during the update"] = local_bytes(trainer.rollouts.chat.model.parameters())
        step()
        measured["AdamW state"] = local_bytes(t for state in trainer.optimizer.state.values() for t in state.values())

    trainer.optimizer.step = measuring_step
    world = trainer.world
    with ReduceScatters() as reduces:
        trainer.update(fixed_experiences()[world.rank::world.size])
    measured["unsharded gradients"] = max(reduces.sizes)
    measured["AdamW state after the update"] = local_bytes(
        t for state in trainer.optimizer.state.values() for t in state.values())
    everyone = all_gather_objects(measured)
    if world.is_main:
        Path(result).write_text(json.dumps(everyone))


if __name__ == "__main__":
    main(*sys.argv[1:])
    close_distributed()  # once the trainer is gone (see close_distributed)
