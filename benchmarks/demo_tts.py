"""Test-time scaling along a demo run: the TTS gain of the start and of every checkpoint the run kept.

For the warmed-up start and each `out_dir/checkpoints/step_*` (a demo run with `run.save_every=5
run.keep_last=8` keeps one every 5 steps), runs spark.demo.pipeline.tts_summary on the held-out problems (greedy,
`max_rounds` 2, the form the run trained its judge in) and prints one line per model: the accuracy after
each round, the gain (last round minus no TTS), the judge's false accept / reject rates on the model's own
answers, the reflections that fixed / broke an answer, and what one reflection on every first answer
fixes and keeps with the judge left out (`reflection_alone`). With `--sampled-wrong N`, also what one greedy
reflection fixes of the model's wrong answers among N sampled at temperature 1 per problem, the kind of
wrong answer RL recycles into reflections (`reflection_of_sampled_wrong`). With `--fresh-samples N`, how often
an answer sampled at temperature 1 is right, on the problems whose greedy answer is right and on those whose
greedy answer is wrong, and the same for a reflection sampled at temperature 1 shown the greedy answer
(`sampled_accuracy`), with the gain the loop could reach with a judge that never errs (`perfect_judge_gain`).
With `--calibrate`, also the loop at the rejection threshold calibrated on the run's calibration split
(spark.demo.pipeline.calibrated_tts; the split is made from the run's data files as the demo makes it, and
nothing is written): `calibrated` holds the threshold, the accuracy at it and its gain over no TTS. `--final`
takes only the run's export (its final model). `--keep-better`: every loop keeps, of its answers, the one the
judge rates most likely right (spark.evaluation.tts.refine's keep_better; `kept_earlier` counts its picks).

    PYTHONPATH=. .venv/bin/python benchmarks/demo_tts.py [--run runs/demo] [--content answer] [--sampled-wrong 8]
                                                         [--fresh-samples 8] [--calibrate] [--final] [--keep-better]

The last line is one JSON object: the rows by model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from spark.demo.pipeline import GREEDY, calibrated_tts, calibration_rows, read_metrics, tts_summary
from spark.evaluation.tts import CONTENTS, Problem, Trace, answer, reflect, reflection_alone
from spark.generation.chat import ChatModel, load_chat_model
from spark.models import load_model, save_model


def export_checkpoint(checkpoint: Path, start: Path, folder: Path) -> Path:
    """The policy weights of a training checkpoint (spark.distributed.checkpointing, one rank) as a Hugging Face folder,
    with the start's config and tokenizer."""
    model = load_model(start)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=checkpoint)
    model.load_state_dict(state["model"])
    save_model(model, folder)
    return folder


def sampled_wrong_reflection(chat: ChatModel, heldout: list[dict], n: int, content: str) -> dict[str, int]:
    """One greedy reflection (spark.evaluation.tts.reflection_alone) on each wrong answer among `n` sampled at temperature 1
    per held-out problem: `fixed` of `wrong`."""
    problems = [Problem(row["question"], row["answer"]) for row in heldout]
    sampled = answer(chat, problems, sampling=dataclasses.replace(GREEDY, temperature=1.0), seed=1, n=n)
    wrong = [trace for traces in sampled for trace in traces if trace.final.correct is False]
    counts = reflection_alone(chat, wrong, sampling=GREEDY, content=content)
    return {"fixed": counts["fixed"], "wrong": counts["wrong"]}


def perfect_judge_gain(rates_on_wrong: list[float], num_problems: int, rounds: int) -> float:
    """The expected accuracy gain of `rounds` rounds of judge and reflection when the judge never errs (it accepts
    every right answer and rejects every wrong one) and each reflection is right with probability q_k, independently
    of the rounds before, on the k-th problem whose first answer is wrong:

        gain = sum_k (1 - (1 - q_k)^rounds) / num_problems

    An upper bound for a real judge, which also rejects right answers (and a reflection may break them)."""
    return sum(1 - (1 - q) ** rounds for q in rates_on_wrong) / num_problems


def sampled_accuracy(chat: ChatModel, heldout: list[dict], n: int, content: str, rounds: int) -> dict:
    """Per held-out problem, the share right of `n` answers and of `n` reflections (shown the greedy answer), both
    sampled at temperature 1; their means over the problems whose greedy answer is right and over those whose
    greedy answer is wrong; and perfect_judge_gain with reflections that are right as often as either."""
    problems = [Problem(row["question"], row["answer"]) for row in heldout]
    sampling = dataclasses.replace(GREEDY, temperature=1.0)
    greedy = [traces[0] for traces in answer(chat, problems, sampling=GREEDY)]
    fresh = [sum(bool(t.final.correct) for t in traces) / n
             for traces in answer(chat, problems, sampling=sampling, seed=1, n=n)]
    copies = [Trace(trace.problem, trace.turns[:1]) for trace in greedy for _ in range(n)]
    reflect(chat, copies, sampling=sampling, seed=2, content=content)
    reflected = [sum(bool(t.final.correct) for t in copies[k * n:(k + 1) * n]) / n for k in range(len(greedy))]
    right = [bool(trace.final.correct) for trace in greedy]
    result = {}
    for name, rates in (("fresh_answer", fresh), ("reflection", reflected)):
        on_right, on_wrong = [q for q, r in zip(rates, right) if r], [q for q, r in zip(rates, right) if not r]
        result[name] = {"greedy_right": round(sum(on_right) / max(len(on_right), 1), 3),
                        "greedy_wrong": round(sum(on_wrong) / max(len(on_wrong), 1), 3),
                        "perfect_judge_gain": round(perfect_judge_gain(on_wrong, len(rates), rounds), 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="the demo run's out_dir")
    parser.add_argument("--start", default="runs/demo/warmup", help="the checkpoint the run started from")
    parser.add_argument("--heldout", default="runs/demo/data/heldout.jsonl")
    parser.add_argument("--content", default="answer", choices=CONTENTS)
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--sampled-wrong", type=int, default=0, help="answers sampled at temperature 1 per problem "
                                                                     "whose wrong ones are reflected on (0: none)")
    parser.add_argument("--fresh-samples", type=int, default=0, help="answers and reflections sampled at temperature "
                                                                     "1 per problem for sampled_accuracy (0: none)")
    parser.add_argument("--calibrate", action="store_true", help="also TTS at the threshold calibrated on the run's "
                                                                 "calibration split")
    parser.add_argument("--final", action="store_true", help="only the run's export (its final model)")
    parser.add_argument("--keep-better", action="store_true", help="keep the answer the judge rates best")
    args = parser.parse_args()
    torch.set_num_threads(1)
    heldout = read_metrics(args.heldout)
    data = Path(args.heldout).parent
    calibration = calibration_rows([data / "train.jsonl", data / "heldout.jsonl", data / "judge.jsonl"])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"export": Path(args.run) / "export"} if args.final else {"start": Path(args.start)}
        for checkpoint in [] if args.final else sorted((Path(args.run) / "checkpoints").glob("step_*")):
            models[checkpoint.name] = export_checkpoint(checkpoint, Path(args.start), Path(tmp) / checkpoint.name)
        for name, path in models.items():
            if args.calibrate:
                calibrated = calibrated_tts(path, heldout, calibration, content=args.content, max_rounds=args.max_rounds,
                                            keep_better=args.keep_better)
                tts = calibrated["uncalibrated"]
            else:
                tts = tts_summary(path, heldout, content=args.content, max_rounds=args.max_rounds,
                                  keep_better=args.keep_better)
            by_round = tts["accuracy_by_round"]
            rows[name] = {"accuracy_by_round": [round(a, 3) for a in by_round], "gain": round(by_round[-1] - by_round[0], 3),
                          "false_accept_rate": round(tts["false_accept_rate"], 3),
                          "false_reject_rate": round(tts["false_reject_rate"], 3),
                          "fixed": tts["fixed"], "broke": tts["broke"], "reflections": tts["reflections"],
                          "kept_earlier": tts["kept_earlier"],
                          "reflection_alone": tts["reflection_alone"]}
            if args.calibrate:
                rows[name]["calibrated"] = {
                    "threshold": round(calibrated["threshold"], 4), "accuracy": round(calibrated["accuracy"], 3),
                    "gain": round(calibrated["accuracy"] - by_round[0], 3),
                    "reflections": calibrated["reflections"], "fixed": calibrated["fixed"],
                    "broke": calibrated["broke"],
                    "calibration_accuracy": round(calibrated["calibration"]["accuracy"], 3),
                    "calibration_no_tts": round(calibrated["calibration"]["no_tts_accuracy"], 3),
                    "calibration_n": calibrated["calibration"]["n"]}
            chat = load_chat_model(str(path)) if args.sampled_wrong or args.fresh_samples else None
            if args.sampled_wrong:
                rows[name]["reflection_of_sampled_wrong"] = sampled_wrong_reflection(chat, heldout, args.sampled_wrong,
                                                                                      args.content)
            if args.fresh_samples:
                rows[name]["sampled_accuracy"] = sampled_accuracy(chat, heldout, args.fresh_samples, args.content,
                                                                  args.max_rounds)
            print(name, json.dumps(rows[name]), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
