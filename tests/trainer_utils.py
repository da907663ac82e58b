"""Shared set-up for the trainer tests: a tiny checkpoint, a few verifiable rows, a config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from spark.config import TrainConfig, load_config
from spark.demo.warmup import warm_up
from spark.models import load_model, save_model
from spark.models.tiny import build_tokenizer, make_tiny_checkpoint
from spark.tasks.prompts import math_prompt

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [(f"What is {a} + {b}?", str(a + b)) for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4),
                                                               (6, 1), (8, 3)]]


def make_run_files(folder: Path) -> tuple[Path, Path]:
    """(checkpoint dir, data file). The checkpoint is briefly fine-tuned on the answers, so that sampled
    groups mix right and wrong rollouts and the policy gradient is not zero."""
    corpus = [f"{q} {a} \\boxed{{{a}}}" for q, a in QUESTIONS] * 3
    random_init = make_tiny_checkpoint(folder / "random", tokenizer=build_tokenizer(corpus, vocab_size=400), seed=3)
    model = load_model(random_init)
    tokenizer = AutoTokenizer.from_pretrained(random_init)
    torch.manual_seed(0)
    warm_up(model, tokenizer, [(math_prompt(q), f"\\boxed{{{a}}}") for q, a in QUESTIONS], steps=70, batch_size=8)
    checkpoint = folder / "ckpt"
    save_model(model, checkpoint)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return checkpoint, data


def tiny_config(checkpoint: Path, data: Path, out_dir: Path, *overrides: str) -> TrainConfig:
    base = [f"model.path={json.dumps(str(checkpoint))}", f"data.train_files=[{json.dumps(str(data))}]",
            f"run.out_dir={json.dumps(str(out_dir))}", "model.mixed_precision=false", "data.prompts_per_step=2",
            "rollout.n=2", "rollout.max_new_tokens=6", "rollout.batch_size=4", "loss.micro_batch_tokens=40", "optim.lr=1e-3",
            "optim.warmup_ratio=0.0", "run.max_steps=2", "run.save_every=0", "run.sample_every=1",
            "loss.kl_coef=0.01",
            # Recycle every group (a reflection and an unbalanced verdict), so each step has a recycled update.
            "spark.recycle.balance_labels=false", "spark.recycle.content=\"cot\"",
            "spark.recycle.reflection_cot_prob=1.0"]
    return load_config(TrainConfig, None, base + list(overrides))


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def torchrun(nproc: int, *args: str, max_restarts: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc --max-restarts max_restarts args` from the repository root, its output
    captured (and shown if `check` and it fails)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--max-restarts", str(max_restarts), "--standalone", *args],
                          cwd=ROOT, env=env, timeout=600, capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f"torchrun exited {done.returncode}:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}")
    return done
