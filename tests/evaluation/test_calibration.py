"""Calibrating the rejection threshold: the curve and the pick on toy paths by hand, the runs that calibrate, and
the refusal of calibration rows that the evaluation also holds."""

from __future__ import annotations

import json

import pytest

from spark.errors import UserError
from spark.evaluation import EvalConfig, evaluate, parse_spec
from spark.evaluation.calibration import Path, beats_no_tts, calibrate, kept, paths, point, reflections
from spark.evaluation.tts import Problem, Trace, Turn
from spark.tasks.prompts import reflection_prompt
from tests.evaluation.test_evaluation import N, math_model, reply, write_jsonl
from tests.evaluation.test_tts import boxed

# Four problems, each: the judge's p(wrong) of each answer it judged, whether each answer is correct.
TOY = [
    Path((0.9, 0.2), (False, True, True)),  # wrong, confidently rejected, fixed
    Path((0.6, 0.6), (True, False, False)),  # right, doubted: a reflection breaks it
    Path((0.1,), (True, False)),  # right, accepted
    Path((0.7, 0.9), (False, False, True)),  # wrong, fixed only by the second reflection
]


def test_the_answer_kept_at_a_threshold():
    assert [kept(TOY[0], p) for p in (0.0, 0.2, 0.5, 0.9, 1.0)] == [2, 1, 1, 0, 0]
    assert [kept(TOY[2], p) for p in (0.0, 0.1)] == [1, 0]


def test_keep_better_keeps_the_best_rated_answer_when_none_is_accepted():
    judged_last = Path((0.9, 0.6, 0.95), (False, True, False))  # keep_better judged the last reflection too
    assert [kept(judged_last, p) for p in (0.0, 0.5, 0.6, 0.95)] == [1, 1, 1, 0]
    assert [reflections(judged_last, p) for p in (0.0, 0.6, 0.95)] == [2, 1, 0]


def test_the_curve_and_the_pick_by_hand():
    result = calibrate(TOY, z=0.0)
    assert [row["threshold"] for row in result["curve"]] == [0.0, 0.1, 0.2, 0.6, 0.7, 0.9, 1.0]
    # accuracy at P: problem 0 right for P < 0.9, 1 right for P >= 0.6, 2 right for P >= 0.1, 3 right for P < 0.7
    assert [row["accuracy"] for row in result["curve"]] == [0.5, 0.75, 0.75, 1.0, 0.75, 0.5, 0.5]
    assert (result["threshold"], result["accuracy"], result["no_tts_accuracy"], result["n"]) == (0.6, 1.0, 0.5, 4)
    at = point(TOY, 0.6)  # first answers: wrong 0 and 3 (both rejected), right 1 and 2 (both accepted)
    assert (at["false_accept_rate"], at["false_reject_rate"], at["reflections"]) == (0.0, 0.0, 3)
    assert (at["fixed"], at["broke"]) == (2, 0)
    at = point(TOY, 0.0)  # every first answer rejected: 0 and 3 fixed, 1 and 2 broken
    assert (at["false_accept_rate"], at["false_reject_rate"], at["reflections"]) == (0.0, 1.0, 7)
    assert (at["fixed"], at["broke"]) == (2, 2)


def test_a_gain_must_pass_the_sign_test():
    # P = 0.6 fixes 2 and breaks none: 2 < 1.645 sqrt(2), so without TTS stays; six times as many problems pass
    assert calibrate(TOY)["threshold"] == 1.0
    assert (beats_no_tts({"fixed": 2, "broke": 0}, 1.645), beats_no_tts({"fixed": 12, "broke": 0}, 1.645)) == (False, True)
    assert calibrate(TOY * 6)["threshold"] == 0.6


def test_equal_accuracies_pick_the_largest_threshold():
    never_helps = [Path((0.3,), (True, True)), Path((0.8,), (False, False))]
    assert calibrate(never_helps, z=0.0)["threshold"] == 1.0


def test_paths_of_traces():
    def judged(p):
        return Turn("judge", 0, "", 1, "stop", "No", verdict_prob=p)

    trace = Trace(Problem("Q", "1"), [Turn("answer", 0, "", 1, "stop", "2", False), judged(0.75),
                                      Turn("reflect", 1, "", 1, "stop", "1", True)])
    assert paths([trace]) == [Path((0.75,), (False, True))]


def reflective_model():
    model = math_model()
    for i in range(N):
        model.replies[reflection_prompt(f"What is {i} + 1?", reply(i), cot=True)] = boxed(str(i + 1))
    return model


def test_evaluation_runs_at_the_calibrated_threshold(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(N)]
    calibration = parse_spec(f"file:{write_jsonl(tmp_path / 'dev.jsonl', rows[:5])}", "unused")
    bench = parse_spec(f"file:{write_jsonl(tmp_path / 'test.jsonl', rows[5:])}", "unused")
    out = tmp_path / "out"
    # The scripted judge gives no probabilities: p(wrong) 1 after No, 0 after Yes. On rows 0-4 reflecting after
    # a No fixes rows 0 and 3: 4 of 5 right at P = 0 against 2 of 5 without the loop (P = 1), a gain of 2 problems
    # that the sign test does not take (2 < 1.645 sqrt(2)): the evaluation runs without reflecting.
    summary = evaluate(reflective_model(), [bench], EvalConfig(tts=True, max_rounds=1), out_dir=out,
                       calibration=calibration)
    saved = json.loads((out / "calibration.json").read_text())
    assert (saved["threshold"], saved["accuracy"], saved["no_tts_accuracy"]) == (1.0, 0.4, 0.4)
    assert [(row["accuracy"], row["fixed"], row["broke"]) for row in saved["curve"]] == [(0.8, 2, 0), (0.4, 0, 0)]
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["calibration"]["threshold"] == 1.0
    assert (summary["test"]["accuracy"], summary["test"]["tts"]["reflections"]) == (0.4, 0)  # rows 6 and 8
    assert json.loads((out / "config.json").read_text())["calibrate"] == "dev"


def test_calibration_rows_that_the_evaluation_holds_are_refused(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(N)]
    calibration = parse_spec(f"file:{write_jsonl(tmp_path / 'dev.jsonl', rows[:6])}", "unused")
    bench = parse_spec(f"file:{write_jsonl(tmp_path / 'test.jsonl', rows[5:])}", "unused")
    with pytest.raises(UserError, match=r"--calibrate dev: row 5 \('What is 5 \+ 1\?'\) is also row 0 of benchmark "
                                        r"test; calibration problems must be apart from the evaluation's"):
        evaluate(reflective_model(), [bench], EvalConfig(tts=True), calibration=calibration)


def test_tts_cli_refuses_a_question_its_calibration_file_holds(tmp_path):
    import tts

    dev = write_jsonl(tmp_path / "dev.jsonl", [{"question": "What is 2 + 1?", "answer": "3"}])
    with pytest.raises(UserError, match="row 0 .* is also row 0 of benchmark --question"):
        tts.main(["--model", "unused", "--question", "What is 2 + 1?", "--calibrate", str(dev)])
