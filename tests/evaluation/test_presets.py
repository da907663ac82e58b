"""Presets (spark.evaluation.presets): the settings each one resolves to, flags over presets, and the paper preset's
loop as the authors' evaluation_tts.py runs it, driven by a scripted fake model."""

from __future__ import annotations

import json
import sys
import types

import pytest

from spark.evaluation import EvalConfig, evaluate, parse_spec
from spark.evaluation.presets import Preset, preset_values, resolve_preset
from spark.evaluation.tts import Problem, Style, read_verdict, run_tts
from spark.generation.sampler import Sampling
from spark.tasks.prompts import PAPER_SYSTEM, math_prompt, paper_judge_prompt, paper_reflection_prompt
from tests.evaluation.test_evaluation import write_jsonl
from tests.evaluation.test_tts import ScriptedModel, boxed

OURS = Preset(Sampling(max_new_tokens=1024, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0),
              Style(templates="spark", answer_mode="lenient", system=None), content="cot", max_rounds=2)
PAPER = Preset(Sampling(max_new_tokens=2048, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.05),
               Style(templates="paper", answer_mode="first", system="You are a helpful assistant."),
               content="answer", max_rounds=2)


def test_each_preset_resolves_to_its_settings():
    assert resolve_preset("ours") == OURS
    assert resolve_preset("paper") == PAPER
    assert preset_values("max_new_tokens") == "ours 1024, paper 2048"
    with pytest.raises(ValueError, match="unknown preset 'papers'"):
        resolve_preset("papers")


def test_given_flags_override_the_preset():
    resolved = resolve_preset("paper", max_new_tokens=512, temperature=None, answer_mode="strict", content="cot",
                              max_rounds=1)
    assert resolved == Preset(Sampling(max_new_tokens=512, temperature=0.0, repetition_penalty=1.05),
                              Style(templates="paper", answer_mode="strict", system=PAPER_SYSTEM), "cot", 1)
    assert resolve_preset("ours", repetition_penalty=1.05).sampling.repetition_penalty == 1.05


def evaluate_settings(monkeypatch, argv: list[str]) -> EvalConfig:
    import evaluate as cli

    configs = []
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda model, specs, cfg, **kwargs: configs.append(cfg))
    cli.main(["--model", "ckpt", "--bench", "gsm8k", *argv])
    return configs[0]


def test_evaluate_preset_ours_is_the_settings_of_before_presets(monkeypatch):
    before = EvalConfig(sampling=Sampling(max_new_tokens=1024, temperature=0.0, top_p=1.0, top_k=0), seed=0, n=1,
                        judge=False, tts=False, max_rounds=2, content="cot", batch_size=64)
    assert evaluate_settings(monkeypatch, []) == evaluate_settings(monkeypatch, ["--preset", "ours"]) == before
    assert (before.sampling.repetition_penalty, before.style, before.preset) == (1.0, Style(), "ours")


def test_evaluate_preset_paper_and_a_flag_over_it(monkeypatch):
    cfg = evaluate_settings(monkeypatch, ["--preset", "paper", "--tts", "--max-new-tokens", "100"])
    assert cfg.sampling == Sampling(max_new_tokens=100, temperature=0.0, repetition_penalty=1.05)
    assert (cfg.style, cfg.content, cfg.max_rounds, cfg.preset, cfg.tts) == (PAPER.style, "answer", 2, "paper", True)


def test_tts_cli_passes_the_preset_to_every_turn(monkeypatch, capsys):
    import tts

    model = ScriptedModel({math_prompt("2+2?"): boxed("4"), paper_judge_prompt("2+2?", "4"): "\\boxed{Yes}"})
    fake_chat = types.ModuleType("spark.generation.chat")
    fake_chat.load_chat_model = lambda path, device, dtype, **engine: model
    monkeypatch.setitem(sys.modules, "spark.generation.chat", fake_chat)
    text = tts.main(["--model", "ckpt", "--question", "2+2?", "--gold", "4", "--preset", "paper"])
    assert text.startswith("Preset: paper\n") and "verdict: Yes" in text
    assert model.settings == [(PAPER.sampling, PAPER_SYSTEM)] * 2


@pytest.mark.parametrize("response, paper, ours", [
    ("Correct. \\boxed{Yes}", "Yes", "Yes"),
    ("\\boxed{ Yes }", "Yes", "Yes"),
    ("Wrong. \\boxed{No}", "No", "No"),
    ("\\boxed{yes}", None, "Yes"),  # the paper's rule: exactly "Yes"
    ("\\boxed{\\text{Yes}}", None, "Yes"),
    ("\\boxed{Yes.}", None, "Yes"),
    ("If right, \\boxed{Yes}; it is not: \\boxed{No}", "Yes", "No"),  # the paper's rule reads the first box
    ("\\box{Yes}", None, None),
    ("Yes", None, None),
])
def test_verdict_rules(response, paper, ours):
    assert read_verdict(response, PAPER.style) == paper
    assert read_verdict(response, OURS.style) == ours


def test_paper_prompts_are_the_authors():
    """evaluation_tts.py's judge and reflection prompts, but for the judge's box: theirs asks for '\\box{}.'."""
    assert paper_judge_prompt("Q", "5") == (
        "You are a specialist in answer evaluation. For the given question and answer, perform logical reasoning "
        "to assess the answer's correctness. Then state your judgment as 'Yes' or 'No'. Finally, repeat your "
        "judgment inside '\\boxed{}'.\n\n<Questions>:\nQ\n\n<Answers>:\n5\n\n<Judgements>:")
    assert paper_reflection_prompt("Q", "5") == (
        "Below is a question and an incorrect answer. Do not follow the incorrect answer. Instead, reason through "
        "the question properly and provide the correct final answer.\n\nQuestion:\nQ\n\nIncorrect Answer:\n5\n\n"
        "Please first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}'.")


def paper_script(question: str, answers: list[str], verdicts: list[str]) -> dict[str, str]:
    """Replies for one problem in the paper's loop: answers[t] is a response, the judge is shown its first
    box and answers verdicts[t]; after a verdict that is not Yes, the reflection answers[t + 1]."""
    first = [a.split("\\boxed{")[1].split("}")[0] for a in answers]
    replies = {math_prompt(question): answers[0]}
    for t, verdict in enumerate(verdicts):
        replies[paper_judge_prompt(question, first[t])] = verdict
        if t + 1 < len(answers):
            replies[paper_reflection_prompt(question, first[t])] = answers[t + 1]
    return replies


# (question, gold, responses in order, judge verdicts in order)
PAPER_CASES = [
    ("Q1", "5", [boxed("4"), boxed("5")], ["\\boxed{No}", "\\boxed{Yes}"]),  # rejected, fixed, accepted
    ("Q2", "7", [boxed("7"), boxed("6"), boxed("8")], ["\\boxed{yes}", "\\boxed{\\text{Yes}}"]),  # not exactly Yes
    ("Q3", "3", ["First \\boxed{3}, or rather \\boxed{2}."], ["\\boxed{Yes}"]),  # the first box is the answer
]


def test_paper_loop_accepts_only_yes_and_stops_after_two_rounds():
    replies = {}
    for question, _, answers, verdicts in PAPER_CASES:
        replies |= paper_script(question, answers, verdicts)
    model = ScriptedModel(replies)
    traces = run_tts(model, [Problem(q, gold) for q, gold, _, _ in PAPER_CASES], max_rounds=PAPER.max_rounds,
                     sampling=PAPER.sampling, content=PAPER.content, style=PAPER.style)
    # answer all 3; judge all 3; reflect Q1, Q2; judge both; reflect Q2 (its third answer is not judged)
    assert [len(call) for call in model.calls] == [3, 3, 2, 2, 1]
    assert [[(turn.role, turn.extracted) for turn in t.turns] for t in traces] == [
        [("answer", "4"), ("judge", "No"), ("reflect", "5"), ("judge", "Yes")],
        [("answer", "7"), ("judge", None), ("reflect", "6"), ("judge", None), ("reflect", "8")],
        [("answer", "3"), ("judge", "Yes")],
    ]
    assert [t.final.correct for t in traces] == [True, False, True]
    assert model.settings == [(PAPER.sampling, PAPER_SYSTEM)] * 5


def test_paper_summary_records_the_preset_and_the_mean_of_benchmark_accuracies(tmp_path):
    """One benchmark of 1 row (right), one of 3 (one right): mean_accuracy is (1 + 1/3) / 2, not 2/4."""
    benches = [parse_spec(f"file:{write_jsonl(tmp_path / f'{name}.jsonl', rows)}", "unused") for name, rows in [
        ("one", [{"question": "a", "answer": "1"}]),
        ("three", [{"question": q, "answer": "1"} for q in ("b", "c", "d")])]]
    model = ScriptedModel({math_prompt("a"): boxed("1"), math_prompt("b"): boxed("1"), math_prompt("c"): boxed("2"),
                           math_prompt("d"): "\\boxed{2} or \\boxed{1}"})  # the first box counts: wrong
    cfg = EvalConfig(sampling=PAPER.sampling, style=PAPER.style, content=PAPER.content, preset="paper")
    summaries = evaluate(model, benches, cfg, out_dir=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved == {"preset": "paper", "mean_accuracy": pytest.approx((1 + 1 / 3) / 2), "benchmarks": summaries}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["style"] == {
        "templates": "paper", "answer_mode": "first", "system": PAPER_SYSTEM}
