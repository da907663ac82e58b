"""Evaluate a checkpoint on math and reward benchmarks (spark.evaluation).

    python evaluate.py --model CKPT_DIR --bench gsm8k,math500 --limit 20 --out runs/eval
    python evaluate.py --model CKPT_DIR --bench mmlu_stem --judge            # + self-judgment P/R/F1
    python evaluate.py --model CKPT_DIR --bench aime24 --n 8 --temperature 1  # mean@8 / pass@8
    python evaluate.py --model CKPT_DIR --bench 'mathvista:data/MathVista/data/testmini-*.parquet,mmk12:data/MMK12/data/test-*.parquet'
    python evaluate.py --model CKPT_DIR --bench 'file:mine.jsonl:question=q,answer=a,image=img,choices=opts'
    python evaluate.py --model CKPT_DIR --bench rb2:rewardbench2.parquet,vlrb:vl_rewardbench.parquet
    torchrun --nproc-per-node 2 evaluate.py --model CKPT_DIR --bench gsm8k --tts
    torchrun --nproc-per-node 8 evaluate.py --model CKPT_32B --bench math500 --tensor-parallel 4  # 2 groups of 4
    python evaluate.py --model CKPT_DIR --bench 'mathvista:...' --tts --preset paper  # as the authors ran it
    python evaluate.py --model CKPT_DIR --bench file:test.jsonl --tts --calibrate dev.jsonl --out runs/eval

--preset sets the defaults that the flags' help lists as (preset: ...): "ours" (the default) or "paper", the authors'
settings with their prompts (spark.evaluation.presets); a flag given explicitly overrides its preset's value.
"""

from __future__ import annotations

import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

from spark.cli import ArgumentParser, flag_error, run_command
from spark.errors import SettingError
from spark.evaluation import EvalConfig, evaluate_checkpoint
from spark.evaluation.loaders import BUILTIN, HUB
from spark.evaluation.presets import (
    add_preset_arguments,
    add_tts_arguments,
    calibration_spec,
    check_tts_arguments,
    resolve_preset,
)

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data" / "eval"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--bench", required=True, action="append",
                        help=f"comma-separated specs: {', '.join(BUILTIN)}; NAME:PATH[:name=N] with NAME one of "
                             f"{', '.join(HUB)}, rb2, vlrb (the hub's Parquet, PATH may be a glob); "
                             "file:PATH[:question=F,answer=F,image=F,choices=F,name=N] (repeatable)")
    parser.add_argument("--limit", type=int, help="only the first N rows of each benchmark")
    parser.add_argument("--out", type=Path, help="output directory (resumes what is already there)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where the built-in files are")
    add_preset_arguments(parser, ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                                  "answer_mode", "max_rounds", "content"), "evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="samples per math question (mean@n, pass@n)")
    parser.add_argument("--judge", action="store_true", help="the model also judges its answers (P/R/F1)")
    parser.add_argument("--tts", action="store_true", help="test-time scaling: judge, then reflect if not Yes")
    add_tts_arguments(parser, after="--tts")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per generate call")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    return parser


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit} must be >= 1")
    check_tts_arguments(parser, args, after="--tts")
    try:
        preset = resolve_preset(args.preset, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                                answer_mode=args.answer_mode, content=args.content, max_rounds=args.max_rounds)
        cfg = EvalConfig(sampling=preset.sampling, seed=args.seed, n=args.n, judge=args.judge, tts=args.tts,
                         max_rounds=preset.max_rounds, reject_above=args.reject_above,
                         keep_better=args.keep_better, content=preset.content,
                         style=preset.style, preset=args.preset, batch_size=args.batch_size)
    except SettingError as e:
        raise flag_error(parser.prog, e) from None
    return evaluate_checkpoint(args.model, ",".join(args.bench), cfg, data_dir=args.data_dir, limit=args.limit,
                               out_dir=args.out, dtype=args.dtype, calibrate=calibration_spec(args.calibrate),
                               tensor_parallel=args.tensor_parallel)


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
