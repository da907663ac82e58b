"""A GRPO step of spark against TRL's `GRPOTrainer`, on the same checkpoint, prompts and shapes; and what a full
SPARK step costs per token against a policy-only one.

All train the demo's warmed-up checkpoint (`runs/demo/warmup`, made by `spark.demo.pipeline.prepare` when missing) on
the demo's training prompts (`runs/demo/data/train.jsonl`, the method's math prompt in the chat template):
32 prompts x 8 rollouts per step, at most 64 new tokens, temperature 1, top-p 1, no KL (no reference model),
one optimizer step per batch (pi_old = pi), lr 1e-4, fp32 on CPU, the same rule reward
(`spark.verify.is_correct`, strict: the last \\boxed{}).
  spark:       `train.py configs/tiny.toml spark.mode=policy-only ...` (token-mean loss);
  trl:         `GRPOTrainer` with loss_type "dapo" (its token-mean), transformers `generate`, beta 0;
  spark-spark: `train.py configs/tiny.toml` as it is (spark.mode=spark): the policy step, then its groups
               recycled into judge and reflection prompts, rolled out and trained in the same step.
Each engine runs in its own process, one after the other, `--rounds` times (so all see the same machine load);
the first step of each process is a warm-up and is not counted. A step's seconds are the whole step: rollout,
reward, advantages, update (and for SPARK, recycling and the recycled rollout and update). Printed: per engine
the median seconds per step, mean completion length and mean policy reward (the same work: TRL and spark
should agree within noise); for the two spark modes also generated and trained tokens per step (trained:
prompt + response of every trained sequence) and seconds per 1,000 of them. Last line (JSON): the figures,
`trl_over_spark` (TRL's seconds per step / spark's: above 1, spark is faster) and `spark_over_policy_per_token`
(a SPARK step's seconds per token / a policy-only step's).

TRL is a benchmark dependency, not a runtime one: `make bench` installs it into the venv.
Run: `PYTHONPATH=. .venv/bin/python benchmarks/vs_trl.py [--rounds 3] [--steps 4] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS, N, MAX_NEW_TOKENS, LR = 32, 8, 64, 1e-4


def run_spark(checkpoint: Path, train_file: Path, steps: int, out_dir: Path, mode: str = "policy-only") -> list[dict]:
    """`steps` GRPO steps with train.py in spark.mode `mode`; per step: seconds, mean completion length, mean
    policy reward, generated and trained tokens."""
    overrides = [
        f"spark.mode={mode}", f"model.path={checkpoint}", f"data.train_files=['{train_file}']",
        f"data.prompts_per_step={PROMPTS}", f"rollout.n={N}", f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
        "rollout.temperature=1.0", "loss.kl_coef=0.0", "loss.ppo_epochs=1", f"optim.lr={LR}",
        f"run.out_dir={out_dir}", f"run.max_steps={steps}", "run.eval_every=0", "run.sample_every=0",
        "run.save_every=0", "run.eval_files=[]", "run.judge_eval_files=[]", "run.export_every=0",
    ]
    subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/tiny.toml"), *overrides],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"seconds": r["time/step"], "completion_len": r["response_len/mean"], "reward": r["reward/policy"],
             "generated_tokens": r["generated_tokens"], "trained_tokens": r["trained_tokens"]}
            for r in records if "time/step" in r]


def run_trl(checkpoint: Path, train_file: Path, steps: int, out_dir: Path) -> list[dict]:
    """The same steps with TRL's GRPOTrainer, timed from its step-begin to its step-end callback."""
    from datasets import Dataset
    from spark.verify import is_correct
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spark.tasks.prompts import math_prompt

    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": math_prompt(r["question"])}],
                                  "answer": r["answer"]} for r in rows])

    def reward(completions, answer, **_):
        return [float(is_correct(c[0]["content"], gold, mode="strict")) for c, gold in zip(completions, answer)]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.started, self.records = 0.0, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.records.append({"seconds": time.perf_counter() - self.started})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.records[-1].update(completion_len=logs["completions/mean_length"], reward=logs["reward"])

    args = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, learning_rate=LR, lr_scheduler_type="constant",
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, max_steps=steps,
        per_device_train_batch_size=PROMPTS * N, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=N, max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    clock = StepClock()
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(checkpoint, dtype="float32"),
                          reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(checkpoint), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its per-step log lines; the clock keeps what is needed
    trainer.train()
    return clock.records


def prepared_demo() -> tuple[Path, Path]:
    """The demo's warmed-up checkpoint and training prompts (configs/tiny.toml's), made once."""
    from spark.config import TrainConfig, load_config
    from spark.demo.pipeline import ensure_prepared

    config = load_config(TrainConfig, ROOT / "configs/tiny.toml")
    ensure_prepared(config)
    return Path(config.model.path).resolve(), Path(config.data.train_files[0]).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each engine runs, alternating")
    parser.add_argument("--steps", type=int, default=4, help="counted steps per run (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of both engines (0: torch's default)")
    parser.add_argument("--engine", choices=["spark", "trl", "spark-spark"], help=argparse.SUPPRESS)  # one run
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)  # the demo's paths are relative to the repository
    checkpoint, train_file = prepared_demo()
    if args.engine:
        out = args.out / "run"
        if args.engine == "trl":
            records = run_trl(checkpoint, train_file, args.steps + 1, out)
        else:
            records = run_spark(checkpoint, train_file, args.steps + 1, out,
                                mode="spark" if args.engine == "spark-spark" else "policy-only")
        (args.out / "records.json").write_text(json.dumps(records))
        return

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    measured: dict[str, list[dict]] = {"spark": [], "trl": [], "spark-spark": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for engine in measured:
                out = Path(tmp) / f"{engine}-{round_}"
                out.mkdir()
                subprocess.run([sys.executable, __file__, "--engine", engine, "--steps", str(args.steps),
                                "--out", str(out)], check=True, env=env)
                records = json.loads((out / "records.json").read_text())[1:]  # the first is the warm-up
                measured[engine] += records
                print(engine, f"round {round_ + 1}:", json.dumps({k: [round(r[k], 3) for r in records]
                                                                  for k in records[0]}), flush=True)
    summary = {}
    for engine, records in measured.items():
        summary[engine] = {"median_s_per_step": round(statistics.median(r["seconds"] for r in records), 3),
                           "completion_len": round(statistics.mean(r["completion_len"] for r in records), 2),
                           "reward": round(statistics.mean(r["reward"] for r in records), 3)}
        if "trained_tokens" in records[0]:
            tokens = [r["generated_tokens"] + r["trained_tokens"] for r in records]
            summary[engine].update(
                generated_tokens=round(statistics.mean(r["generated_tokens"] for r in records)),
                trained_tokens=round(statistics.mean(r["trained_tokens"] for r in records)),
                s_per_1k_tokens=round(1000 * statistics.median(r["seconds"] / t for r, t in zip(records, tokens)), 4))
    summary["trl_over_spark"] = round(summary["trl"]["median_s_per_step"] / summary["spark"]["median_s_per_step"], 2)
    summary["spark_over_policy_per_token"] = round(
        summary["spark-spark"]["s_per_1k_tokens"] / summary["spark"]["s_per_1k_tokens"], 2)
    summary["load_average"] = round(os.getloadavg()[0], 2)
    summary["cpu"] = cpu_name()
    print(json.dumps(summary), flush=True)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
