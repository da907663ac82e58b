"""Step time of the tiny config (the CPU demo's, `configs/tiny.toml`) with the authors' 8 optimizer steps per
rollout batch (`loss.mini_batch_size` = 32 prompts x 8 rollouts / 8) against one step per batch, with the
mini-batches cut from whole groups (`loss.mini_batch_order = "groups"`, the default) and from single rollouts
(`"rollouts"`, as the authors' code shuffles: a prompt is then packed in several mini-batches).

Each setting trains `--steps` steps from the demo's start (`runs/demo/warmup`, made by
`spark.demo.pipeline.ensure_prepared` when missing) with the same seed, so both sample the same first batch; the
medians of each phase are printed. Rollouts, rewards and the reference's log-probs are computed once per batch in
both; with several mini-batches the update also computes pi_old's log-probs once (a forward over the batch,
timed under `time/reference`) and then takes 8 optimizer steps, so the difference is that forward and those
steps, not 8 updates.

Run: `PYTHONPATH=. .venv/bin/python benchmarks/mini_batches.py [--steps 3]`; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark.config import TrainConfig, load_config  # noqa: E402
from spark.demo.pipeline import ensure_prepared  # noqa: E402
from spark.trainer import Trainer  # noqa: E402

PHASES = ("time/step", "time/rollout", "time/reward", "time/reference", "time/update")


def time_steps(mini_batch_size: int, order: str, steps: int, out_dir: Path) -> dict[str, float]:
    shutil.rmtree(out_dir, ignore_errors=True)
    demo = load_config(TrainConfig, ROOT / "configs/tiny.toml")
    overrides = [f"model.path={(ROOT / demo.model.path).resolve()}",
                 f"data.train_files=['{(ROOT / demo.data.train_files[0]).resolve()}']",
                 f"run.out_dir={out_dir}", "run.eval_every=0", "run.sample_every=0", "run.save_every=0",
                 "run.eval_files=[]", "run.judge_eval_files=[]", f"loss.mini_batch_size={mini_batch_size}",
                 f"loss.mini_batch_order={order}"]
    trainer = Trainer(load_config(TrainConfig, ROOT / "configs/tiny.toml", overrides))
    rows = []
    for _ in range(steps):
        rows.append(trainer.train_step())
        trainer.step += 1
    summary = {phase: round(statistics.median(row.get(phase, 0.0) for row in rows), 3) for phase in PHASES}
    summary["optimizer_steps"] = rows[0]["optimizer_steps"] + rows[0].get("recycled/optimizer_steps", 0)
    summary["first_step_reward"] = rows[0]["reward/policy"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    ensure_prepared(load_config(TrainConfig, ROOT / "configs/tiny.toml"))
    config = load_config(TrainConfig, ROOT / "configs/tiny.toml")
    batch = config.data.prompts_per_step * config.rollout.n
    results = {}
    settings = {"one_step": (0, "groups"), "eight_steps": (batch // 8, "groups"),
                "eight_steps_rollouts": (batch // 8, "rollouts")}
    for label, (size, order) in settings.items():
        results[label] = time_steps(size, order, args.steps, Path("/tmp/spark-mini-batch-benchmark") / label)
        print(label, results[label], flush=True)
    for label in ("eight_steps", "eight_steps_rollouts"):
        for phase in ("step", "update"):
            ratio = results[label][f"time/{phase}"] / results["one_step"][f"time/{phase}"]
            results[f"{label}/{phase}_ratio"] = round(ratio, 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
