"""The test-time loop (eqs. 9-11) driven by a scripted fake model: rounds, kept answers, statistics."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from spark.evaluation.tts import (
    Problem,
    Trace,
    Turn,
    format_rounds,
    format_trace,
    p_wrong,
    reflection_alone,
    rejects,
    run_tts,
    tts_statistics,
)
from spark.generation.sampler import Sampling
from spark.tasks.prompts import math_prompt, pointwise_prompt, reflection_prompt


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str = "stop"


class ScriptedModel:
    """A ChatModel whose reply to each exact prompt is scripted (a list: one reply per sample)."""

    def __init__(self, replies: dict[str, str | list[str]], num_tokens: int = 10):
        self.replies, self.num_tokens, self.calls, self.settings = replies, num_tokens, [], []

    def generate(self, prompts, images=None, *, n=1, seed=0, system=None, **sampling):
        self.calls.append(list(prompts))
        self.settings.append((Sampling(**sampling), system))
        outputs = []
        for prompt in prompts:
            reply = self.replies[prompt]
            texts = reply if isinstance(reply, list) else [reply] * n
            outputs.append([Completion(text, self.num_tokens) for text in texts[:n]])
        return outputs


def boxed(x: str) -> str:
    return f"Some reasoning. The answer is \\boxed{{{x}}}."


def script(question: str, answers: list[str], verdicts: list[str]) -> dict[str, str]:
    """Replies for one problem: answers[0] first, then judge verdicts[t] on answers[t] and, after a
    verdict that is not Yes, the reflection answers[t + 1]."""
    replies = {math_prompt(question): boxed(answers[0])}
    for t, verdict in enumerate(verdicts):
        judged = boxed(answers[t])
        replies[pointwise_prompt(question, judged, cot=True)] = verdict
        if t + 1 < len(answers):
            replies[reflection_prompt(question, judged, cot=True)] = boxed(answers[t + 1])
    return replies


YES, NO, UNPARSED = "Checked. \\boxed{Yes}", "There is a mistake. \\boxed{No}", "Hard to say."

# (question, gold, answers in order, judge verdicts in order)
CASES = [
    ("Q1", "5", ["4", "5"], [NO, YES]),  # wrong, rejected, fixed, accepted
    ("Q2", "7", ["7"], [YES]),  # right, accepted at once
    ("Q3", "3", ["3", "2", "9"], [NO, NO]),  # right but rejected, broken, still wrong after max_rounds
    ("Q4", "1", ["0"], [YES]),  # wrong but accepted
    ("Q5", "2", ["1", "2", "2"], [UNPARSED, NO]),  # an unparsed verdict is not a Yes; fixed; right rejected
]


@pytest.fixture
def traces_and_model():
    replies = {}
    for question, _, answers, verdicts in CASES:
        replies |= script(question, answers, verdicts)
    model = ScriptedModel(replies)
    problems = [Problem(question, gold) for question, gold, _, _ in CASES]
    return run_tts(model, problems, max_rounds=2, sampling=Sampling()), model


def test_rounds_send_only_open_problems(traces_and_model):
    _, model = traces_and_model
    # answer all 5; judge all 5; reflect Q1, Q3, Q5; judge those 3; reflect Q3, Q5 (last round: not judged)
    assert [len(call) for call in model.calls] == [5, 5, 3, 3, 2]
    assert model.calls[2] == [reflection_prompt(q, boxed(a[0]), cot=True) for q, _, a, _ in (CASES[0], CASES[2], CASES[4])]


def test_kept_answers_and_turns(traces_and_model):
    traces, _ = traces_and_model
    assert [t.final.extracted for t in traces] == ["5", "7", "9", "0", "2"]
    assert [t.final.correct for t in traces] == [True, True, False, False, True]
    assert [[(turn.role, turn.round) for turn in t.turns] for t in traces[:2]] == [
        [("answer", 0), ("judge", 0), ("reflect", 1), ("judge", 1)],
        [("answer", 0), ("judge", 0)],
    ]
    assert [turn.extracted for turn in traces[4].turns if turn.role == "judge"] == [None, "No"]
    assert len(traces[2].turns) == 5 and traces[2].turns[-1].role == "reflect"


def test_statistics(traces_and_model):
    traces, _ = traces_and_model
    stats = tts_statistics(traces, max_rounds=2)
    assert stats["accuracy_by_round"] == [pytest.approx(2 / 5), pytest.approx(3 / 5), pytest.approx(3 / 5)]
    assert stats["judged"] == 8
    assert (stats["false_accept"], stats["false_accept_rate"]) == (1, pytest.approx(1 / 4))  # Q4
    assert (stats["false_reject"], stats["false_reject_rate"]) == (2, pytest.approx(2 / 4))  # Q3, Q5 round 1
    assert (stats["reflections"], stats["fixed"], stats["broke"]) == (5, 2, 1)
    assert (stats["answer_tokens"], stats["extra_tokens"]) == (50, (8 + 5) * 10)
    # Round 1 judges all 5 first answers, rejects Q1, Q3 (right) and Q5 (unparsed), fixes Q1 and Q5 and breaks Q3;
    # round 2 judges those 3 again, rejects Q3 and Q5 (right) and reflects without changing either.
    assert stats["rounds"] == [
        {"round": 1, "accuracy": pytest.approx(3 / 5), "judged": 5, "judged_wrong": 3, "fixed": 2, "broke": 1,
         "verdict_prob": None},
        {"round": 2, "accuracy": pytest.approx(3 / 5), "judged": 3, "judged_wrong": 2, "fixed": 0, "broke": 0,
         "verdict_prob": None}]
    assert format_rounds(stats).splitlines() == [
        "round  accuracy  judged  judged wrong  fixed  broke  verdict prob",
        "    0     40.0%       -             -      -      -             -",
        "    1     60.0%       5             3      2      1             -",
        "    2     60.0%       3             2      0      0             -"]


def test_reflection_alone_reflects_every_first_answer_once(traces_and_model):
    traces, model = traces_and_model
    model.replies[reflection_prompt("Q2", boxed("7"), cot=True)] = boxed("7")  # right, kept
    model.replies[reflection_prompt("Q4", boxed("0"), cot=True)] = boxed("0")  # wrong, not fixed
    turns_before = [len(t.turns) for t in traces]
    # Q1 4 -> 5 and Q5 1 -> 2 fixed, Q3 3 -> 2 broken.
    assert reflection_alone(model, traces, sampling=Sampling()) == {"fixed": 2, "wrong": 3, "kept": 1, "right": 2}
    assert model.calls[-1] == [reflection_prompt(q, boxed(a[0]), cot=True) for q, _, a, _ in CASES]
    assert [len(t.turns) for t in traces] == turns_before


def test_zero_rounds_is_plain_answering():
    model = ScriptedModel(script("Q", ["4"], []))
    (trace,) = run_tts(model, [Problem("Q", "4")], max_rounds=0, sampling=Sampling())
    assert [turn.role for turn in trace.turns] == ["answer"] and trace.final.correct
    assert tts_statistics([trace], 0)["accuracy_by_round"] == [1.0]


def test_without_gold_nothing_is_scored_and_the_exchange_prints():
    model = ScriptedModel(script("What is 2+2?", ["5", "4"], [NO, YES]))
    (trace,) = run_tts(model, [Problem("What is 2+2?")], max_rounds=2, sampling=Sampling())
    assert trace.final.extracted == "4" and trace.final.correct is None
    text = format_trace(trace, show_prompts=True)
    for expected in ("Question: What is 2+2?", "round 0 · answer", "round 0 · self-judgment", "verdict: No",
                     "round 1 · reflection", "verdict: Yes", "Final answer: 4", "<Provided CoT>"):
        assert expected in text


def test_trace_round_trips_through_json_dict(traces_and_model):
    traces, _ = traces_and_model
    restored = Trace.from_dict(traces[0].problem, traces[0].to_dict())
    assert [(t.role, t.extracted, t.correct) for t in restored.turns] == [
        (t.role, t.extracted, t.correct) for t in traces[0].turns
    ]
    assert "prompt" not in traces[0].to_dict()["turns"][0]


def test_cli_prints_the_exchange(monkeypatch, capsys):
    import tts

    fake_chat = types.ModuleType("spark.generation.chat")
    fake_chat.load_chat_model = lambda path, device, dtype, **engine: ScriptedModel(script("2+2?", ["5", "4"], [NO, YES]))
    monkeypatch.setitem(sys.modules, "spark.generation.chat", fake_chat)
    text = tts.main(["--model", "ckpt", "--question", "2+2?", "--gold", "4"])
    assert text == capsys.readouterr().out.rstrip("\n")
    assert "answer: 5 (wrong; gold 4)" in text and "answer: 4 (correct)" in text


def test_answer_content_shows_the_final_answer_in_the_answer_form_of_the_templates():
    # the demo trains answer-based judges: at test time the judge and the reflection see "4", not the response
    replies = {math_prompt("Q"): boxed("4"), pointwise_prompt("Q", "4", cot=False): NO,
               reflection_prompt("Q", "4", cot=False): boxed("5"), pointwise_prompt("Q", "5", cot=False): YES}
    model = ScriptedModel(replies)
    (trace,) = run_tts(model, [Problem("Q", "5")], max_rounds=2, sampling=Sampling(), content="answer")
    assert [(turn.role, turn.extracted) for turn in trace.turns] == [("answer", "4"), ("judge", "No"),
                                                                     ("reflect", "5"), ("judge", "Yes")]
    assert trace.final.correct and tts_statistics([trace], 2)["fixed"] == 1
    with pytest.raises(ValueError, match="content"):
        run_tts(model, [Problem("Q", "5")], sampling=Sampling(), content="both")


def test_a_threshold_of_one_never_reflects(traces_and_model):
    # a scripted model gives no probabilities: its verdicts count at face value, p(wrong) 0 or 1, never above 1
    _, model = traces_and_model
    problems = [Problem(question, gold) for question, gold, _, _ in CASES]
    traces = run_tts(model, problems, max_rounds=2, sampling=Sampling(), reject_above=1.0)
    assert [[turn.role for turn in t.turns] for t in traces] == [["answer", "judge"]] * len(CASES)
    assert [t.final.extracted for t in traces] == [answers[0] for _, _, answers, _ in CASES]
    stats = tts_statistics(traces, 2, reject_above=1.0)
    assert stats["accuracy_by_round"] == [pytest.approx(2 / 5)] * 3 and stats["reflections"] == 0
    assert (stats["false_accept"], stats["false_reject"]) == (3, 0)  # Q1, Q4, Q5 wrong and all accepted


def test_p_wrong_and_the_rejection_rule():
    def verdict(extracted, probability):
        return Turn("judge", 0, "", 1, "stop", extracted, verdict_prob=probability)

    assert [p_wrong(verdict("Yes", 0.8)), p_wrong(verdict("No", 0.7)), p_wrong(verdict(None, None)),
            p_wrong(verdict("Yes", None)), p_wrong(verdict("No", None))] == [pytest.approx(0.2), 0.7, 1.0, 0.0, 1.0]
    no = verdict("No", 0.7)
    assert [rejects(no, None), rejects(no, 0.5), rejects(no, 0.7), rejects(no, 1.0)] == [True, True, False, False]
    assert rejects(verdict("Yes", 0.8), 0.1) and not rejects(verdict("Yes", 0.8), None)


def test_keep_better_judges_the_last_reflection_and_keeps_the_best_rated_answer(traces_and_model):
    _, model = traces_and_model
    model.replies[pointwise_prompt("Q3", boxed("9"), cot=True)] = NO  # Q3: 3 (right), 2, 9 all judged No
    problems = [Problem(question, gold) for question, gold, _, _ in CASES]
    traces = run_tts(model, problems, max_rounds=2, sampling=Sampling(), keep_better=True)
    # Text verdicts: p(wrong) 1 after every No or unreadable verdict, so the earliest answer is kept: Q3's right 3,
    # and Q5's wrong 1 (1 unreadable, 2 and 2 judged No).
    assert [t.final.extracted for t in traces] == ["5", "7", "3", "0", "1"]
    assert [turn.role for turn in traces[2].turns] == ["answer", "judge", "reflect", "judge", "reflect", "judge", "keep"]
    assert traces[2].turns[-1].num_tokens == 0
    stats = tts_statistics(traces, 2)
    assert (stats["kept_earlier"], stats["judged"], stats["reflections"]) == (2, 8, 5)
    assert stats["accuracy_by_round"] == [pytest.approx(2 / 5), pytest.approx(3 / 5), pytest.approx(3 / 5)]
