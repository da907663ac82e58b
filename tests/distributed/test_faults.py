"""Faults a run survives (README, "Failures and recovery"): a non-finite update, bad prompts found before
step 1, preemption, a dead rank, a stalled collective. The multi-process ones are slow (`make test-slow`)."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import spark.trainer
from spark.cli import RUN_STOPPED, run_command
from spark.distributed.checkpointing import verify
from spark.distributed.preemption import SAME_PRESS_S, StopSignals
from spark.errors import DataErrors
from spark.models import load_model
from spark.trainer import Trainer
from tests.trainer_utils import QUESTIONS, read_metrics, tiny_config, torchrun


def checkpoint_tensors(folder: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint (model and optimizer state), by its dotted name."""
    dcp_to_torch_save(folder, tmp_path / f"{folder.name}.pt")
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("", torch.load(tmp_path / f"{folder.name}.pt", weights_only=False))
    return flat


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_updates_are_skipped_and_too_many_in_a_row_stop_the_run(run_files, tmp_path, monkeypatch,
                                                                         capsys):
    checkpoint, data = run_files
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(checkpoint, data, out, "spark.mode=policy-only", "run.max_steps=5",
                                  "run.save_every=1", "run.keep_last=5", "run.max_skipped_steps=1"))
    nan_steps = {2, 4, 5}
    micro_batch_loss = spark.trainer.micro_batch_loss

    def loss_nan_at_some_steps(*args, **kwargs):
        loss, sums = micro_batch_loss(*args, **kwargs)
        return (loss * float("nan") if trainer.step + 1 in nan_steps else loss), sums

    monkeypatch.setattr(spark.trainer, "micro_batch_loss", loss_nan_at_some_steps)
    # Steps 2 and 4 are skipped; step 5 is the second skip in a row, one more than max_skipped_steps allows.
    checkpoints = out / "checkpoints"
    # The command line prints it as one line, no traceback, and exits with status 3.
    assert run_command(lambda argv: trainer.train(), []) == RUN_STOPPED
    assert [m["skipped_steps"] for m in read_metrics(out)] == [0, 1, 1, 2]
    printed, line = capsys.readouterr()
    assert line == (
        "stopped: step 5: 2 updates in a row had a non-finite loss or gradient norm (run.max_skipped_steps=1); the "
        f"weights were left as they were, and the last checkpoint, {checkpoints / 'step_00000004'}, is intact: the "
        "same command with a lower optim.lr resumes from it\n")
    assert ("step 2: loss nan, grad_norm nan in the update of the policy batch: optimizer step skipped "
            "(1 in a row, run.max_skipped_steps=1)") in printed
    # A skipped step leaves the weights and the optimizer state (moments, step count) exactly as they were.
    states = {s: checkpoint_tensors(checkpoints / f"step_{s:08d}", tmp_path) for s in (1, 2, 3, 4)}
    assert same_tensors(states[1], states[2]) and same_tensors(states[3], states[4])
    assert not same_tensors(states[2], states[3])
    assert verify(checkpoints / "step_00000004") is None and not (checkpoints / "step_00000005").exists()


def test_every_prompt_is_checked_before_step_1(run_files, tmp_path):
    checkpoint, data = run_files
    rows = [{"question": q, "answer": a} for q, a in QUESTIONS]
    rows[1]["question"] = rows[4]["question"] = "What is 1 + 2? " * 10  # 209 tokens once templated
    bad = tmp_path / "long.jsonl"
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataErrors) as error:
        Trainer(tiny_config(checkpoint, bad, tmp_path / "run", "data.max_prompt_tokens=150"))
    assert error.value.errors == [f"{bad}:{line}, field 'question': prompt is 209 tokens, over "
                                  "data.max_prompt_tokens=150" for line in (2, 5)]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_second_ctrl_c_aborts_at_once_but_not_torchruns_copy_of_the_first():
    signals = StopSignals()
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"
        signals.received_at = time.monotonic() + 60  # torchrun's agent forwards the same press right after
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"
        signals.received_at = time.monotonic() - SAME_PRESS_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here at the latest
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are restored
    finally:
        signals.restore()


# ---- several processes under torchrun -----------------------------------------------------------------

TWO_RANK_RUN = ("run.max_steps=4", "run.save_every=1", "run.keep_last=4", "run.collective_timeout_s=120")


def faulty_run(fault: str, rank: int, step: int, run_files, out: Path, max_restarts: int = 0, check: bool = True):
    checkpoint, data = run_files
    return torchrun(2, "tests/distributed/dist_faults.py", fault, str(rank), str(step), str(checkpoint), str(data), str(out),
                    *TWO_RANK_RUN, max_restarts=max_restarts, check=check)


@pytest.fixture(scope="module")
def uninterrupted(run_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    faulty_run("none", 0, 0, run_files, out)
    return out


@pytest.mark.slow
def test_a_preempted_run_saves_exits_0_and_resumes_to_the_same_losses(run_files, uninterrupted, tmp_path):
    out = tmp_path / "run"
    # Rank 1 gets SIGTERM in the middle of step 2, and again while the checkpoint is being written.
    done = faulty_run("sigterm", 1, 2, run_files, out)
    saved = out / "checkpoints" / "step_00000002"
    assert (f"stopped by a signal to another rank after step 2: checkpoint saved to {saved}; run the same command "
            "to resume") in done.stdout
    assert "SIGTERM received again: still finishing the checkpoint" in done.stderr
    assert verify(saved) is None and not (out / "checkpoints" / "step_00000003").exists()
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    faulty_run("none", 0, 0, run_files, out)
    resumed, reference = read_metrics(out), read_metrics(uninterrupted)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(reference, resumed):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["recycled/loss"] == pytest.approx(
            b["recycled/loss"], abs=1e-6)
        assert a["reward/policy"] == b["reward/policy"]


@pytest.mark.slow
def test_a_killed_rank_restarts_from_the_last_checkpoint_to_the_same_weights(run_files, uninterrupted, tmp_path):
    out = tmp_path / "run"
    # Rank 1 is SIGKILLed in the middle of step 3; torchrun restarts both ranks, which resume from step 2.
    done = faulty_run("sigkill", 1, 3, run_files, out, max_restarts=1)
    assert f"resumed from {out / 'checkpoints' / 'step_00000002'} at step 2" in done.stdout
    expected, restarted = load_model(uninterrupted / "export").state_dict(), load_model(out / "export").state_dict()
    for key in expected:
        assert (expected[key] - restarted[key]).abs().max() < 1e-6, key


def test_ranks_restarted_by_torchrun_join_a_new_process_group(run_files, tmp_path):
    # torchrun keeps one store for all attempts; without a namespace per attempt the restarted ranks can read the
    # dead attempt's addresses and fail or hang in gloo's connectFullMesh (spark.distributed.groups._restart_store).
    checkpoint, data = run_files
    for _ in range(2):
        done = torchrun(2, "tests/distributed/dist_faults.py", "rejoin", "1", "0", str(checkpoint), str(data), str(tmp_path),
                        "run.collective_timeout_s=30", max_restarts=1)
        assert sorted(re.findall(r"attempt 1 rank (\d) joined", done.stdout)) == ["0", "1"]


@pytest.mark.slow
def test_a_nan_on_one_rank_skips_the_update_on_both(run_files, tmp_path):
    out = tmp_path / "run"
    faulty_run("nan", 1, 2, run_files, out)
    # Step 2's policy and recycled updates are both skipped: its checkpoint is step 1's, tensor for tensor.
    assert [m["skipped_steps"] for m in read_metrics(out)] == [0, 2, 2, 2]
    checkpoints = out / "checkpoints"
    first, second, third = (checkpoint_tensors(checkpoints / f"step_{s:08d}", tmp_path) for s in (1, 2, 3))
    assert same_tensors(first, second) and not same_tensors(second, third)


@pytest.mark.slow
def test_a_rank_waiting_on_a_stalled_peer_times_out_instead_of_hanging(run_files, tmp_path):
    checkpoint, data = run_files
    done = torchrun(2, "tests/distributed/dist_faults.py", "stall", "1", "0", str(checkpoint), str(data), str(tmp_path),
                    "run.collective_timeout_s=5", check=False)
    assert done.returncode != 0
    assert re.search(r"\[rank0\]: RuntimeError: .*Timed out waiting 5000ms", done.stdout + done.stderr)
