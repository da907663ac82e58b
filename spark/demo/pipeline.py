r"""The CPU demo: its tiny checkpoint, its starting point (data + warm-up), the run itself and the plot.

The demo trains a Qwen2 of about a million parameters on the arithmetic task of spark.demo.arithmetic (which holds
the task's formats and warm-up examples); spark.demo.warmup is the supervised warm-up that teaches those formats
before RL. docs/demo.md has the demo's figures and the commands that produce them.

The tokenizer is trained on the prompt templates and responses with the digits removed, so that every
digit stays its own token (as in Qwen's tokenizer) and template words become single tokens.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from spark.config import TrainConfig, load_config
from spark.data.rows import Sample
from spark.demo.arithmetic import (
    calibration_problems,
    comparison_drill,
    judge_response,
    judge_set,
    pairwise_response,
    problem_rows,
    question_text,
    split_problems,
    warmup_examples,
    worked_answer,
    write_jsonl,
)
from spark.demo.warmup import warm_up
from spark.evaluation.calibration import calibrate, paths
from spark.evaluation.curve import draw_curve
from spark.evaluation.scoring import self_judgment
from spark.evaluation.tts import Problem, answer, reflection_alone, run_tts, tts_statistics
from spark.generation.chat import ChatModel, load_chat_model
from spark.generation.sampler import Sampling
from spark.models import load_model, save_model
from spark.models.tiny import build_tokenizer, make_tiny_checkpoint
from spark.tasks import prompts
from spark.trainer import Trainer


@dataclass
class DemoModel:
    """Size of the demo's Qwen2 (0.9M parameters). Eight small heads rather than four: the judge copies the
    question and the candidate out of long templates."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    vocab_size: int = 1024  # upper bound: the templates' words need fewer


# --------------------------------------------------------------------------- tokenizer and checkpoint


def tokenizer_corpus() -> list[str]:
    """Every template variant and response format, with the digits removed (see the module doc)."""
    a, op, b = 85, "-", 38
    question, solution = question_text(a, op, b), worked_answer(a, op, b)
    texts = ["user\n", "assistant\n", prompts.math_prompt(question), solution,
             judge_response(question, "48", "No"), judge_response(question, "47", "Yes"),
             pairwise_response(question, "47", "A"), pairwise_response(question, "48", "B"),
             *comparison_drill("85", random.Random(0))]
    for cot in (False, True):
        shown = solution if cot else "47"
        for variant in range(max(prompts.NUM_VARIANTS.values())):
            texts += [prompts.pointwise_prompt(question, shown, cot=cot, variant=variant),
                      prompts.pairwise_prompt(question, shown, "86", cot=cot, variant=variant),
                      prompts.reflection_prompt(question, shown, cot=cot, variant=variant)]
    return [re.sub(r"\d", "", text) for text in texts]


def build_demo_checkpoint(path: str | Path, model: DemoModel | None = None, seed: int = 0) -> Path:
    """A randomly initialised Qwen2 with the demo's tokenizer, in Hugging Face format."""
    model = model or DemoModel()
    tokenizer = build_tokenizer(tokenizer_corpus(), vocab_size=model.vocab_size)
    return make_tiny_checkpoint(path, hidden_size=model.hidden_size, num_layers=model.num_layers,
                                num_heads=model.num_heads, num_kv_heads=model.num_kv_heads,
                                tokenizer=tokenizer, seed=seed)


# --------------------------------------------------------------------------- plot


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(metrics_jsonl: str | Path, png_path: str | Path, ablation_jsonl: str | Path | None = None, *,
                 keys: tuple[str, ...] = ("eval/policy_acc", "eval/judge_acc")) -> Path:
    """Held-out accuracies vs step, one panel per metric key; the policy-only ablation dashed when given.
    Rows without a key (steps with no evaluation) are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"SPARK": read_metrics(metrics_jsonl)}
    if ablation_jsonl is not None:
        runs["policy-only"] = read_metrics(ablation_jsonl)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (name, rows), style in zip(runs.items(), ("-o", "--s")):
            points = [(row["step"], row[key]) for row in rows if key in row]
            if points:
                ax.plot(*zip(*points), style, label=name, markersize=3)
        ax.set(title=key, xlabel="step", ylabel="held-out accuracy", ylim=(0, 1))
        if "judge" in key:
            ax.axhline(0.5, color="grey", lw=0.5)  # chance for a balanced Yes/No set
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


# --------------------------------------------------------------------------- the demo's starting point


@dataclass
class DemoSetup:
    """Sizes of the demo's data and warm-up (batches of 32 examples, about half of them comparison drills).

    The warm-up runs until the policy's greedy accuracy on the probe problems (held out from everything else)
    reaches `warmup_target`, asked every `warmup_check_every` steps, rather than for a fixed number of steps:
    where a fixed number of steps ends moves with floating-point rounding (threads, CPU), and the RL start
    with it."""

    num_train: int = 3400  # RL training problems (the warm-up draws from the same set)
    num_heldout: int = 256  # held-out policy problems
    num_judge: int = 256  # held-out pointwise judge rows, half Yes and half No, from other held-out problems
    num_probe: int = 128  # held-out problems the warm-up's stopping rule is measured on
    warmup_target: float = 0.45
    warmup_check_every: int = 100
    warmup_max_steps: int = 3000
    warmup_batch: int = 32
    warmup_lr: float = 2e-3
    seed: int = 0


GREEDY = Sampling(max_new_tokens=64, temperature=0.0)  # the demo's evaluations: a worked answer is ~30 tokens


def policy_accuracy(chat: ChatModel, problems: list[Sample]) -> float:
    """Greedy accuracy of the model's first answers."""
    traces = answer(chat, [Problem(s.meta["question"], s.gold) for s in problems], sampling=GREEDY)
    return sum(bool(t[0].final.correct) for t in traces) / len(traces)


def prepare(run_dir: str | Path, setup: DemoSetup | None = None, model: DemoModel | None = None) -> dict:
    """Write the demo's data, build the tiny checkpoint and warm it up (DemoSetup says until when).

    run_dir/data/train.jsonl    rows {question, answer} for the trainer
    run_dir/data/heldout.jsonl  rows {question, answer}: held-out policy problems
    run_dir/data/judge.jsonl    rows {question, answer, label}: held-out pointwise judge set
    run_dir/data/calibration.jsonl  rows {question, answer}: the problems TTS calibrates its threshold on
                                    (`write_calibration`)
    run_dir/init/               the random checkpoint; run_dir/warmup/ the warmed-up one (RL starts here)
    Returns those paths, the warm-up's steps, its first and last losses and its probe accuracy; the trainer's
    evaluation at step 0 measures the warmed-up held-out accuracies.
    """
    setup = setup or DemoSetup()
    run_dir = Path(run_dir)
    torch.manual_seed(setup.seed)
    train, heldout = split_problems(setup.num_train, setup.num_heldout + setup.num_judge + setup.num_probe, setup.seed)
    policy_eval, judge_eval, probe = (heldout[:setup.num_heldout], heldout[setup.num_heldout:-setup.num_probe],
                                      heldout[-setup.num_probe:])
    paths = {
        "train": write_jsonl(problem_rows(train), run_dir / "data" / "train.jsonl"),
        "heldout": write_jsonl(problem_rows(policy_eval), run_dir / "data" / "heldout.jsonl"),
        "judge": write_jsonl(judge_set(judge_eval, setup.seed), run_dir / "data" / "judge.jsonl"),
        "calibration": write_calibration(run_dir / "data" / "calibration.jsonl",
                                         [run_dir / "data" / name for name in ("train.jsonl", "heldout.jsonl",
                                                                               "judge.jsonl")]),
        "init": build_demo_checkpoint(run_dir / "init", model, setup.seed),
        "warmup": run_dir / "warmup",
    }
    tokenizer = PreTrainedTokenizerFast.from_pretrained(paths["init"])
    policy = load_model(paths["init"])
    chat = ChatModel(policy, tokenizer, (tokenizer.eos_token_id,))
    probed: list[float] = []

    def reached(step: int) -> bool:
        probed.append(policy_accuracy(chat, probe))
        print(f"warm-up step {step}: probe policy accuracy {probed[-1]:.3f}", flush=True)
        return probed[-1] >= setup.warmup_target

    losses = warm_up(policy, tokenizer, warmup_examples(train, setup.seed), steps=setup.warmup_max_steps,
                     batch_size=setup.warmup_batch, lr=setup.warmup_lr, seed=setup.seed, stop=reached,
                     check_every=setup.warmup_check_every)
    # Written aside and renamed, so that an interrupted warm-up is redone rather than trained from.
    save_model(policy, run_dir / "warmup.tmp")
    (run_dir / "warmup.tmp").rename(paths["warmup"])
    return {
        **{name: str(path) for name, path in paths.items()},
        "warmup_steps": len(losses),
        "warmup_loss_first": losses[0],
        "warmup_loss_last": sum(losses[-20:]) / len(losses[-20:]),
        "warmup_probe_acc": probed[-1],
    }


def calibration_rows(splits: list[str | Path]) -> list[dict]:
    """The calibration split (spark.demo.arithmetic.calibration_problems) apart from the questions of the data
    files `splits`, as rows {question, answer}."""
    return problem_rows(calibration_problems({row["question"] for split in splits for row in read_metrics(split)}))


def write_calibration(path: str | Path, splits: list[str | Path]) -> Path:
    return write_jsonl(calibration_rows(splits), path)


def calibration_file(config: TrainConfig) -> Path:
    """The run's calibration split, beside its held-out file: written apart from its training, held-out and judge
    files when missing (a run prepared before the split existed)."""
    path = Path(config.run.eval_files[0]).parent / "calibration.jsonl"
    if not path.exists():
        write_calibration(path, [*config.data.train_files, *config.run.eval_files, *config.run.judge_eval_files])
    return path


def ensure_prepared(config: TrainConfig) -> dict | None:
    """The demo's data and warmed-up checkpoint for `config` (configs/tiny.toml: runs/demo/data/*.jsonl and
    runs/demo/warmup), prepared into model.path's parent unless model.path exists; prepare's summary, or None
    when there was nothing to do. A benchmark that starts from the demo's start calls this."""
    checkpoint = Path(config.model.path)
    if checkpoint.exists():
        return None
    return prepare(checkpoint.parent, DemoSetup(seed=config.data.seed))  # data.seed=1: another demo


# --------------------------------------------------------------------------- test-time scaling


def tts_content(config: TrainConfig) -> str:
    """The form the run trained its judge in, for the judge and the reflection at test time: answer-based unless
    every recycled judge sample was CoT-based."""
    return "cot" if config.spark.recycle.content == "cot" else "answer"


def tts_summary(checkpoint: str | Path, heldout: list[dict], *, content: str, max_rounds: int = 2,
                reject_above: float | None = None, keep_better: bool = False) -> dict:
    """spark.evaluation.tts on the held-out rows {question, answer} with `checkpoint`, greedy, with the judge's rule
    `reject_above` (and `keep_better`): the final answers' accuracy, the model's verdicts on its own first answers (self_judgment:
    precision / recall / F1 of Yes = correct) and the loop's statistics (spark.evaluation.tts.tts_statistics;
    accuracy_by_round[0] is the accuracy without the loop), and what one reflection on every first answer, the judge
    left out, fixes and keeps (spark.evaluation.tts.reflection_alone)."""
    chat = load_chat_model(str(checkpoint))
    traces = run_tts(chat, [Problem(row["question"], row["answer"]) for row in heldout], max_rounds=max_rounds,
                     sampling=GREEDY, content=content, reject_above=reject_above, keep_better=keep_better)
    return {"accuracy": sum(bool(t.final.correct) for t in traces) / len(traces),
            "self_judgment": self_judgment(traces), **tts_statistics(traces, max_rounds, reject_above),
            "reflection_alone": reflection_alone(chat, traces, sampling=GREEDY, content=content)}


def calibrated_tts(checkpoint: str | Path, heldout: list[dict], calibration: list[dict], *, content: str,
                   max_rounds: int = 2, keep_better: bool = False) -> dict:
    """tts_summary at the rejection threshold calibrated on the calibration rows (the loop at threshold 0 there,
    then spark.evaluation.calibration.calibrate), with `threshold`, the `calibration` (its curve) and, as
    `uncalibrated`, tts_summary with the verdict rule (reflect whenever the verdict is not Yes)."""
    traces = run_tts(load_chat_model(str(checkpoint)), [Problem(row["question"], row["answer"]) for row in calibration],
                     max_rounds=max_rounds, sampling=GREEDY, content=content, reject_above=0.0, keep_better=keep_better)
    result = calibrate(paths(traces))
    return {**tts_summary(checkpoint, heldout, content=content, max_rounds=max_rounds,
                          reject_above=result["threshold"], keep_better=keep_better),
            "threshold": result["threshold"], "calibration": result,
            "uncalibrated": tts_summary(checkpoint, heldout, content=content, max_rounds=max_rounds,
                                        keep_better=keep_better)}


# --------------------------------------------------------------------------- `make demo`

CONFIG = Path("configs/tiny.toml")
ABLATION_DIR = Path("runs/demo-policy-only")  # where docs/demo.md's policy-only ablation runs


def summarize(records: list[dict]) -> dict[str, float]:
    """Held-out accuracies at the first and last evaluated step of a run's metrics.jsonl records."""
    summary: dict[str, float] = {}
    for name in ("policy_acc", "judge_acc"):
        by_step = {row["step"]: row[f"eval/{name}"] for row in records if f"eval/{name}" in row}
        if not by_step:
            raise ValueError(f"summarize: no 'eval/{name}' in the metrics; set run.eval_every and the eval files")
        summary[f"{name}_start"] = by_step[min(by_step)]
        summary[f"{name}_end"] = by_step[max(by_step)]
    summary["steps"] = max(row["step"] for row in records)
    return summary


def plot_runs(run_dirs: list[Path]) -> None:
    """run_dir/metrics.png for each run that has metrics, the policy-only ablation dashed on the others'."""
    ablation = ABLATION_DIR / "metrics.jsonl"
    for run_dir in set(run_dirs):
        if (run_dir / "metrics.jsonl").exists():
            plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png",
                         ablation if ablation.exists() and run_dir != ABLATION_DIR else None)


def main(overrides: list[str]) -> dict[str, float]:
    """Warm up the tiny checkpoint into model.path's parent (once: skipped while model.path exists), train with
    configs/tiny.toml and `overrides`, run test-time scaling on the held-out problems with the start and the final
    model, its rejection threshold calibrated on the calibration split (`calibrated_tts`; the final model's curve in
    out_dir/calibration.png), plot the held-out accuracies (with the policy-only ablation dashed when it has run)
    and print the summary as the last line: held-out policy and judge accuracies at the first and last evaluation,
    and the accuracy with TTS of the start (tts_acc_start) and of the final model (tts_acc_end) at the calibrated
    threshold (tts_threshold_*), beside it with the verdict rule (tts_acc_*_uncalibrated)."""
    started = time.time()
    config = load_config(TrainConfig, CONFIG, overrides)
    # One thread unless OMP_NUM_THREADS says otherwise: RL's many small decode steps ran faster on one thread of a
    # busy 2-core machine, and a two-thread warm-up crawled there whenever another process held a core.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warmed = ensure_prepared(config)
    if warmed is not None:
        print("warm-up:", json.dumps({k: v for k, v in warmed.items() if not isinstance(v, str)}), flush=True)
    Trainer(config).train()
    out_dir = Path(config.run.out_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    plot_runs([out_dir, Path(load_config(TrainConfig, CONFIG).run.out_dir)])
    heldout, calibration = read_metrics(config.run.eval_files[0]), read_metrics(calibration_file(config))
    tts = {name: calibrated_tts(path, heldout, calibration, content=tts_content(config))
           for name, path in (("start", config.model.path), ("end", out_dir / "export"))}
    (out_dir / "tts.json").write_text(json.dumps(tts, indent=1))
    draw_curve(tts["end"]["calibration"], out_dir / "calibration.png",
               f"TTS calibration of the final model on {len(calibration)} calibration problems")
    summary = {**summarize(records), **{f"tts_acc_{name}": t["accuracy"] for name, t in tts.items()},
               **{f"tts_acc_{name}_uncalibrated": t["uncalibrated"]["accuracy"] for name, t in tts.items()},
               **{f"tts_threshold_{name}": t["threshold"] for name, t in tts.items()},
               **{f"tts_fixed_broke_{name}": [t["fixed"], t["broke"]] for name, t in tts.items()},
               "minutes": round((time.time() - started) / 60, 2)}
    print(json.dumps(summary), flush=True)
    return summary

