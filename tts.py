"""Test-time scaling on one problem, shown turn by turn: answer, self-judgment, reflection (spark.tts).

    python tts.py --model CKPT_DIR --question "What is 17 * 23?" [--gold 391] [--image fig.png [--image fig2.png]]
"""

from __future__ import annotations

import argparse

import torch

from spark.sampler import Sampling
from spark.tts import CONTENTS, Problem, format_trace, run_tts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--question", required=True)
    parser.add_argument("--image", action="append", default=[],
                        help="image file for a vision-language checkpoint (repeatable: shown in order, or at the "
                             "question's <image> placeholders)")
    parser.add_argument("--gold", help="gold answer: each answer is then marked correct or wrong")
    parser.add_argument("--max-rounds", type=int, default=2, help="judge -> reflect rounds")
    parser.add_argument("--content", default="cot", choices=CONTENTS,
                        help="what the judge and the reflection see: the whole answer (cot) or its final answer")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-prompts", action="store_true", help="also print the prompt of every turn")
    return parser


def main(argv: list[str] | None = None) -> str:
    from spark.chat import load_chat_model

    args = build_parser().parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_chat_model(args.model, device=device, dtype=dtype)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    (trace,) = run_tts(model, [Problem(args.question, args.gold, args.image)], max_rounds=args.max_rounds,
                       sampling=sampling, seed=args.seed, content=args.content)
    text = format_trace(trace, show_prompts=args.show_prompts)
    print(text)
    return text


if __name__ == "__main__":
    main()
