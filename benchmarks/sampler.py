"""Rollout throughput: spark.generation.sampler.generate against transformers' generate on the same weights.

A ~27M-parameter Qwen2 (hidden 512, 8 layers, 8 heads / 2 KV heads, vocab 8192, fp32, random
weights) on CPU; 16 ragged prompts of 32-96 tokens; temperature 1.0, top-p 1.0, seeded.
  fixed:  exactly 256 new tokens per row: pure decode efficiency;
  ragged: rows end at different lengths, as RL rollouts do: each run draws every row's length as if each
          step ended it with probability 1/160 (at most 256: mean ~128 tokens, a fifth of the rows at 256),
          and both engines generate exactly those lengths (ours: per-row `max_new_tokens`; `generate`: a
          stopping criterion that finishes each row at its length, as an EOS does). The engines generate the
          same lengths because the longest of 16 rows sets the number of steps: lengths sampled by each
          engine would move a run's ratio with the draws as much as with the engines' speed.
Ours runs eager and compiled (`SamplingParams.compile`: on CPU inductor with dynamic shapes; the warm-up
compiles its graphs for all rows, some rows and one row). The engines are timed interleaved in the same process
(the CPU is shared), median of several runs after the warm-up; a ratio is the median of the runs' ratios (each
run's engines generate the same lengths).
Run: `.venv/bin/python benchmarks/sampler.py [--runs 3] [--profile]`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark.generation.sampler import SamplingParams, generate  # noqa: E402
from spark.models import load_model  # noqa: E402

BATCH, MIN_PROMPT, MAX_PROMPT, NEW_TOKENS = 16, 32, 96, 256
STOP_HAZARD = 1 / 160  # the ragged rows' chance of ending at each step
CONFIG = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
              max_position_embeddings=4096, eos_token_id=None, pad_token_id=None, bos_token_id=None)


def make_checkpoint(path: Path) -> int:
    """Random weights, saved for both engines; returns the parameter count."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**CONFIG)).float()
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def make_prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(MIN_PROMPT, MAX_PROMPT + 1, (BATCH,), generator=g).tolist()
    return [torch.randint(1, CONFIG["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def ragged_lengths(seed: int) -> list[int]:
    """Each row's new tokens: the step at which a STOP_HAZARD chance per step first ends it, at most NEW_TOKENS."""
    u = torch.rand(BATCH, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    steps = (u.log() / math.log1p(-STOP_HAZARD)).ceil()  # geometric: the first step whose draw ends the row
    return steps.clamp(1, NEW_TOKENS).long().tolist()


def run_ours(model, prompts: list[list[int]], lengths: list[int], seed: int, compile: bool = False) -> list[int]:
    params = SamplingParams(max_new_tokens=max(lengths), temperature=1.0, top_p=1.0, compile=compile)
    return [len(t) for t in generate(model, prompts, params, max_new_tokens=lengths, seed=seed).tokens]


class EndAtLengths(StoppingCriteria):
    """Finishes row b once it has lengths[b] new tokens: what a sampled EOS does to a row in `generate`."""

    def __init__(self, prompt_len: int, lengths: list[int]):
        self.prompt_len, self.lengths = prompt_len, torch.tensor(lengths)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return input_ids.shape[1] - self.prompt_len >= self.lengths


def run_hf(model, prompts: list[list[int]], lengths: list[int], seed: int) -> list[int]:
    T = max(map(len, prompts))
    input_ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding, as transformers wants for generation
        input_ids[row, T - len(prompt):] = torch.tensor(prompt)
        mask[row, T - len(prompt):] = 1
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max(lengths),
                              pad_token_id=0)
    torch.manual_seed(seed)
    out = model.generate(input_ids, attention_mask=mask, generation_config=config,
                         stopping_criteria=StoppingCriteriaList([EndAtLengths(T, lengths)]))
    assert out.shape[1] - T == max(lengths)
    return lengths


def read_bandwidth_gb_s() -> float:
    """Streaming read bandwidth from a buffer larger than the last-level cache."""
    x = torch.ones(2**28)  # 1 GiB
    x.sum()
    start = time.perf_counter()
    for _ in range(3):
        x.sum()
    return 3 * x.numel() * 4 / (time.perf_counter() - start) / 1e9


def profile_ours(model, prompts: list[list[int]]) -> None:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ours(model, prompts, [NEW_TOKENS] * BATCH, seed=0)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine and scenario (after a warm-up)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of our fixed run")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        num_params = make_checkpoint(Path(tmp))
        ours = load_model(tmp)
        hf = Qwen2ForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    prompts = make_prompts()
    if args.profile:
        profile_ours(ours, prompts)

    engines = {"ours": lambda *a: run_ours(ours, *a), "compiled": lambda *a: run_ours(ours, *a, compile=True),
               "hf": lambda *a: run_hf(hf, *a)}
    scenarios = {"fixed": lambda run: [NEW_TOKENS] * BATCH, "ragged": ragged_lengths}
    times = {(s, e): [] for s in scenarios for e in engines}
    tokens = {(s, e): [] for s in scenarios for e in engines}
    with torch.inference_mode():
        for fn in engines.values():  # warm-up
            fn(prompts, [16] * BATCH, 0)
        # the compiled step's graphs: all rows, some rows, one row
        run_ours(ours, prompts, ragged_lengths(-1), 0, compile=True)
        run_ours(ours, prompts[:1], [4], 0, compile=True)
        for run in range(args.runs):
            for scenario, lengths in scenarios.items():
                for engine, fn in engines.items():
                    start = time.perf_counter()
                    kept = fn(prompts, lengths(run), run)
                    times[scenario, engine].append(time.perf_counter() - start)
                    tokens[scenario, engine].append(sum(kept))

    result: dict[str, dict] = {}
    print(f"{num_params / 1e6:.1f}M params, batch {BATCH}, prompts {MIN_PROMPT}-{MAX_PROMPT} tokens, "
          f"{NEW_TOKENS} new tokens max, {torch.get_num_threads()} threads, median of {args.runs} runs")
    print(f"{'scenario':<8} {'engine':<8} {'kept tokens':>12} {'seconds':>8} {'tok/s':>8}")
    for scenario in scenarios:
        rates = {engine: [n / t for n, t in zip(tokens[scenario, engine], times[scenario, engine])]
                 for engine in engines}
        for engine in engines:
            print(f"{scenario:<8} {engine:<8} {statistics.median(tokens[scenario, engine]):>12.0f} "
                  f"{statistics.median(times[scenario, engine]):>8.2f} {statistics.median(rates[engine]):>8.1f}")
        result[scenario] = {f"{engine}_tok_s": round(statistics.median(rates[engine]), 1) for engine in engines}
        for engine, key in (("ours", "ratio"), ("compiled", "compiled_ratio")):
            ratios = [round(a / b, 2) for a, b in zip(rates[engine], rates["hf"])]
            result[scenario][key] = round(statistics.median(ratios), 2)
            result[scenario][f"{key}_per_run"] = ratios
    bandwidth = read_bandwidth_gb_s()
    floor_tok_s = bandwidth * 1e9 / (num_params * 4) * BATCH
    result["floor"] = {"params_mb": round(num_params * 4 / 1e6, 1), "read_gb_s": round(bandwidth, 1),
                       "tok_s": round(floor_tok_s, 1),
                       "ours_fixed_fraction": round(result["fixed"]["ours_tok_s"] / floor_tok_s, 3),
                       "compiled_fixed_fraction": round(result["fixed"]["compiled_tok_s"] / floor_tok_s, 3)}
    print(f"memory-bandwidth floor: {num_params * 4 / 1e6:.0f} MB of weights per step at {bandwidth:.1f} GB/s "
          f"-> {floor_tok_s:.0f} tok/s at batch {BATCH}; ours (fixed) reaches "
          f"{result['floor']['ours_fixed_fraction']:.0%} of it eager, "
          f"{result['floor']['compiled_fixed_fraction']:.0%} compiled")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
