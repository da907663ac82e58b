"""Presets: named sets of defaults for evaluation and test-time scaling (`evaluate.py` / `tts.py --preset`).
A flag given on the command line overrides its preset's value.

ours   the project's way: greedy, 1024 new tokens, the chat template's own system message, the final answer
       read as a careful human grader reads it ("lenient"); the loop shows the judge and the reflection the
       whole response with the method's templates, reads verdicts as spark.verify.parse_judgment does, and
       runs 2 rounds.
paper  the authors' evaluation as their scripts run it (InternLM/Spark, Evaluation/evaluation.py,
       evaluation_tts.py, calculate_acc.py): greedy, 2048 new tokens, repetition penalty 1.05, the system
       message "You are a helpful assistant.", the answer read from the first \\boxed{}; the loop shows the
       judge the final answer only, accepts it only when the judge's first \\boxed{} holds exactly "Yes", and
       otherwise asks again with their prompt that calls the answer incorrect, for 2 rounds. The score they
       report is the mean of the per-benchmark accuracies (summary.json's mean_accuracy).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from pathlib import Path

from spark.evaluation.tts import CONTENTS, Style
from spark.generation.sampler import Sampling
from spark.tasks.prompts import PAPER_SYSTEM
from spark.verify import ANSWER_MODES


@dataclass(frozen=True)
class Preset:
    sampling: Sampling
    style: Style  # templates, verdict rule, answer mode, system message (spark.evaluation.tts.Style)
    content: str  # what the judge and the reflection are shown of an answer (spark.evaluation.tts)
    max_rounds: int  # judge -> reflect rounds of the loop


PRESETS = {
    "ours": Preset(Sampling(max_new_tokens=1024, temperature=0.0), Style(), content="cot", max_rounds=2),
    "paper": Preset(Sampling(max_new_tokens=2048, temperature=0.0, repetition_penalty=1.05),
                    Style(templates="paper", answer_mode="first", system=PAPER_SYSTEM), content="answer",
                    max_rounds=2),
}


def resolve_preset(name: str, **flags) -> Preset:
    """Preset `name` with every flag that was given (not None) in place of its value: a Sampling field
    (max_new_tokens, temperature, top_p, top_k, repetition_penalty), a Style field (templates,
    answer_mode), content or max_rounds."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {tuple(PRESETS)}")
    given = {key: value for key, value in flags.items() if value is not None}

    def taken(cls) -> dict:
        return {f.name: given.pop(f.name) for f in fields(cls) if f.name in given}

    preset = PRESETS[name]
    sampling, style = replace(preset.sampling, **taken(Sampling)), replace(preset.style, **taken(Style))
    return replace(preset, sampling=sampling, style=style, **given)


def preset_values(key: str) -> str:
    """Each preset's value of a setting, for a flag's help: 'ours 1024, paper 2048'."""
    def value(preset: Preset):
        part = next(p for p in (preset.sampling, preset.style, preset) if key in {f.name for f in fields(p)})
        return getattr(part, key)
    return ", ".join(f"{name} {value(preset)}" for name, preset in PRESETS.items())


# The flags a preset gives defaults to: name -> (argparse keywords, what the value means).
PRESET_FLAGS: dict[str, tuple[dict, str]] = {
    "max_new_tokens": ({"type": int}, ""),
    "temperature": ({"type": float}, "0 = greedy"),
    "top_p": ({"type": float}, ""),
    "top_k": ({"type": int}, "0 = all"),
    "repetition_penalty": ({"type": float}, "1 = off"),
    "answer_mode": ({"choices": ANSWER_MODES}, "how the final answer is read (spark.verify)"),
    "max_rounds": ({"type": int}, "judge -> reflect rounds of test-time scaling"),
    "content": ({"choices": CONTENTS}, "what the judge and the reflection see: the whole answer (cot) or its "
                                       "final answer"),
}


def add_preset_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...], purpose: str) -> None:
    """--preset and the flags `names` (of PRESET_FLAGS), each defaulting to None (= its preset's value) with the
    presets' values in its help; `purpose` says what the paper preset reproduces."""
    parser.add_argument("--preset", default="ours", choices=PRESETS,
                        help=f"the prompts and the defaults of the flags that list them: ours, or paper (the "
                             f"authors' {purpose})")
    for name in names:
        keywords, meaning = PRESET_FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), **keywords,
                            help=f"{meaning + '; ' if meaning else ''}preset: {preset_values(name)}")


def add_tts_arguments(parser: argparse.ArgumentParser, *, after: str = "") -> None:
    """The test-time-scaling and model-placement flags evaluate.py and tts.py share; `after` names the flag they
    need ("--tts" in evaluate.py), which `check_tts_arguments` enforces."""
    needs = f"with {after}: " if after else ""
    parser.add_argument("--reject-above", type=float, metavar="P",
                        help=f"{needs}reflect only when the judge's probability of 'wrong' exceeds P (0.5: as a "
                             "greedy verdict; 1: never); default: whenever the verdict is not Yes")
    parser.add_argument("--calibrate", metavar="FILE",
                        help=f"{needs}pick --reject-above on FILE's problems (an evaluate.py --bench spec, or a "
                             "JSONL / Parquet path read as file:FILE), apart from the evaluated ones; writes "
                             "calibration.json and calibration.png into --out")
    parser.add_argument("--keep-better", action="store_true",
                        help=f"{needs}judge the last reflection too and keep, of all the answers, the one the "
                             "judge rates most likely right")
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="T",
                        help="under torchrun: groups of T ranks each hold 1/T of the model and its KV cache, and "
                             "run one share of the rows (T divides the GPUs of a node)")


def check_tts_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, *, after: str = "") -> None:
    """Refuse (parser.error) the flags of `add_tts_arguments` that cannot go together or are out of range."""
    if after and not getattr(args, after.lstrip("-")):
        for name, value in (("--reject-above", args.reject_above), ("--calibrate", args.calibrate),
                            ("--keep-better", args.keep_better or None)):
            if value is not None:
                parser.error(f"{name} {value} needs {after}")
    if args.reject_above is not None and args.calibrate is not None:
        parser.error(f"--reject-above {args.reject_above} and --calibrate {args.calibrate}: give one")
    if args.tensor_parallel < 1:
        parser.error(f"--tensor-parallel {args.tensor_parallel} must be >= 1")


def calibration_spec(value: str | None) -> str | None:
    """--calibrate's value as a benchmark spec: a path that exists is read as file:PATH."""
    return f"file:{value}" if value is not None and Path(value).exists() else value
