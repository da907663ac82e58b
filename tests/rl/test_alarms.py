from __future__ import annotations

from spark.rl.alarms import Alarm, Alarms


def test_an_alarm_prints_once_when_it_starts_to_hold(capsys):
    alarms = Alarms([Alarm("entropy_low", "entropy", 0.5, False, "run.alarm_entropy_below"),
                     Alarm("logp_mismatch", "logp_mismatch", 0.1, True, "run.alarm_logp_mismatch_above"),
                     Alarm("entropy_high", "entropy", 0.0, True, "run.alarm_entropy_above")])  # bound 0: off
    steps = [{"entropy": 0.8, "logp_mismatch": 0.01}, {"entropy": 0.3, "logp_mismatch": 0.2},
             {"entropy": 0.2, "logp_mismatch": 0.3}, {"loss": 1.0}, {"entropy": 0.1, "logp_mismatch": 0.05},
             {"entropy": 0.9, "logp_mismatch": 0.05}, {"entropy": 0.4, "logp_mismatch": 0.05}]
    states = [alarms.check(step, metrics) for step, metrics in enumerate(steps, start=1)]
    assert states[3] == {}  # step 4 had no update: the alarms stay as they were, and print nothing at step 5
    assert [s["alarm/entropy_low"] for s in states if s] == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert [s["alarm/logp_mismatch"] for s in states if s] == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert "alarm/entropy_high" not in states[0]
    assert capsys.readouterr().out.splitlines() == [
        "step 2: alarm entropy_low: entropy = 0.3 is below run.alarm_entropy_below = 0.5",
        "step 2: alarm logp_mismatch: logp_mismatch = 0.2 is above run.alarm_logp_mismatch_above = 0.1",
        "step 7: alarm entropy_low: entropy = 0.4 is below run.alarm_entropy_below = 0.5"]
    alarms.check(6, {"entropy": 0.1}, show=False)
    assert capsys.readouterr().out == ""
