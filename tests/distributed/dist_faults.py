"""A tiny training run under torchrun with one fault injected by one rank, for tests/distributed/test_faults.py.

torchrun --nproc_per_node N tests/distributed/dist_faults.py FAULT RANK STEP CHECKPOINT DATA OUT_DIR [section.key=value ...]

Rank RANK injects FAULT in the middle of step STEP (1-based), in each of that step's updates:
  none     nothing: the uninterrupted run
  sigterm  sends itself SIGTERM, and again in the middle of the checkpoint save that follows
  sigkill  SIGKILLs itself, on torchrun's first attempt only (TORCHELASTIC_RESTART_COUNT=0)
  nan      its loss is NaN
  stall    no training: it sleeps while the other ranks wait in a collective, which must time out
  rejoin   no training: every rank joins the process group; on torchrun's first attempt RANK then SIGKILLs
           itself, and on the restart every rank joins again and prints "attempt 1 rank R joined"
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spark.distributed.checkpointing  # noqa: E402
import spark.trainer  # noqa: E402
from spark.distributed.groups import close_distributed, init_distributed, reduce_metrics  # noqa: E402
from spark.trainer import Trainer  # noqa: E402
from tests.trainer_utils import tiny_config  # noqa: E402


def main(fault: str, rank: str, step: str, checkpoint: str, data: str, out_dir: str, *overrides: str) -> None:
    config = tiny_config(Path(checkpoint), Path(data), Path(out_dir), *overrides)
    if fault == "rejoin":
        world, attempt = init_distributed(config.run.collective_timeout_s), os.environ["TORCHELASTIC_RESTART_COUNT"]
        reduce_metrics({"x": 1.0})
        if attempt == "0" and world.rank == int(rank):
            os.kill(os.getpid(), signal.SIGKILL)
        if attempt == "0":  # fails once the peer is gone, and torchrun restarts both ranks
            reduce_metrics({"x": 1.0})
        print(f"attempt {attempt} rank {world.rank} joined", flush=True)
        return
    if fault == "stall":
        world = init_distributed(config.run.collective_timeout_s)
        if world.rank == int(rank):
            time.sleep(600)
        reduce_metrics({"x": 1.0})
        return
    trainer = Trainer(config)
    faulty = trainer.world.rank == int(rank)

    def at_fault_step() -> bool:
        return faulty and trainer.step + 1 == int(step)

    update, micro_batch_loss, dcp_save = trainer.update, spark.trainer.micro_batch_loss, spark.distributed.checkpointing.dcp.save

    def update_with_fault(*args, **kwargs):
        if at_fault_step() and fault == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        if at_fault_step() and fault == "sigkill" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        return update(*args, **kwargs)

    def loss_with_fault(*args, **kwargs):
        loss, sums = micro_batch_loss(*args, **kwargs)
        return (loss * float("nan"), sums) if at_fault_step() and fault == "nan" else (loss, sums)

    def save_with_fault(*args, **kwargs):
        result = dcp_save(*args, **kwargs)
        if faulty and fault == "sigterm" and trainer.signals.requested:  # shards written, manifest not yet
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    trainer.update = update_with_fault
    spark.trainer.micro_batch_loss = loss_with_fault
    spark.distributed.checkpointing.dcp.save = save_with_fault
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
    close_distributed()  # once the trainer is gone (see close_distributed)
