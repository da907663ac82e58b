"""Each policy-gradient variant for a few steps of the tiny run: finite losses, and its settings in the metrics."""

import contextlib
import io
import json
import math
import shutil

import pytest

from spark.trainer import Trainer
from tests.trainer_utils import read_metrics, tiny_config, torchrun

# Sampled hotter than the policy, with a seed whose first step mixes right and wrong answers in a group (a policy
# gradient from step 1); two mini-batches per step, so that the ratios are not 1.
BASE = ("rollout.temperature=1.5", "data.seed=1", "loss.mini_batch_size=2", "run.max_steps=2")

VARIANTS = {
    "grpo": (),
    "gspo": ("loss.policy_loss=gspo", "loss.aggregation=seq-mean-token-mean"),
    "dr-grpo": ("loss.advantage_scale=none", "loss.aggregation=seq-mean-token-sum-norm"),
    "dynamic-sampling": ("rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=3"),
    "overlong": ("reward.overlong_buffer=4", "reward.overlong_penalty=0.5"),
    # The sampler draws from repetition-penalised logits, the trainer scores plain ones: a mismatch to correct
    "tis": ("loss.tis_cap=2.0", "rollout.repetition_penalty=1.3"),
    "alarms": ("run.alarm_entropy_above=1e-6", "run.alarm_logp_mismatch_above=1e-9"),
}


@pytest.fixture(scope="module")
def runs(run_files, tmp_path_factory):
    checkpoint, data = run_files
    metrics, printed = {}, {}
    for name, overrides in VARIANTS.items():
        out, stdout = tmp_path_factory.mktemp(name), io.StringIO()
        with contextlib.redirect_stdout(stdout):
            Trainer(tiny_config(checkpoint, data, out, *BASE, *overrides)).train()
        metrics[name], printed[name] = read_metrics(out), stdout.getvalue().splitlines()
    return metrics, printed


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_trains_with_finite_losses(runs, name):
    steps = runs[0][name]
    assert [m["step"] for m in steps] == [1, 2]
    # A dynamic-sampling step whose rounds all drew groups of equal rewards trains nothing (and logs no loss)
    trained = [m for m in steps if "loss" in m]
    assert trained and all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in trained)
    assert len(trained) == 2 or name == "dynamic-sampling"
    assert all(math.isfinite(m["recycled/loss"]) for m in steps)


@pytest.mark.slow
def test_the_variants_show_in_the_metrics(runs):
    runs, printed = runs
    grpo = runs["grpo"]
    # The first step samples the same rollouts in every run: a different loss is the variant's
    for name in ("gspo", "dr-grpo"):
        assert runs[name][0]["loss"] != pytest.approx(grpo[0]["loss"], abs=1e-6), name
    for m in runs["dynamic-sampling"]:
        assert m["sampling_rounds"] >= 1 and m["dropped_groups"] >= 0
    assert "sampling_rounds" not in grpo[0]
    assert all(m["reward/overlong_shaping"] <= 0 for m in runs["overlong"])
    assert any(m["reward/overlong_shaping"] < 0 for m in runs["overlong"])
    assert all(m["reward/overlong_shaping"] == 0 for m in grpo)
    for m in runs["tis"]:
        assert m["tis_weight"] != pytest.approx(1.0, abs=1e-6) and 0 <= m["tis_capped"] <= 1
    assert "tis_weight" not in grpo[0]
    assert [m["alarm/entropy_high"] for m in runs["alarms"]] == [1.0, 1.0]
    assert "alarm/entropy_high" not in grpo[0]
    alarms = [line for line in printed["alarms"] if " alarm " in line]
    entropy = runs["alarms"][0]["entropy"]
    assert alarms[0] == f"step 1: alarm entropy_high: entropy = {entropy:.4g} is above run.alarm_entropy_above = 1e-06"
    assert [line.split(":")[1] for line in alarms].count(" alarm entropy_high") == 1  # held at step 2: not again
    assert not any(" alarm " in line for line in printed["grpo"])


@pytest.mark.slow
def test_dynamic_sampling_resumed_draws_the_same_prompts(run_files, tmp_path):
    checkpoint, data = run_files
    out = tmp_path / "run"
    config = tiny_config(checkpoint, data, out, *BASE, *VARIANTS["dynamic-sampling"], "run.save_every=1")
    Trainer(config).train()
    uninterrupted = read_metrics(out)
    shutil.rmtree(out / "checkpoints" / "step_00000002")
    resumed_run = Trainer(config)
    assert resumed_run.step == 1
    resumed_run.train()
    resumed = read_metrics(out)
    assert [m["step"] for m in resumed] == [1, 2]
    for key in ("sampling_rounds", "dropped_groups", "reward/policy", "generated_tokens"):
        assert resumed[1][key] == uninterrupted[1][key], key


@pytest.mark.slow
def test_dynamic_sampling_on_two_ranks(run_files, tmp_path):
    """The ranks agree on the rounds (a collective each) and on which groups fill the batch."""
    checkpoint, data = run_files
    config = tmp_path / "tiny.toml"
    config.write_text(f'[model]\npath = "{checkpoint}"\n[data]\ntrain_files = ["{data}"]\n')
    out = tmp_path / "run"
    torchrun(2, "train.py", str(config), "data.prompts_per_step=4", "rollout.n=2", "rollout.max_new_tokens=6",
             "rollout.temperature=1.5", "run.max_steps=2", f"run.out_dir={json.dumps(str(out))}", "optim.lr=1e-3",
             "loss.micro_batch_tokens=40", "loss.mini_batch_size=4", "rollout.dynamic_sampling=true",
             "rollout.max_sampling_rounds=3")
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 1 <= m["sampling_rounds"] <= 3 and m["dropped_groups"] >= 0
        assert "loss" not in m or math.isfinite(m["loss"])
