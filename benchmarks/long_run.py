"""Long runs stay flat: resident memory and step time over 200 steps of configs/tiny.toml.

The demo's 0.9M-parameter Qwen2 (spark.demo.pipeline), warmed up for a fixed 400 steps, trained with
every setting of configs/tiny.toml (checkpoints every 10 steps, samples every 5) except a smaller batch,
so that 200 steps run in minutes on a CPU: 4 prompts x 4 rollouts per step, and no held-out evaluation. Every 20 steps it
prints the process's resident memory (RSS) and the mean step time of those 20 steps; the last line
compares the last window with the second (the first holds one-off allocations and warm-up).
Run: `.venv/bin/python benchmarks/long_run.py [--steps 200] [--every 20]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark.config import TrainConfig, load_config  # noqa: E402
from spark.demo.pipeline import CONFIG, DemoSetup, prepare  # noqa: E402
from spark.trainer import Trainer  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process now (not its peak), from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MeasuredTrainer(Trainer):
    """Records each step's wall time and the RSS after it, and prints a row every `every` steps."""

    def __init__(self, config: TrainConfig, every: int):
        super().__init__(config)
        self.every, self.rows, self.window = every, [], []

    def train_step(self) -> dict[str, float]:
        started = time.perf_counter()
        metrics = super().train_step()
        self.window.append(time.perf_counter() - started)
        if (self.step + 1) % self.every == 0:
            row = {"step": self.step + 1, "rss_mb": round(rss_mb(), 1),
                   "step_s": round(sum(self.window) / len(self.window), 4)}
            self.rows.append(row)
            self.window = []
            print(json.dumps(row), flush=True)
        return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        paths = prepare(folder, DemoSetup(num_train=2000, num_heldout=8, num_judge=8, warmup_max_steps=400,
                                          warmup_check_every=400, warmup_target=1.0))
        overrides = [f"model.path={json.dumps(paths['warmup'])}", f"data.train_files=[{json.dumps(paths['train'])}]",
                     f"run.out_dir={json.dumps(folder + '/run')}", "data.prompts_per_step=4", "rollout.n=4",
                     f"run.max_steps={args.steps}", "run.eval_every=0", "run.eval_files=[]",
                     "run.judge_eval_files=[]"]
        trainer = MeasuredTrainer(load_config(TrainConfig, CONFIG, overrides), args.every)
        trainer.train()
    rows = trainer.rows
    baseline, last = rows[1] if len(rows) > 1 else rows[0], rows[-1]
    print(json.dumps({"steps": args.steps, "rss_mb_at": {r["step"]: r["rss_mb"] for r in rows},
                      "step_s_at": {r["step"]: r["step_s"] for r in rows},
                      "rss_growth_mb": round(last["rss_mb"] - baseline["rss_mb"], 1),
                      "step_time_ratio": round(last["step_s"] / baseline["step_s"], 3),
                      "compared": [baseline["step"], last["step"]]}))


if __name__ == "__main__":
    main()
