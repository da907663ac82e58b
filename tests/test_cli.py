"""What the command lines print for a mistake in their input: one line naming it, exit status 2, no traceback
(spark.cli); --debug shows the traceback, and a bug keeps it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import train
import tts
from spark import plan
from spark.cli import INTERRUPTED, USER_ERROR, run_command
from spark.models.tiny import make_tiny_checkpoint
from tests.trainer_utils import ROOT, torchrun

TINY, FULL = str(ROOT / "configs" / "tiny.toml"), str(ROOT / "configs" / "7b.toml")


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    """Each test is a program of its own: no torchrun variables, and those a process group of one sets are unset
    again after it (set first, so that monkeypatch records them and restores their absence)."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SPARK_DEBUG"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny", seed=1)


def broken_copy(checkpoint: Path, folder: Path) -> Path:
    shutil.copytree(checkpoint, folder)
    return folder


def fails_with(main, argv: list[str], capsys) -> str:
    """The one line `main` prints for a user error (and that it exits 2 and prints nothing else)."""
    assert run_command(main, argv) == USER_ERROR
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_a_config_mistake_is_one_line_and_exit_status_2_and_debug_shows_the_traceback():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "train.py", TINY, "loss.clip_low=2"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout) == (USER_ERROR, "")
    assert done.stderr == "error: command line: 'loss.clip_low' = 2.0 must be in (0, 1)\n"
    done = subprocess.run(command + ["--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("Traceback (most recent call last):")
    assert done.stderr.endswith("spark.config.ConfigError: command line: 'loss.clip_low' = 2.0 must be in (0, 1)\n")


def test_a_wrong_checkpoint_path_is_named_and_no_hub_is_tried(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert fails_with(evaluate.main, ["--model", str(missing), "--bench", "gsm8k", "--limit", "1"], capsys) == \
        f"error: {missing}: no such checkpoint directory"
    assert fails_with(tts.main, ["--model", str(missing), "--question", "1+1?"], capsys) == \
        f"error: {missing}: no such checkpoint directory"
    assert fails_with(tts.main, ["--model", str(tmp_path), "--question", "1+1?"], capsys) == \
        f"error: {tmp_path / 'config.json'}: not found (is {tmp_path} a Hugging Face checkpoint directory?)"


def test_a_broken_checkpoint_is_one_line_naming_the_file(checkpoint, capsys, tmp_path):
    truncated = broken_copy(checkpoint, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    line = fails_with(tts.main, ["--model", str(truncated), "--question", "1+1?"], capsys)
    assert line.startswith(f"error: {weights}: not a readable safetensors file (") and \
        line.endswith("); was it copied in full?")
    other = broken_copy(checkpoint, tmp_path / "llama")
    (other / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    assert fails_with(evaluate.main, ["--model", str(other), "--bench", "gsm8k", "--limit", "1"], capsys) == (
        f"error: {other / 'config.json'}: unknown architecture 'LlamaForCausalLM' (supported: "
        "Qwen2ForCausalLM, Qwen2_5_VLForConditionalGeneration)")
    no_tokenizer = broken_copy(checkpoint, tmp_path / "no_tokenizer")
    for name in ("tokenizer.json", "vocab.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    assert fails_with(tts.main, ["--model", str(no_tokenizer), "--question", "1+1?"], capsys) == \
        f"error: {no_tokenizer}: no tokenizer.json (or vocab.json) in the checkpoint directory"


def test_bad_flags_are_named_as_flags(capsys):
    assert fails_with(evaluate.main, ["--model", "x", "--bench", "gsm8k", "--temperature", "-1"], capsys) == \
        "error: evaluate.py: --temperature -1.0 must be >= 0"
    assert fails_with(evaluate.main, ["--model", "x", "--bench", "gsm8k", "--n", "0"], capsys) == \
        "error: evaluate.py: --n 0 must be >= 1"
    assert fails_with(evaluate.main, ["--model", "x", "--bench", "gsm8k", "--limit", "0"], capsys) == \
        "error: evaluate.py: --limit 0 must be >= 1 (see --help)"
    assert fails_with(evaluate.main, ["--model", "x"], capsys) == \
        "error: evaluate.py: the following arguments are required: --bench (see --help)"
    assert fails_with(tts.main, ["--model", "x", "--question", "q", "--max-new-tokens", "0"], capsys) == \
        "error: tts.py: --max-new-tokens 0 must be >= 1"
    assert fails_with(plan.main, [FULL, "--gpus", "0"], capsys) == \
        "error: python -m spark.plan: --gpus 0 must be >= 1 and --gpu-memory 80 > 0 (see --help)"
    assert fails_with(plan.main, [FULL, "rollout.top_p=2"], capsys) == \
        "error: command line: 'rollout.top_p' = 2.0 must be in (0, 1]"


def test_only_rank_0_prints_a_mistake_found_before_the_process_group(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert run_command(train.main, [TINY, "data.epochs=0"]) == USER_ERROR
    assert capsys.readouterr() == ("", "")


def test_under_torchrun_the_rank_that_finds_a_mistake_prints_it_once(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"question": "What is 1 + 1?"}\n')
    done = torchrun(2, "train.py", TINY, f"data.train_files=[{json.dumps(str(bad))}]",
                    f"run.out_dir={json.dumps(str(tmp_path / 'run'))}", check=False)
    assert done.returncode != 0
    line = f"error: {bad}, line 1, field 'answer': missing"
    printed = done.stdout + done.stderr
    assert printed.count(line) == 1 and "spark.data.rows.DataError" not in printed  # no rank's traceback


def test_ctrl_c_and_bugs(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_command(interrupted, []) == INTERRUPTED
    assert capsys.readouterr() == ("", "interrupted\n")

    def bug(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_command(bug, [])


def test_train_help_lists_the_tables_and_the_full_config(capsys):
    assert run_command(train.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "configs/7b.toml shows every key" in out
    tables = [line.split()[0] for line in out.splitlines() if line.startswith("  [")]
    assert tables == ["[model]", "[data]", "[rollout]", "[reward]", "[loss]", "[optim]", "[spark]", "[spark.recycle]",
                      "[run]"]
    assert "  [loss]  The policy loss, the KL to the reference, advantages, and how a batch is cut into optimizer " \
           "steps.\n      policy_loss, kl_coef, kl_kind, clip_low," in out
