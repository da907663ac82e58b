"""Train with SPARK.

    torchrun --nproc_per_node 8 train.py CONFIG.toml [section.key=value ...] [--debug]
    python train.py configs/tiny.toml run.out_dir=runs/tiny       # one process, on the checkpoint `make demo` built

CONFIG is one TOML file with every setting of the run; each section.key=value overrides one (TOML values:
optim.lr=1e-6, spark.mode=policy-only, data.train_files='["a.jsonl"]'). configs/7b.toml shows every key with a
comment. Unknown keys and values out of range are errors before anything loads. Running the same command again
resumes from the run's last checkpoint (run.out_dir/checkpoints/); SIGTERM, SIGUSR1 or Ctrl-C stop it after
the current step, with a checkpoint. --debug (or SPARK_DEBUG=1) shows the traceback of a mistake in the input.

The tables and their keys:
"""

import sys

from spark.cli import run_command
from spark.config import TrainConfig, describe_tables, load_config
from spark.distributed.groups import close_distributed
from spark.trainer import Trainer


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + describe_tables(TrainConfig))
        return
    config = load_config(TrainConfig, argv[0], argv[1:])
    Trainer(config).train()
    close_distributed()


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
