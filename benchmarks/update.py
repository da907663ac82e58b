"""Seconds of one policy update (`Trainer.update`) on the demo's start: 32 prompts x 8 rollouts sampled once from
`runs/demo/warmup` (made by `spark.demo.pipeline.ensure_prepared` when missing), then updated 6 times; the median of
the last 5 is printed (JSON, last line).

  --no-shared-prompts  pack every response with its own copy of its prompt (instead of one copy per group)
  --root DIR           import spark from another checkout, e.g. an older commit (`git worktree add DIR COMMIT`),
                       so that the same measurement runs on the code before a change
  --profile            print torch.profiler's table of one more update

Run: `PYTHONPATH=. .venv/bin/python benchmarks/update.py [--no-shared-prompts] [--root DIR] [--profile]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-shared-prompts", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    # The demo's start, prepared by this checkout (an older one may not know how).
    subprocess.run([sys.executable, "-c", "from spark.config import TrainConfig, load_config; "
                    "from spark.demo.pipeline import ensure_prepared; "
                    "ensure_prepared(load_config(TrainConfig, 'configs/tiny.toml'))"], cwd=ROOT, check=True)
    sys.path.insert(0, str(args.root.resolve()))
    import torch

    import spark.rl.packing
    from spark.config import TrainConfig, load_config
    from spark.distributed.metrics import PhaseTimer
    from spark.trainer import Trainer

    if args.no_shared_prompts:
        spark.rl.packing.shared_prompt = id  # every experience its own key: no prompt is shared
    demo = load_config(TrainConfig, ROOT / "configs/tiny.toml")
    checkpoint, data = (ROOT / demo.model.path).resolve(), (ROOT / demo.data.train_files[0]).resolve()
    overrides = ["spark.mode=policy-only", f"model.path={checkpoint}", f"data.train_files=['{data}']",
                 "run.out_dir=/tmp/spark-update-benchmark", "run.eval_every=0", "run.sample_every=0",
                 "run.save_every=0", "run.eval_files=[]", "run.judge_eval_files=[]", "run.resume=force"]
    trainer = Trainer(load_config(TrainConfig, args.root / "configs/tiny.toml", overrides))
    experiences = trainer.rollout(trainer.questions[:32], "policy", PhaseTimer())
    seconds = []
    for _ in range(6):
        started = time.perf_counter()
        trainer.update(experiences)
        seconds.append(time.perf_counter() - started)
    if args.profile:
        with torch.profiler.profile() as profile:
            trainer.update(experiences)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(json.dumps({"root": str(args.root), "shared_prompts": not args.no_shared_prompts,
                      "sequences": len(experiences), "update_s": round(statistics.median(seconds[1:]), 3),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
