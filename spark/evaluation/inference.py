"""Running the model on benchmark items: one record (a JSON-ready dict) per item, in item order.

math: the model answers (n samples), then, as configured, judges its own answers (self-judgment) or
runs the test-time loop on them (spark.evaluation.tts). rb2: the model rates each candidate response
(rating_prompt). vlrb: the model compares the two responses (vl_rewardbench_prompt) in both orders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from spark.data.images import ImageSource, image_label
from spark.data.rows import Sample
from spark.errors import check_ranges, ranged
from spark.evaluation.loaders import BestOfNItem, PairItem
from spark.evaluation.scoring import best_of_n_correct, pairwise_correct, parse_rating, rounds_to
from spark.evaluation.tts import Problem, Style, answer, judge, refine
from spark.generation.sampler import Sampling
from spark.tasks.prompts import rating_prompt, vl_rewardbench_prompt
from spark.verify import parse_judgment


@dataclass
class EvalConfig:
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0))
    seed: int = ranged(0, ">= 0")
    n: int = ranged(1, ">= 1")  # samples per math question: mean@n and pass@n (the judge benchmarks use one)
    judge: bool = False  # the model also judges each of its answers (self-judgment P/R/F1)
    tts: bool = False  # the test-time loop on each answer (implies judging)
    max_rounds: int = ranged(2, ">= 0")  # judge -> reflect rounds of the loop
    # reflect only when the judge's probability of "wrong" exceeds this; None: whenever its verdict is not Yes
    reject_above: float | None = ranged(None, "[0, 1]")
    keep_better: bool = False  # judge the last reflection too and keep the answer the judge rates most likely right
    content: str = "cot"  # what the judge and the reflection see of an answer: "cot" (all of it) | "answer" (spark.evaluation.tts)
    style: Style = field(default_factory=Style)  # templates, verdict rule, answer mode, system message (spark.evaluation.tts)
    preset: str = "ours"  # the preset these settings came from (spark.evaluation.presets), recorded with the results
    batch_size: int = ranged(64, ">= 1")  # items per generate call

    def __post_init__(self):
        check_ranges(self)


def run_math(model, samples: list[Sample], cfg: EvalConfig) -> list[dict]:
    problems = [Problem(s.meta["question"], s.gold, s.images) for s in samples]
    rows = answer(model, problems, sampling=cfg.sampling, seed=cfg.seed, n=cfg.n, style=cfg.style)
    traces = [trace for row in rows for trace in row]
    if cfg.tts:
        refine(model, traces, max_rounds=cfg.max_rounds, sampling=cfg.sampling, seed=cfg.seed, content=cfg.content,
               style=cfg.style, reject_above=cfg.reject_above, keep_better=cfg.keep_better)
    elif cfg.judge:
        judge(model, traces, sampling=cfg.sampling, seed=cfg.seed, content=cfg.content, style=cfg.style)
    for sample, row in zip(samples, rows):
        if "precision" in sample.meta:  # MathVista's floats: a prediction counts once rounded to the gold's decimals
            for turn in (turn for trace in row for turn in trace.answers):
                turn.correct = turn.correct or rounds_to(turn.extracted, sample.gold, sample.meta["precision"])
    return [
        {"question": p.question, "gold": p.gold, "images": [image_label(i) for i in p.images],
         "traces": [t.to_dict() for t in row]}
        for p, row in zip(problems, rows)
    ]


def _first_completions(model, prompts: list[str], images: list[list[ImageSource]], cfg: EvalConfig) -> list:
    outputs = model.generate(prompts, images, n=1, seed=cfg.seed, system=cfg.style.system, **asdict(cfg.sampling))
    return [completions[0] for completions in outputs]


def run_rb2(model, items: list[BestOfNItem], cfg: EvalConfig) -> list[dict]:
    candidates = [item.chosen + item.rejected for item in items]
    prompts = [rating_prompt(item.prompt, c) for item, cs in zip(items, candidates) for c in cs]
    outputs = iter(_first_completions(model, prompts, [[]] * len(prompts), cfg))
    records = []
    for item, cs in zip(items, candidates):
        judgments = [next(outputs) for _ in cs]
        ratings = [parse_rating(j.text) for j in judgments]
        records.append({
            "id": item.id,
            "subset": item.subset,
            "num_chosen": len(item.chosen),
            "ratings": ratings,
            "correct": best_of_n_correct(ratings[: len(item.chosen)], ratings[len(item.chosen):]),
            "unparsed": sum(r is None for r in ratings),
            "num_tokens": sum(j.num_tokens for j in judgments),
            "judgments": [j.text for j in judgments],
        })
    return records


def run_vlrb(model, items: list[PairItem], cfg: EvalConfig) -> list[dict]:
    prompts, images = [], []
    for item in items:
        first, second = item.responses
        prompts += [vl_rewardbench_prompt(item.query, first, second), vl_rewardbench_prompt(item.query, second, first)]
        images += [item.images, item.images]
    outputs = _first_completions(model, prompts, images, cfg)
    records = []
    for k, item in enumerate(items):
        forward, reverse = outputs[2 * k], outputs[2 * k + 1]
        picks = [parse_judgment(forward.text, "pairwise"), parse_judgment(reverse.text, "pairwise")]
        records.append({
            "id": item.id,
            "subset": item.subset,
            "better": item.better,
            "picks": picks,  # "A" = Answer 1; the reverse order shows the responses swapped
            "correct": pairwise_correct(picks[0], picks[1], item.better),
            "unparsed": sum(p is None for p in picks),
            "num_tokens": forward.num_tokens + reverse.num_tokens,
            "judgments": [forward.text, reverse.text],
        })
    return records


RUNS = {"math": run_math, "rb2": run_rb2, "vlrb": run_vlrb}
