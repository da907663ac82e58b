"""The paper's ablation (tables 5 and 6, figure 4) at CPU scale, on the demo's task.

From the demo's warmed-up start (configs/tiny.toml's model.path, prepared by spark.demo.pipeline when missing) and for
the same number of RL steps: policy-only (GRPO), policy+reward (recycled judge samples, no reflections), and
SPARK with answer-based, CoT-based and both kinds of recycled judge data; each with every seed of --seeds
(data.seed: other prompts and draws, the same start). For each run, on the demo's held-out files:

  policy_acc      greedy accuracy of the first answers (the trainer's evaluation after the last step)
  tts_acc         accuracy of the final answers with test-time scaling (spark.evaluation.tts, greedy, 2 rounds; the judge
                  and the reflection see final answers unless the run trained CoT-based judges only)
  tts_gain        tts_acc - the accuracy of the same first answers without it
  judge_acc       balanced accuracy of the pointwise judge on the fixed judge set (the trainer's evaluation)
  self_precision, self_recall, self_f1
                  the model's verdicts on its own first answers (Yes = correct) against the verifier
  fixed, broke    reflections that turned a wrong answer right / a right one wrong (counts over the held-out set)

Each run's result.json also keeps spark.evaluation.tts.reflection_alone (one reflection on every first answer, the judge
left out), which the table does not show.

Each figure is the mean over seeds, +- their sample standard deviation. Writes OUT/ablation.md (the table),
OUT/ablation.png and OUT/ablation.json; each run's figures are kept in OUT/ROW-sSEED/result.json, so an
interrupted benchmark resumes where it stopped. The last line printed is one JSON object.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python benchmarks/ablation.py [--steps 25] [--seeds 0 1 2] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from spark.config import TrainConfig, load_config
from spark.demo.pipeline import CONFIG, ensure_prepared, read_metrics, summarize, tts_content, tts_summary
from spark.trainer import Trainer

# Row name -> the configs/tiny.toml overrides that make it (the paper's table 5 and 6 rows).
ROWS = {
    "policy-only": ['spark.mode="policy-only"'],
    "policy+reward": ['spark.mode="policy+reward"'],
    "spark-answer": ['spark.recycle.content="answer"'],
    "spark-cot": ['spark.recycle.content="cot"'],
    "spark-both": ['spark.recycle.content="both"'],
}
METRICS = ("policy_acc", "tts_acc", "tts_gain", "judge_acc", "self_precision", "self_recall", "self_f1", "fixed",
           "broke")


def run_one(overrides: list[str], out_dir: Path, steps: int, seed: int) -> dict:
    """Train one row for `steps` steps from the common start, then measure it (see the module doc)."""
    result_file = out_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    config = load_config(TrainConfig, CONFIG, [*overrides, f"run.out_dir={json.dumps(str(out_dir))}",
                                               f"run.max_steps={steps}", f"run.eval_every={steps}",
                                               f"data.seed={seed}", "run.sample_every=0"])
    Trainer(config).train()
    evaluated = summarize(read_metrics(out_dir / "metrics.jsonl"))
    tts = tts_summary(out_dir / "export", read_metrics(config.run.eval_files[0]), content=tts_content(config))
    result = {"policy_acc": evaluated["policy_acc_end"], "tts_acc": tts["accuracy"],
              "tts_gain": tts["accuracy"] - tts["accuracy_by_round"][0], "judge_acc": evaluated["judge_acc_end"],
              **{f"self_{k}": tts["self_judgment"][k] for k in ("precision", "recall", "f1")},
              "fixed": tts["fixed"], "broke": tts["broke"], "reflection_alone": tts["reflection_alone"]}
    result_file.write_text(json.dumps(result))
    return result


def aggregate(results: list[dict[str, float]]) -> dict[str, list[float]]:
    """metric -> [mean, sample standard deviation] over seeds (deviation 0 for one seed)."""
    return {k: [statistics.fmean(r[k] for r in results),
                statistics.stdev(r[k] for r in results) if len(results) > 1 else 0.0] for k in METRICS}


def markdown(table: dict[str, dict[str, list[float]]], seeds: int) -> str:
    head = f"| row ({seeds} seeds, mean ± sd) | " + " | ".join(METRICS) + " |"
    lines = [head, "|---" * (len(METRICS) + 1) + "|"]
    for row, figures in table.items():
        cells = [f"{m:.1f} ± {s:.1f}" if k in ("fixed", "broke") else f"{m:.3f} ± {s:.3f}"
                 for k, (m, s) in figures.items()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, dict[str, list[float]]], png: Path) -> None:
    """Grouped bars, one group per row: held-out accuracy without / with TTS, judge accuracy, self-judgment F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("policy_acc", "tts_acc", "judge_acc", "self_f1")
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(shown)
    for i, key in enumerate(shown):
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(table))]
        ax.bar(xs, [f[key][0] for f in table.values()], width, yerr=[f[key][1] for f in table.values()],
               label=key, capsize=2)
    ax.set_xticks(range(len(table)), list(table))
    ax.set(ylabel="held-out", ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=len(shown), fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="RL steps of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("overrides", nargs="*", help="configs/tiny.toml overrides for every run (section.key=value)")
    args = parser.parse_args(argv)
    warmed = ensure_prepared(load_config(TrainConfig, CONFIG, args.overrides))
    if warmed is not None:
        print("warm-up:", json.dumps({k: v for k, v in warmed.items() if not isinstance(v, str)}), flush=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # as spark.demo.pipeline: one thread for RL
    table = {}
    for row in args.rows:
        results = [run_one([*args.overrides, *ROWS[row]], args.out / f"{row}-s{seed}", args.steps, seed)
                   for seed in args.seeds]
        table[row] = aggregate(results)
        print(row, json.dumps(table[row]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text(markdown(table, len(args.seeds)))
    plot(table, args.out / "ablation.png")
    summary = {"steps": args.steps, "seeds": args.seeds, "rows": table}
    (args.out / "ablation.json").write_text(json.dumps(summary))
    print(markdown(table, len(args.seeds)))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
