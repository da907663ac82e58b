"""What the demo's pointwise judge writes: copy, addition, digit comparison and verdict.

Decodes the held-out judge rows (runs/demo/data/judge.jsonl, shown as spark.trainer's evaluation shows them:
final answer, template variant 0) with a checkpoint, greedily and at temperature 1, and parses each check
"57+38: 7+8=15, 5+3+1=9. 95 vs 85: 9 8 differ, 5 5 same, so different. \\boxed{No}" into:
  copy       it added the candidate shown and the question's subtrahend, and compared with its minuend
  add        its sum is right for the two numbers it added
  compare    the digit pairs are what spark.demo.arithmetic.digit_pairs says for the two numbers it compared
  summary    the word after "so" follows from its pairs ("different" iff a pair differs, else "equal")
  read_off   balanced accuracy of a verdict read off that word (Yes iff "equal")
  verdict    balanced accuracy of the verdict it gave
  p_no_equal / p_no_different   how often it says No after "so equal" / "so different"

    PYTHONPATH=. .venv/bin/python benchmarks/demo_judge.py [--checkpoint runs/demo/warmup]

Run it on runs/demo/warmup (before RL) and runs/demo/export (after). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from spark.demo.arithmetic import digit_pairs, parse_question
from spark.generation.chat import user_prompt_ids
from spark.generation.sampler import SamplingParams, generate
from spark.models import load_model
from spark.tasks import prompts

RESPONSE = re.compile(r"(\d+)\+(\d+): .*?\. (\d+) vs (\d+): (.*?), so (\w+)\. \\boxed\{(\w+)\}")


def balanced(right: dict[str, list[bool]]) -> float:
    return 0.5 * sum(sum(r) / max(len(r), 1) for r in right.values())


def probe(rows: list[dict], responses: list[str]) -> dict[str, float]:
    counts = {"parsed": 0, "copy": 0, "add": 0, "compare": 0, "summary": 0}
    read_off, verdict = {"Yes": [], "No": []}, {"Yes": [], "No": []}
    says_no = {"equal": [], "different": []}
    for row, response in zip(rows, responses):
        match = RESPONSE.search(response)
        if not match:
            read_off[row["label"]].append(False)
            verdict[row["label"]].append(False)
            continue
        candidate, subtrahend, total, minuend, comparison, agreement, said = match.groups()
        a, _, b = parse_question(row["question"])
        counts["parsed"] += 1
        counts["copy"] += (candidate, subtrahend, minuend) == (row["answer"], str(b), str(a))
        counts["add"] += int(total) == int(candidate) + int(subtrahend)
        counts["compare"] += comparison == digit_pairs(total, minuend)
        counts["summary"] += agreement == ("different" if "differ" in comparison else "equal")
        read_off[row["label"]].append((agreement == "equal") == (row["label"] == "Yes"))
        verdict[row["label"]].append(said == row["label"])
        if agreement in says_no:
            says_no[agreement].append(said == "No")
    figures = {name: count / len(rows) for name, count in counts.items()}
    figures.update(read_off=balanced(read_off), verdict=balanced(verdict),
                   **{f"p_no_{word}": sum(no) / max(len(no), 1) for word, no in says_no.items()})
    return {name: round(value, 3) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/demo/warmup")
    parser.add_argument("--judge-file", default="runs/demo/data/judge.jsonl")
    args = parser.parse_args()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.checkpoint)
    model = load_model(args.checkpoint)
    rows = [json.loads(line) for line in Path(args.judge_file).read_text().splitlines()]
    ids = [user_prompt_ids(tokenizer, prompts.pointwise_prompt(row["question"], row["answer"], cot=False, variant=0))
           for row in rows]
    out = {}
    for name, temperature in (("greedy", 0.0), ("t1", 1.0)):
        params = SamplingParams(max_new_tokens=64, temperature=temperature, stop_token_ids=(tokenizer.eos_token_id,))
        with torch.no_grad():
            tokens = generate(model, ids, params, seed=0).tokens
        out[name] = probe(rows, tokenizer.batch_decode(tokens, skip_special_tokens=True))
    print(f"{args.checkpoint}: {len(rows)} judge rows")
    print(f"{'decoding':<8} " + " ".join(f"{k:>11}" for k in out["greedy"]))
    for name, figures in out.items():
        print(f"{name:<8} " + " ".join(f"{v:>11.3f}" for v in figures.values()))
    print(json.dumps({"checkpoint": args.checkpoint, **out}))


if __name__ == "__main__":
    main()
