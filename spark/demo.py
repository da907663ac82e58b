r"""The CPU demo's pieces: a tiny checkpoint, a supervised warm-up, the run itself and the plot.

The demo trains a Qwen2 of about a million parameters on two-digit arithmetic (spark.arithmetic).
Before RL, a short supervised warm-up on chat-templated (prompt, response) pairs teaches the formats:

- policy:      worked answers ("47+38: 7+8=15, 4+3+1=8. \boxed{85}"), stopped early so the policy is well
               short of mastery;
- pointwise:   the judge recomputes the result, sets it beside the candidate, compares them digit by digit,
               says whether they are equal, then gives a verdict
               ("47+38: 7+8=15, 4+3+1=8. 85 vs 86: 8 8 same, 5 6 differ, so different. \boxed{No}").
               The verdicts are noisy and lenient (VERDICT_YES_SHARE): Yes after 80% of "equal" comparisons and
               after 60% of "different" ones. So the greedy judge says Yes to everything and starts at chance
               (balanced accuracy .50), but its verdict leans, weakly, on its own comparison; RL has to turn the
               lean into a judgement (No after "different") and improves the recomputation it shares with the
               policy. Digit by digit, because this model does not learn within the warm-up whether two whole
               numbers are equal ("85 vs 86: different"). A weak lean rather than coin flips, because coin-flip
               verdicts teach the verdict to ignore the comparison, and 30 RL steps at this scale did not build
               that dependence from nothing (judge .50 at every evaluation, whatever the learning rate or task
               weight): as for the policy, RL sharpens what the warm-up left. benchmarks/demo_judge.py measures
               each part of the judge's response;
- pairwise:    the same working, then a coin-flip letter;
- reflection:  the worked answer of the question;
- comparison drills: each problem's result beside a variant of it, compared digit by digit
               ("Compare 85 and 35 digit by digit." -> "85 vs 35: 8 3 differ, 5 5 same, so different."). Within
               the judge examples, where few digit pairs differ, the comparison was learnt late and abruptly, at a
               step that changed with rounding (one thread or two); the short drills, half their pairs different,
               have it learnt well before the warm-up ends.

The tokenizer is trained on the prompt templates and responses with the digits removed, so that every
digit stays its own token (as in Qwen's tokenizer) and template words become single tokens.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerFast

from spark import prompts
from spark.arithmetic import (
    judge_set,
    parse_question,
    plausible_wrong,
    problem_rows,
    result,
    split_problems,
    worked_answer,
    worked_steps,
    write_jsonl,
)
from spark.config import TrainConfig, load_config
from spark.data import Sample
from spark.models import Packing, load_model, save_model
from spark.tiny import build_tokenizer, make_tiny_checkpoint
from spark.trainer import Trainer


@dataclass
class DemoModel:
    """Size of the demo's Qwen2 (0.9M parameters). Eight small heads copy the question and the candidate
    out of the long judge templates better than four (judge recomputation 86% vs 70% after the same warm-up)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    vocab_size: int = 1024  # upper bound: the templates' words need fewer


# Share of the warm-up examples per task. Judge-heavy: copying the question and the candidate out of the
# long judge templates takes the model far longer to learn than the arithmetic of the short policy prompt.
WARMUP_MIX = {"policy": 0.25, "pointwise": 0.6, "pairwise": 0.05, "reflection": 0.1}
# Share of warm-up judge candidates that are wrong. One half: "same" and "differ" are then equally frequent,
# and the model has to compare rather than lean to the commoner word.
WRONG_CANDIDATE_SHARE = 0.5
# The comparison drill's user message (comparison_drill).
COMPARISON_PROMPT = "Compare {} and {} digit by digit."
# How often a warm-up judge says Yes after its comparison found the numbers equal / different: a lenient judge
# whose verdict leans weakly on the comparison, and which says Yes to everything when decoded greedily.
VERDICT_YES_SHARE = {"equal": 0.8, "different": 0.6}


# --------------------------------------------------------------------------- tokenizer and checkpoint


def tokenizer_corpus() -> list[str]:
    """Every template variant and response format, with the digits removed (see the module doc)."""
    a, op, b = 47, "+", 38
    question, solution = f"What is {a}{op}{b}?", worked_answer(a, op, b)
    texts = ["user\n", "assistant\n", prompts.math_prompt(question), solution,
             judge_response(question, "86", "No"), judge_response(question, "85", "Yes"),
             pairwise_response(question, "A"), pairwise_response(question, "B"),
             *comparison_drill("85", random.Random(0))]
    for cot in (False, True):
        shown = solution if cot else "85"
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


def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """The chat-templated user message, ending with the assistant header."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- warm-up data


def digit_pairs(number: str, other: str) -> str:
    """"85", "86" -> "8 8 same, 5 6 differ": aligned on the units, the shorter number padded with zeros."""
    width = max(len(number), len(other))
    pairs = zip(number.zfill(width), other.zfill(width))
    return ", ".join(f"{x} {y} {'same' if x == y else 'differ'}" for x, y in pairs)


def comparison(number: str, other: str) -> str:
    """"85", "86" -> "85 vs 86: 8 8 same, 5 6 differ, so different"."""
    return f"{number} vs {other}: {digit_pairs(number, other)}, so {'equal' if number == other else 'different'}"


def judge_response(question: str, candidate: str, verdict: str) -> str:
    r"""A pointwise judge's response: recompute, set the result beside the candidate and compare them digit by
    digit, say whether they are equal, then the verdict:
    "47+38: 7+8=15, 4+3+1=8. 85 vs 86: 8 8 same, 5 6 differ, so different. \boxed{No}"."""
    a, op, b = parse_question(question)
    return f"{worked_steps(a, op, b)}. {comparison(str(result(a, op, b)), candidate)}. \\boxed{{{verdict}}}"


def comparison_drill(number: str, rng: random.Random) -> tuple[str, str]:
    """A (user message, response) pair that drills the judge's comparison on its own: `number` beside a variant
    of it whose every digit is kept or changed with equal odds ("Compare 85 and 35 digit by digit.")."""
    other = str(int("".join(d if rng.random() < 0.5 else rng.choice("0123456789".replace(d, "")) for d in number)))
    return COMPARISON_PROMPT.format(number, other), f"{comparison(number, other)}."


def pairwise_response(question: str, letter: str) -> str:
    a, op, b = parse_question(question)
    return f"{worked_steps(a, op, b)}. {result(a, op, b)}. \\boxed{{{letter}}}"


def shown_answer(question: str, answer: str, cot: bool) -> str:
    r"""A candidate as a judge sees it: the final answer, or (cot) a worked answer ending in \boxed{answer}."""
    return f"{worked_steps(*parse_question(question))}. \\boxed{{{answer}}}" if cot else answer


def warmup_examples(problems: list[Sample], seed: int) -> list[tuple[str, str]]:
    """(user message, response) pairs over `problems`: for each problem, one task drawn with WARMUP_MIX and a
    comparison drill of its result.

    Judge candidates are the gold answer or a plausible wrong one (see WRONG_CANDIDATE_SHARE), shown as a
    final answer or inside a worked answer (half each), with a random template variant. Verdicts are drawn with
    VERDICT_YES_SHARE; pairwise letters are coin flips."""
    rng = random.Random(seed)
    examples = []
    for sample in problems:
        question = sample.meta["question"]
        a, op, b = parse_question(question)
        task = rng.choices(list(WARMUP_MIX), weights=list(WARMUP_MIX.values()))[0]
        wrong = str(plausible_wrong(a, op, b, rng))
        candidate = wrong if rng.random() < WRONG_CANDIDATE_SHARE else sample.gold
        cot, variant = rng.random() < 0.5, rng.randrange(3)
        if task == "policy":
            examples.append((sample.prompt, worked_answer(a, op, b)))
        elif task == "pointwise":
            prompt = prompts.pointwise_prompt(question, shown_answer(question, candidate, cot), cot=cot,
                                              variant=variant)
            yes_share = VERDICT_YES_SHARE["equal" if candidate == sample.gold else "different"]
            examples.append((prompt, judge_response(question, candidate, "Yes" if rng.random() < yes_share else "No")))
        elif task == "pairwise":
            pair = [shown_answer(question, sample.gold, cot), shown_answer(question, wrong, cot)]
            rng.shuffle(pair)
            prompt = prompts.pairwise_prompt(question, *pair, cot=cot, variant=variant)
            examples.append((prompt, pairwise_response(question, rng.choice("AB"))))
        else:
            prompt = prompts.reflection_prompt(question, shown_answer(question, wrong, cot), cot=cot,
                                               variant=variant)
            examples.append((prompt, worked_answer(a, op, b)))
        examples.append(comparison_drill(sample.gold, rng))
    return examples


# --------------------------------------------------------------------------- warm-up


def encode_example(tokenizer: PreTrainedTokenizerFast, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of prompt + response + end-of-turn, and the number of prompt tokens."""
    context = prompt_ids(tokenizer, prompt)
    completion = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return context + completion, len(context)


def response_nll(model: nn.Module, batch: list[tuple[list[int], int]]) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens of `batch`, packed into one stream (no padding: the
    comparison drills are a third the length of the judge examples).

    loss = -sum_{b, t in response_b} log p(x_{b,t} | x_{b,<t}) / #response tokens
    """
    input_ids = torch.tensor([token for ids, _ in batch for token in ids])[None]  # [1, N]
    targets = torch.full_like(input_ids, -100)  # [1, N]: the next token where it is a response token
    start = 0
    for ids, num_prompt in batch:
        targets[0, start + num_prompt - 1:start + len(ids) - 1] = torch.tensor(ids[num_prompt:])
        start += len(ids)
    logits = model(input_ids, packing=Packing.from_lengths([len(ids) for ids, _ in batch]))  # [1, N, V]
    return F.cross_entropy(logits[0].float(), targets[0], ignore_index=-100)


def warm_up(model: nn.Module, tokenizer: PreTrainedTokenizerFast, examples: list[tuple[str, str]], *,
            steps: int, batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Supervised fine-tuning on random batches of `examples` with AdamW at a constant learning rate;
    returns the loss of every step. No decay: stopped mid-descent, the policy keeps its correct answers
    close to its mistakes, which RL then sharpens within minutes (an annealed warm-up with the same
    accuracy improved far more slowly under RL)."""
    encoded = [encode_example(tokenizer, prompt, response) for prompt, response in examples]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = response_nll(model, rng.sample(encoded, batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


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
    """Sizes of the demo's data and warm-up: 1,300 steps of 32 examples (about half of them comparison drills)
    leave the policy well short of mastery and the greedy judge at chance, with the digit comparison learnt
    (benchmarks/demo_judge.py measures what the judge learnt)."""

    num_train: int = 8000  # RL training problems (the warm-up draws from the same set)
    num_heldout: int = 256  # held-out policy problems
    num_judge: int = 256  # held-out pointwise judge rows, half Yes and half No, from other held-out problems
    warmup_steps: int = 1300
    warmup_batch: int = 32
    warmup_lr: float = 2e-3
    seed: int = 0


def prepare(run_dir: str | Path, setup: DemoSetup | None = None, model: DemoModel | None = None) -> dict:
    """Write the demo's data, build the tiny checkpoint and warm it up.

    run_dir/data/train.jsonl    rows {question, answer} for the trainer
    run_dir/data/heldout.jsonl  rows {question, answer}: held-out policy problems
    run_dir/data/judge.jsonl    rows {question, answer, label}: held-out pointwise judge set
    run_dir/init/               the random checkpoint; run_dir/warmup/ the warmed-up one (RL starts here)
    Returns those paths and the warm-up's first and last losses; the trainer's evaluation at step 0 measures
    the warmed-up held-out accuracies.
    """
    setup = setup or DemoSetup()
    run_dir = Path(run_dir)
    torch.manual_seed(setup.seed)
    train, heldout = split_problems(setup.num_train, setup.num_heldout + setup.num_judge, setup.seed)
    policy_eval, judge_eval = heldout[:setup.num_heldout], judge_set(heldout[setup.num_heldout:], setup.seed)
    paths = {
        "train": write_jsonl(problem_rows(train), run_dir / "data" / "train.jsonl"),
        "heldout": write_jsonl(problem_rows(policy_eval), run_dir / "data" / "heldout.jsonl"),
        "judge": write_jsonl(judge_eval, run_dir / "data" / "judge.jsonl"),
        "init": build_demo_checkpoint(run_dir / "init", model, setup.seed),
        "warmup": run_dir / "warmup",
    }
    tokenizer = PreTrainedTokenizerFast.from_pretrained(paths["init"])
    policy = load_model(paths["init"])
    examples = warmup_examples(train, setup.seed)
    losses = warm_up(policy, tokenizer, examples, steps=setup.warmup_steps, batch_size=setup.warmup_batch,
                     lr=setup.warmup_lr, seed=setup.seed)
    # Written aside and renamed, so that an interrupted warm-up is redone rather than trained from.
    save_model(policy, run_dir / "warmup.tmp")
    (run_dir / "warmup.tmp").rename(paths["warmup"])
    return {
        **{name: str(path) for name, path in paths.items()},
        "warmup_loss_first": losses[0],
        "warmup_loss_last": sum(losses[-20:]) / len(losses[-20:]),
    }


# --------------------------------------------------------------------------- `make demo`

CONFIG = Path("configs/tiny.toml")
ABLATION_DIR = Path("runs/demo-policy-only")  # where the README's policy-only ablation runs


def summarize(records: list[dict]) -> dict[str, float]:
    """Held-out accuracies at the first and last evaluated step of a run's metrics.jsonl records.
    A step logged twice (a run resumed from an earlier checkpoint) counts at its last record."""
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
    configs/tiny.toml and `overrides`, plot the held-out accuracies (with the policy-only ablation dashed when it
    has run) and print the summary as the last line."""
    started = time.time()
    config = load_config(TrainConfig, CONFIG, overrides)
    checkpoint = Path(config.model.path)
    if not checkpoint.exists():  # the warm-up's batches of 32 use torch's default threads (both cores here)
        warmed = prepare(checkpoint.parent, DemoSetup(seed=config.data.seed))  # data.seed=1: another demo
        print("warm-up:", json.dumps({k: v for k, v in warmed.items() if isinstance(v, float)}), flush=True)
    # RL's many small decode steps: on a busy 2-core machine one thread beat two.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    Trainer(config).train()
    out_dir = Path(config.run.out_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    plot_runs([out_dir, Path(load_config(TrainConfig, CONFIG).run.out_dir)])
    summary = {**summarize(records), "minutes": round((time.time() - started) / 60, 2)}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
