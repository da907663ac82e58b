"""Test-time scaling on one problem, shown turn by turn: answer, self-judgment, reflection (spark.evaluation.tts).

    python tts.py --model CKPT_DIR --question "What is 17 * 23?" [--gold 391] [--image fig.png [--image fig2.png]]
    python tts.py --model CKPT_DIR --question "..." --image fig.png --preset paper   # as the authors ran it

--preset sets the defaults that the flags' help lists as (preset: ...): "ours" (the default) or "paper", the authors'
settings with their prompts (spark.evaluation.presets); a flag given explicitly overrides its preset's value.
"""

from __future__ import annotations

import sys
from argparse import RawDescriptionHelpFormatter

import torch

from spark.cli import ArgumentParser, flag_error, run_command
from spark.errors import SettingError
from spark.evaluation.presets import add_preset_arguments, resolve_preset
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-prompts", action="store_true", help="also print the prompt of every turn")
    return parser


def main(argv: list[str] | None = None) -> str:
    from spark.generation.chat import load_chat_model

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
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_chat_model(args.model, device=device, dtype=dtype)
    (trace,) = run_tts(model, [Problem(args.question, args.gold, args.image)], max_rounds=preset.max_rounds,
                       sampling=preset.sampling, seed=args.seed, content=preset.content, style=preset.style)
    text = f"Preset: {args.preset}\n" + format_trace(trace, show_prompts=args.show_prompts)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
