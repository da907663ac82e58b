"""Rollout time of a tiny VL step: the vision tower on every rollout row's copy of its image (before) or
once per distinct image (after, `image_index`).

A Qwen2.5-VL built by spark.models.tiny (decoder hidden 64, 2 layers; vision tower hidden 128, 8 blocks) on
CPU, fp32; a step's rollout: P prompts with one 448 x 448 image each (1,024 patches at max_pixels
28*28*256), n rollouts per prompt, temperature 1, seeded, NEW_TOKENS new tokens per row. Both ways
are timed interleaved, median of --runs runs after a warm-up; the sampled tokens are the same.
Run: `PYTHONPATH=. .venv/bin/python benchmarks/vl_rollout.py [--prompts 4] [--n 8] [--runs 3]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark.data.images import ImageConfig, expand_image_pads, preprocess  # noqa: E402
from spark.generation.sampler import SamplingParams, generate  # noqa: E402
from spark.models import load_model  # noqa: E402
from spark.models.tiny import make_tiny_vl_checkpoint  # noqa: E402

NEW_TOKENS, SIDE = 32, 448


def step_inputs(path: Path, prompts: int, n: int) -> tuple[list[list[int]], dict, dict]:
    """The rollout rows (each prompt n times) and their image inputs: every copy, and each image once."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = ImageConfig.from_pretrained(path)
    rng = np.random.default_rng(0)
    rows, pixels, grids = [], [], []
    for p in range(prompts):
        image = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        pixel_values, grid = preprocess([image], cfg)
        content = [{"type": "image"}, {"type": "text", "text": f"What is {p} + 1?"}]
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(expand_image_pads(text, grid, cfg.merge_size))["input_ids"]
        rows += [ids] * n
        pixels.append(pixel_values)
        grids.append(grid)
    every_copy = {"pixel_values": torch.cat([p for p in pixels for _ in range(n)]),
                  "image_grid_thw": torch.cat([g for g in grids for _ in range(n)])}
    once = {"pixel_values": torch.cat(pixels), "image_grid_thw": every_copy["image_grid_thw"],
            "image_index": torch.arange(prompts).repeat_interleave(n)}
    return rows, every_copy, once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_vl_checkpoint(Path(tmp) / "vl", vision_depth=8, vision_hidden_size=128, vision_heads=4,
                                       fullatt_block_indexes=(3, 7), window_size=112, max_pixels=28 * 28 * 256)
        model = load_model(path)
        rows, every_copy, once = step_inputs(path, args.prompts, args.n)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0)
    ways = {"before": every_copy, "after": once}
    times: dict[str, list[float]] = {way: [] for way in ways}
    tokens = {}
    for run in range(args.runs + 1):  # run 0 warms up
        for way, inputs in ways.items():
            start = time.perf_counter()
            tokens[way] = generate(model, rows, params, seed=run, **inputs).tokens
            if run:
                times[way].append(time.perf_counter() - start)
    assert tokens["before"] == tokens["after"], "the two ways must sample the same tokens"
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"{args.prompts} prompts x {args.n} rollouts, {SIDE}x{SIDE} images, {NEW_TOKENS} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"| vision tower runs on | rollout time (median of {args.runs}) |\n|---|---|")
    print(f"| every row's copy (before) | {before:.2f} s |")
    print(f"| each distinct image once (after) | {after:.2f} s |")
    print(json.dumps({"prompts": args.prompts, "n": args.n, "rollout_s_before": round(before, 3),
                      "rollout_s_after": round(after, 3), "speedup": round(before / after, 2)}))


if __name__ == "__main__":
    main()
