"""The console line, the ETA, and metrics that a resumed run truncates so that no step appears twice."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import spark.distributed.metrics
from spark.distributed.metrics import MetricsLogger, console_line, duration


def test_the_console_line_shows_rewards_held_out_accuracies_step_time_and_eta():
    metrics = {"reward/policy": 0.4375, "reward/pointwise": 0.625, "eval/policy_acc": 0.41, "eval/judge_acc": 0.625,
               "kl": 0.0102, "entropy": 0.93, "grad_norm": 0.51, "response_len/mean": 31.0, "tokens_per_s": 830.4,
               "time/step": 6.2, "lr": 1e-4}
    assert console_line(12, 30, metrics, 111.6) == (
        "step 12/30 | reward policy=0.438 pointwise=0.625 | held-out policy_acc=0.41 judge_acc=0.625 | kl=0.0102 "
        "entropy=0.93 grad_norm=0.51 response_len=31 tokens/s=830 | 6.2 s/step, ETA 1m52s")
    # Step 0 is the held-out evaluation of the start; a step without one shows no held-out part.
    assert console_line(0, 30, {"eval/policy_acc": 0.25, "eval/judge_acc": 0.5}, None) == \
        "step 0/30 | held-out policy_acc=0.25 judge_acc=0.5"
    assert console_line(3, 30, {"reward/policy": 1.0, "time/step": 2.0}, 54.0) == \
        "step 3/30 | reward policy=1 | 2 s/step, ETA 54s"
    assert [duration(s) for s in (42, 155, 11220)] == ["42s", "2m35s", "3h07m"]


def test_the_eta_comes_from_the_wall_time_of_the_steps_this_process_ran(tmp_path, monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(spark.distributed.metrics.time, "time", lambda: clock[0])
    logger = MetricsLogger(tmp_path)
    logger.log(0, {"eval/policy_acc": 0.5}, 10)
    clock[0] += 12  # the first step ran 4 s of it: timed from 1008
    logger.log(1, {"time/step": 4.0}, 10)  # 4 s a step, 9 to go
    clock[0] += 6
    logger.log(2, {"time/step": 5.0}, 10)  # 10 s for 2 steps, 8 to go
    logger.close()
    assert capsys.readouterr().out.splitlines() == [
        "step 0/10 | held-out policy_acc=0.5", "step 1/10 | 4 s/step, ETA 36s", "step 2/10 | 5 s/step, ETA 40s"]


def scalar_steps(out_dir, tag: str) -> list[int]:
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_a_resumed_run_drops_the_steps_it_runs_again(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(5):
        logger.log(step, {"loss": float(step)}, 5)
        logger.log_samples(step, [{"task": "policy", "prompt": "p", "response": "r", "reward": 1.0}])
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # killed while writing
    resumed = MetricsLogger(tmp_path, next_step=3)  # from step 2's checkpoint: steps 3 and 4 run again
    resumed.log(3, {"loss": 30.0}, 5)
    resumed.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
    samples = [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [0, 1, 2]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert scalar_steps(tmp_path, "loss") == [0, 1, 2, 3]
    MetricsLogger(tmp_path, next_step=0).close()  # a run that starts over keeps nothing
    assert (tmp_path / "metrics.jsonl").read_text() == "" and (tmp_path / "samples.jsonl").read_text() == ""
