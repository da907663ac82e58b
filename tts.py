"""Test-time scaling on one problem, shown turn by turn: answer, self-judgment, reflection (spark.evaluation.tts).

    python tts.py --model CKPT_DIR --question "What is 17 * 23?" [--gold 391] [--image fig.png [--image fig2.png]]
    python tts.py --model CKPT_DIR --question "..." --image fig.png --preset paper   # as the authors ran it
    python tts.py --model CKPT_DIR --question "What is 17 * 23?" --calibrate dev.jsonl  # the threshold picked there
    torchrun --nproc-per-node 4 tts.py --model CKPT_32B --question "..." --tensor-parallel 4  # 1/4 of it per GPU

--preset sets the defaults that the flags' help lists as (preset: ...): "ours" (the default) or "paper", the authors'
settings with their prompts (spark.evaluation.presets); a flag given explicitly overrides its preset's value.
"""

from __future__ import annotations

import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

import torch

from spark.cli import ArgumentParser, flag_error, run_command
from spark.data.rows import Sample
from spark.errors import SettingError
from spark.evaluation.inference import EvalConfig
from spark.evaluation.loaders import Benchmark, parse_spec
from spark.evaluation.presets import (
    add_preset_arguments,
    add_tts_arguments,
    calibration_spec,
    check_tts_arguments,
    resolve_preset,
)
from spark.evaluation.runner import Shard, check_apart, format_calibration, run_calibration
from spark.evaluation.tts import Problem, format_trace, run_tts


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tts.py", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--question", required=True)
    parser.add_argument("--image", action="append", default=[],
                        help="image file for a vision-language checkpoint (repeatable: shown in order, or at the "
                             "question's <image> placeholders)")
    parser.add_argument("--gold", help="gold answer: each answer is then marked correct or wrong")
    add_preset_arguments(parser, ("max_rounds", "content", "max_new_tokens", "temperature", "repetition_penalty",
                                  "answer_mode"), "test-time scaling")
    add_tts_arguments(parser)
    parser.add_argument("--out", type=Path, help="with --calibrate: where calibration.json and calibration.png go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-prompts", action="store_true", help="also print the prompt of every turn")
    return parser


def main(argv: list[str] | None = None) -> str:
    from spark.distributed.groups import close_distributed, init_distributed
    from spark.generation.chat import load_chat_model
    from spark.generation.tensor_parallel import tensor_parallel_group

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        preset = resolve_preset(args.preset, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                repetition_penalty=args.repetition_penalty, answer_mode=args.answer_mode,
                                content=args.content, max_rounds=args.max_rounds)
    except SettingError as e:
        raise flag_error(parser.prog, e) from None
    if preset.max_rounds < 0:
        parser.error(f"--max-rounds {preset.max_rounds} must be >= 0")
    check_tts_arguments(parser, args)
    try:
        cfg = EvalConfig(sampling=preset.sampling, seed=args.seed, tts=True, max_rounds=preset.max_rounds,
                         reject_above=args.reject_above, keep_better=args.keep_better, content=preset.content,
                         style=preset.style,
                         preset=args.preset)
    except SettingError as e:
        raise flag_error(parser.prog, e) from None
    calibration = None
    if args.calibrate is not None:
        calibration = parse_spec(calibration_spec(args.calibrate),
                                 Path(__file__).resolve().parent / "data" / "eval")
        asked = Sample("", args.gold or "", images=args.image, meta={"question": args.question})
        check_apart(calibration, [Benchmark("--question", "math", [asked])])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    group, place = None, 0
    if args.tensor_parallel > 1:  # every rank runs the problem in step; rank 0 shows it and writes
        world = init_distributed()
        group, device, place = tensor_parallel_group(args.tensor_parallel), world.device, world.rank
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_chat_model(args.model, device=device, dtype=dtype, tensor_parallel=group)
    header = f"Preset: {args.preset}\n"
    if calibration is not None:
        if args.out is not None and place == 0:
            args.out.mkdir(parents=True, exist_ok=True)
        result = run_calibration(model, calibration, cfg, out_dir=args.out, shard=Shard(member=place))
        cfg.reject_above = result["threshold"]
        header += format_calibration(result) + "\n"
    (trace,) = run_tts(model, [Problem(args.question, args.gold, args.image)], max_rounds=cfg.max_rounds,
                       sampling=cfg.sampling, seed=args.seed, content=cfg.content, style=cfg.style,
                       reject_above=cfg.reject_above, keep_better=cfg.keep_better)
    text = header + format_trace(trace, show_prompts=args.show_prompts)
    if place == 0:
        print(text)
    if group is not None:
        close_distributed()
    return text


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
