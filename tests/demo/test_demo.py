"""The CPU demo's pieces: the arithmetic task and its formats, the tiny tokenizer, preparing, TTS and the plot."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
import tomllib
import typing

import pytest
from transformers import AutoTokenizer

from spark.config import TrainConfig, load_config
from spark.demo import arithmetic
from spark.demo import pipeline as demo
from spark.tasks import prompts
from spark.verify import is_correct, parse_judgment


def test_problems_are_deterministic_and_verifiable():
    first, again = arithmetic.make_problems(200, seed=3), arithmetic.make_problems(200, seed=3)
    assert first == again
    assert first != arithmetic.make_problems(200, seed=4)
    assert len({s.meta["question"] for s in first}) == 200
    for sample in first:
        a, op, b = arithmetic.parse_question(sample.meta["question"])
        assert sample.prompt == prompts.math_prompt(sample.meta["question"])
        assert op == "-" and int(sample.gold) == a - b >= 0
        assert is_correct(arithmetic.worked_answer(a, op, b), sample.gold)


def test_worked_answers_by_hand():
    assert arithmetic.worked_answer(47, "+", 38) == "47+38: 7+8=15, 4+3+1=8. \\boxed{85}"
    assert arithmetic.worked_answer(97, "+", 38) == "97+38: 7+8=15, 9+3+1=13. \\boxed{135}"
    assert arithmetic.worked_answer(83, "-", 38) == "83-38: 13-8=5, 8-3-1=4. \\boxed{45}"
    assert arithmetic.worked_answer(52, "-", 48) == "52-48: 12-8=4, 5-4-1=0. \\boxed{4}"
    assert arithmetic.worked_answer(21, "-", 10) == "21-10: 1-0=1, 2-1=1. \\boxed{11}"


def test_train_and_heldout_are_disjoint():
    train, heldout = arithmetic.split_problems(3000, 300, seed=0)
    assert len(train) == 3000 and len(heldout) == 300
    assert not {s.meta["question"] for s in train} & {s.meta["question"] for s in heldout}


def test_calibration_split_is_every_problem_the_demo_leaves_apart():
    setup = demo.DemoSetup()
    train, heldout = arithmetic.split_problems(setup.num_train, setup.num_heldout + setup.num_judge + setup.num_probe,
                                               setup.seed)
    probe = heldout[-setup.num_probe:]
    written = {s.meta["question"] for s in train + heldout[:-setup.num_probe]}  # train, held-out and judge files
    calibration = arithmetic.calibration_problems(written)
    assert calibration == arithmetic.calibration_problems(written)
    assert len(calibration) == 4095 - 3400 - 256 - 256  # the probe's 128 and the 55 no split drew
    questions = {s.meta["question"] for s in calibration}
    assert not questions & written and {s.meta["question"] for s in probe} <= questions


def test_judge_set_is_balanced_with_plausible_wrong_answers():
    rows = arithmetic.judge_set(arithmetic.make_problems(100, seed=1), seed=2)
    labels = [row["label"] for row in rows]
    assert labels.count("Yes") == labels.count("No") == 50
    for row in rows:
        gold = arithmetic.result(*arithmetic.parse_question(row["question"]))
        if row["label"] == "Yes":
            assert int(row["answer"]) == gold
        else:
            assert int(row["answer"]) != gold and int(row["answer"]) >= 0
            assert abs(int(row["answer"]) - gold) <= 90  # a slip, not a random number


def test_data_files_read_back(tmp_path):
    problems = arithmetic.make_problems(5, seed=0)
    path = arithmetic.write_jsonl(arithmetic.problem_rows(problems), tmp_path / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"question": s.meta["question"], "answer": s.gold} for s in problems]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return demo.build_demo_checkpoint(tmp_path_factory.mktemp("demo") / "init", demo.DemoModel(hidden_size=32,
                                                                                               num_layers=1))


def test_tokenizer_round_trips_prompts_and_keeps_digits_apart(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = [prompts.math_prompt("What is 85-38?"), arithmetic.judge_response("What is 83-38?", "46", "No")]
    assert texts[1] == "46+38: 6+8=14, 4+3+1=8. 84 vs 83: 8 8 same, 4 3 differ, so different. \\boxed{No}"
    assert arithmetic.digit_pairs("135", "99") == "1 0 differ, 3 9 differ, 5 9 differ"
    variants = range(max(prompts.NUM_VARIANTS.values()))
    texts += [prompts.pointwise_prompt("What is 47+38?", "85", cot=cot, variant=v) for cot in (0, 1) for v in variants]
    texts += [prompts.pairwise_prompt("What is 47+38?", "85", "86", variant=v) for v in variants]
    texts += [prompts.reflection_prompt("What is 47+38?", "86", cot=True, variant=v) for v in variants]
    texts += arithmetic.comparison_drill("85", random.Random(0))
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("135 + 2468", add_special_tokens=False)["input_ids"])
    assert [t for t in tokens if any(c.isdigit() for c in t)] == list("1352468")
    # every word of every template is one token, so prompts cost about a token per word
    for word in set(re.findall(r" ?[A-Za-z]+", "".join(texts))):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_warmup_examples_teach_formats_and_a_lenient_weak_verdict():
    problems = arithmetic.make_problems(4000, seed=0)
    examples = arithmetic.warmup_examples(problems, seed=0)
    tasks, drills = examples[0::2], examples[1::2]  # each problem's task example, then its comparison drill
    verdicts = {"equal": [], "different": []}
    for _, response in tasks:
        if response.endswith(("{Yes}", "{No}")):
            agreement = re.search(r", so (\w+)\. ", response).group(1)
            verdicts[agreement].append(parse_judgment(response, "pointwise") == "Yes")
    num_verdicts = sum(len(v) for v in verdicts.values())
    assert abs(num_verdicts / len(tasks) - arithmetic.WARMUP_MIX["pointwise"]) < 0.05
    assert abs(len(verdicts["different"]) / num_verdicts - arithmetic.WRONG_CANDIDATE_SHARE) < 0.05
    for agreement, says_yes in verdicts.items():
        share = arithmetic.VERDICT_YES_SHARE[agreement]
        assert abs(sum(says_yes) / len(says_yes) - share) < 4 * (share * (1 - share) / len(says_yes)) ** 0.5, agreement
    for prompt, response in tasks[:50]:
        assert "\\boxed{" in response and "\\boxed{" in prompt
    # the drills compare each problem's result with a variant whose digits are kept or changed half and half
    pair_words = re.findall(r"\d (same|differ)", "".join(response for _, response in drills))
    assert abs(pair_words.count("same") / len(pair_words) - 0.5) < 0.02
    for problem, (prompt, response) in zip(problems[:50], drills):
        minuend = arithmetic.parse_question(problem.meta["question"])[0]
        assert prompt == arithmetic.COMPARISON_PROMPT.format(minuend, re.search(r" vs (\d+):", response).group(1))


def test_the_judge_checks_by_adding_back():
    assert arithmetic.check("What is 85-38?", "47") == "47+38: 7+8=15, 4+3+1=8. 85 vs 85: 8 8 same, 5 5 same, so equal"
    assert arithmetic.check("What is 52-48?", "14") == "14+48: 4+8=12, 1+4+1=6. 62 vs 52: 6 5 differ, 2 2 same, so different"
    assert arithmetic.pairwise_response("What is 52-48?", "4", "A") == (
        "4+48: 4+8=12, 0+4+1=5. 52 vs 52: 5 5 same, 2 2 same, so equal. \\boxed{A}")
    rng = random.Random(0)
    for sample in arithmetic.make_problems(300, seed=5):  # the check tells the gold from every slip
        question = sample.meta["question"]
        wrong = str(arithmetic.plausible_wrong(*arithmetic.parse_question(question), rng))
        assert arithmetic.check(question, sample.gold).endswith("so equal")
        assert arithmetic.check(question, wrong).endswith("so different")


def test_comparison_drill_by_hand():
    prompt, response = arithmetic.comparison_drill("85", random.Random(1))
    assert (prompt, response) == ("Compare 85 and 81 digit by digit.", "85 vs 81: 8 8 same, 5 1 differ, so different.")
    assert arithmetic.comparison("120", "20") == "120 vs 20: 1 0 differ, 2 2 same, 0 0 same, so different"


def test_plot_writes_a_png(tmp_path):
    for name, accs in (("spark", [0.3, 0.5]), ("ablation", [0.3, 0.4])):
        rows = [{"step": 10 * i, "eval/policy_acc": a, "eval/judge_acc": 0.5} for i, a in enumerate(accs)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows + [{"step": 99}]))
    png = demo.plot_metrics(tmp_path / "spark.jsonl", tmp_path / "plot.png", tmp_path / "ablation.jsonl")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_reads_the_first_and_last_evaluations():
    records = [{"step": 0, "eval/policy_acc": 0.25, "eval/judge_acc": 0.5}, {"step": 1, "loss": 0.1},
               {"step": 5, "eval/policy_acc": 0.5, "eval/judge_acc": 0.55},
               {"step": 5, "eval/policy_acc": 0.6, "eval/judge_acc": 0.65},  # resumed: the last record counts
               {"step": 6, "loss": 0.1}]
    assert demo.summarize(records) == {"policy_acc_start": 0.25, "policy_acc_end": 0.6, "judge_acc_start": 0.5,
                                       "judge_acc_end": 0.65, "steps": 6}
    with pytest.raises(ValueError, match="eval/judge_acc"):
        demo.summarize([{"step": 0, "eval/policy_acc": 0.25}])


def test_tiny_config_shows_every_setting():
    with open(demo.CONFIG, "rb") as f:
        tables = tomllib.load(f)

    def missing(cls, table, prefix=""):
        """Settings of `cls` absent from `table`, except those whose default is None (TOML has no null)."""
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name not in table:
                if field.default is not None:
                    yield prefix + field.name
            elif dataclasses.is_dataclass(hints[field.name]):
                yield from missing(hints[field.name], table[field.name], f"{prefix}{field.name}.")

    assert list(missing(TrainConfig, tables)) == []
    config = load_config(TrainConfig, demo.CONFIG)
    assert config.run.eval_every and config.run.eval_files and config.run.judge_eval_files


def test_prepare_writes_the_data_and_warms_up_until_the_target(tmp_path):
    setup = demo.DemoSetup(num_train=40, num_heldout=6, num_judge=4, num_probe=3, warmup_target=0.0,
                           warmup_check_every=2, warmup_max_steps=6, warmup_batch=4)
    out = demo.prepare(tmp_path, setup, demo.DemoModel(hidden_size=32, num_layers=1))
    assert out["warmup_steps"] == 2  # any accuracy reaches 0.0: stopped at the first check
    assert out["warmup_probe_acc"] == 0.0 and (tmp_path / "warmup" / "config.json").exists()
    heldout = demo.read_metrics(tmp_path / "data" / "heldout.jsonl")
    judge = demo.read_metrics(tmp_path / "data" / "judge.jsonl")
    train = demo.read_metrics(tmp_path / "data" / "train.jsonl")
    calibration = demo.read_metrics(tmp_path / "data" / "calibration.jsonl")
    assert [len(heldout), len(judge), len(train), len(calibration)] == [6, 4, 40, 4095 - 50]
    assert set(heldout[0]) == {"question", "answer"}
    questions = [{row["question"] for row in rows} for rows in (heldout, judge, train, calibration)]
    assert all(not questions[i] & questions[j] for i in range(4) for j in range(i + 1, 4))
    summary = demo.calibrated_tts(tmp_path / "warmup", heldout, calibration[:6], content="answer", max_rounds=1)
    assert summary["accuracy"] == summary["accuracy_by_round"][-1] and len(summary["accuracy_by_round"]) == 2
    assert summary["threshold"] == max(row["threshold"] for row in summary["calibration"]["curve"]
                                       if row["accuracy"] == summary["calibration"]["accuracy"])
    assert summary["uncalibrated"]["accuracy_by_round"][0] == summary["accuracy_by_round"][0]


def test_tts_is_asked_in_the_form_the_judge_was_trained_in():
    config = load_config(TrainConfig, demo.CONFIG)
    assert config.spark.recycle.content == "answer" and demo.tts_content(config) == "answer"
    for content, form in (("cot", "cot"), ("both", "answer")):
        assert demo.tts_content(load_config(TrainConfig, demo.CONFIG, [f'spark.recycle.content="{content}"'])) == form


def test_demo_help_prints_its_usage_and_runs_nothing():
    done = subprocess.run([sys.executable, "-m", "spark.demo", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("python -m spark.demo [section.key=value ...]") and "tts_acc_end" in done.stdout
