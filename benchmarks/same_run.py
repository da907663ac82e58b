"""A refactoring changes no behaviour: the metrics of a 4-step tiny SPARK run, from this checkout and another.

Each checkout runs its own `train.py` on its own `configs/tiny.toml` (policy, pointwise, pairwise and reflection
tasks on the demo's warmed-up 0.9M-parameter model, made by `spark.demo.pipeline.ensure_prepared` when missing) for
`--steps` steps, with checkpoints, samples and evaluations off. Every metric except wall-clock ones (time, tokens
per second, TFLOP/s, MFU) is compared exactly; the last line says how many agree.

  --against DIR  the other checkout, e.g. the commit before a change: `git worktree add /tmp/before COMMIT`

Run: `PYTHONPATH=. .venv/bin/python benchmarks/same_run.py --against /tmp/before [--steps 4]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("minutes", "time/", "tokens_per_s", "tflops/", "mfu")


def run_metrics(root: Path, steps: int, out_dir: Path) -> list[dict]:
    """The non-wall-clock metrics of each step of `root`'s tiny run, trained on this checkout's demo start."""
    demo = ROOT / "runs/demo"
    overrides = [f"model.path={demo / 'warmup'}", f"data.train_files=['{demo / 'data/train.jsonl'}']",
                 f"run.out_dir={out_dir}", f"run.max_steps={steps}", "run.eval_every=0", "run.sample_every=0",
                 "run.save_every=0", "run.eval_files=[]", "run.judge_eval_files=[]", "run.resume=force"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "train.py", "configs/tiny.toml", *overrides], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if not key.startswith(WALL_CLOCK)} for record in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", "from spark.config import TrainConfig, load_config; "
                    "from spark.demo.pipeline import ensure_prepared; "
                    "ensure_prepared(load_config(TrainConfig, 'configs/tiny.toml'))"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        here = run_metrics(ROOT, args.steps, Path(tmp) / "here")
        there = run_metrics(args.against.resolve(), args.steps, Path(tmp) / "there")
    compared = differing = 0
    for mine, theirs in zip(here, there, strict=True):
        for key in sorted(set(mine) | set(theirs)):
            compared += 1
            if mine.get(key) != theirs.get(key):
                differing += 1
                print(f"step {mine['step']} {key}: {mine.get(key)} here, {theirs.get(key)} there")
    for record in here:
        print(json.dumps({key: record[key] for key in ("step", "loss", "reward/policy", "reward/pointwise",
                                                         "grad_norm", "recycled/loss") if key in record}))
    print(json.dumps({"steps": len(here), "metrics_compared": compared, "differing": differing,
                      "same": differing == 0}))


if __name__ == "__main__":
    main()
