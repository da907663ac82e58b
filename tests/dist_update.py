"""Two optimizer updates on the same fixed experiences, split over however many ranks torchrun gives (the
second sees a policy that has moved from the reference: KL > 0).

torchrun --nproc_per_node N tests/dist_update.py CHECKPOINT DATA OUT_DIR RESULT.pt [section.key=value ...]
Rank 0 saves the updated full parameters and each update's metrics to RESULT.pt.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark.data.rows import Sample  # noqa: E402
from spark.distributed.groups import close_distributed, full_state_dict  # noqa: E402
from spark.rl.rollout import Experience  # noqa: E402
from spark.trainer import Trainer  # noqa: E402
from tests.trainer_utils import tiny_config  # noqa: E402


def fixed_experiences(num: int = 6) -> list[Experience]:
    generator = torch.Generator().manual_seed(0)
    experiences = []
    for i in range(num):
        prompt = torch.randint(3, 200, (int(torch.randint(3, 9, (1,), generator=generator)),), generator=generator)
        response = torch.randint(3, 200, (int(torch.randint(1, 7, (1,), generator=generator)),), generator=generator)
        task = ("policy", "pointwise", "reflection")[i % 3]
        experiences.append(Experience(Sample("q", "1", task=task), prompt.tolist(), response.tolist(), "r",
                                      reward=float(i % 2), truncated=False, advantage=(-1.0) ** i * (1 + i / 10),
                                      group=i))  # its position in the batch, as the trainer numbers groups
    return experiences


def main(checkpoint: str, data: str, out_dir: str, result: str, *overrides: str) -> None:
    trainer = Trainer(tiny_config(Path(checkpoint), Path(data), Path(out_dir), *overrides))
    world = trainer.world
    metrics = [trainer.update(fixed_experiences()[world.rank::world.size]) for _ in range(2)]
    state = full_state_dict(trainer.policy)
    if world.is_main:
        torch.save({"state": state, "metrics": metrics}, result)


if __name__ == "__main__":
    main(*sys.argv[1:])
    close_distributed()  # once the trainer is gone (see close_distributed)
