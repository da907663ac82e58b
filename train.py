"""Train with SPARK: `torchrun --nproc_per_node 8 train.py configs/7b.toml [section.key=value ...]`."""

import sys

from spark.config import TrainConfig, load_config
from spark.distributed import close_distributed
from spark.trainer import Trainer


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    config = load_config(TrainConfig, argv[0], argv[1:])
    Trainer(config).train()
    close_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
