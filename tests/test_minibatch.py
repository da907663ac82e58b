"""Several optimizer steps per rollout batch: the mini-batch plan, and the trainer's update against the same
steps written out by hand (plain autograd and AdamW, no trainer)."""

import pytest
import torch

from spark.data.rows import Sample
from spark.distributed.groups import full_state_dict
from spark.models import load_model
from spark.rl.packing import experience_keys, mini_batches
from spark.rl.recycle import deal, split_evenly
from spark.rl.rollout import Experience
from spark.trainer import Salt, Trainer, cosine_lr, step_seed
from tests.dist_update import fixed_experiences
from tests.trainer_utils import read_metrics, tiny_config, torchrun


def test_mini_batches_partition_each_pass_in_its_own_seeded_order():
    keys = [(g, 0) for g in range(10)]
    plan = mini_batches(keys[::-1], 4, 2, seed=5)
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(plan[:3], [])) == keys and sorted(sum(plan[3:], [])) == keys
    assert plan[:3] != plan[3:]  # each pass its own order
    assert plan == mini_batches(keys, 4, 2, seed=5)  # the same whatever order the keys come in
    assert plan != mini_batches(keys, 4, 2, seed=6)
    assert mini_batches(keys, 0, 2, seed=5) == [keys, keys]  # one mini-batch: the whole batch, every pass
    assert mini_batches(keys, 10, 1, seed=5) == [keys]
    assert mini_batches([], 4, 1, seed=5) == []


def test_mini_batches_keep_a_groups_responses_together_unless_asked_not_to():
    keys = [(g, i) for g in range(6) for i in range(2)]
    plan = mini_batches(keys, 4, 1, seed=0)
    assert [len(b) for b in plan] == [4, 4, 4]
    for batch in plan:
        assert {(g, 0) in batch for g, i in batch} == {True} and {(g, 1) in batch for g, i in batch} == {True}
    loose = mini_batches(keys, 4, 1, seed=0, keep_groups=False)
    assert sorted(sum(loose, [])) == keys
    assert any((g, 1 - i) not in batch for batch in loose for g, i in batch)  # some group split


def test_experience_keys_number_the_responses_of_each_group():
    experiences = [Experience(Sample("q", "1"), [1], [2], "r", 0.0, False, group=g) for g in (7, 3, 7, 7, 3)]
    assert experience_keys(experiences) == [(7, 0), (3, 0), (7, 1), (7, 2), (3, 1)]


def test_deal_and_split_evenly():
    assert split_evenly(7, 3) == [3, 2, 2]
    assert split_evenly(32, 8) == [4] * 8
    assert deal([5, 1], 4) == [3, 1]
    assert deal([10, 10], 6) == [3, 3]
    assert deal([0, 3, 9], 7) == [0, 3, 4]
    with pytest.raises(ValueError, match="7 samples asked of 6 waiting"):
        deal([3, 3], 7)


def response_logprobs(model, experience: Experience) -> torch.Tensor:
    """log pi(response token | everything before it), [len(response)], from one plain forward."""
    ids = experience.prompt_ids + experience.response_ids
    logits = model(torch.tensor([ids]))[0, len(experience.prompt_ids) - 1:len(ids) - 1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(experience.response_ids)[:, None])[:, 0]


def by_hand(checkpoint, experiences, plan, *, lr, clip, kl_coef) -> tuple[dict, list[float]]:
    """The update written out: pi_old and the reference fixed before the first step; each mini-batch one AdamW
    step on its token-mean clipped surrogate + kl_coef * k3, the gradient clipped to norm 1."""
    model = load_model(checkpoint)
    with torch.no_grad():
        fixed = [response_logprobs(model, e) for e in experiences]  # pi_old == the reference here
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    keys = experience_keys(experiences)
    losses = []
    for mini_batch in plan:
        chosen = [i for i, key in enumerate(keys) if key in mini_batch]
        total, tokens = 0.0, sum(len(experiences[i].response_ids) for i in chosen)
        for i in chosen:
            logp, advantage = response_logprobs(model, experiences[i]), experiences[i].advantage
            ratio = torch.exp(logp - fixed[i])
            surrogate = torch.maximum(-advantage * ratio, -advantage * ratio.clamp(1 - clip, 1 + clip))
            kl = torch.exp(fixed[i] - logp) - (fixed[i] - logp) - 1
            total = total + (surrogate + kl_coef * kl).sum() / tokens
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total.item())
    return model.state_dict(), losses


@pytest.mark.parametrize("mini_batch_size, ppo_epochs", [(0, 1), (2, 2), (0, 2)])
def test_update_equals_the_optimizer_steps_written_out(run_files, tmp_path, mini_batch_size, ppo_epochs):
    """(0, 1): one step on the whole batch, today's update; (2, 2): six steps, where the policy has moved by the
    second, so the ratio leaves [1 - clip, 1 + clip] and clipping binds; (0, 2): two passes over one
    mini-batch are two AdamW steps (a pass is never a gradient multiplier)."""
    checkpoint, data = run_files
    trainer = Trainer(tiny_config(checkpoint, data, tmp_path / "run", "rollout.temperature=1.0",
                                  f"loss.mini_batch_size={mini_batch_size}", f"loss.ppo_epochs={ppo_epochs}",
                                  "loss.clip_low=0.05", "loss.clip_high=0.05", "data.prompts_per_step=3"))
    experiences = fixed_experiences()
    metrics = trainer.update(experiences)
    plan = mini_batches(experience_keys(experiences), mini_batch_size, ppo_epochs,
                        step_seed(trainer.config.data.seed, 0, 0, Salt.MINI_BATCHES), keep_groups=True)
    assert metrics["optimizer_steps"] == len(plan) == ppo_epochs * (3 if mini_batch_size else 1)
    state = next(iter(trainer.optimizer.state.values()))
    assert int(state["step"]) == len(plan)
    expected, losses = by_hand(checkpoint, experiences, plan, lr=1e-3, clip=0.05, kl_coef=0.01)
    assert metrics["loss_first"] == pytest.approx(losses[0], abs=1e-5)
    assert metrics["loss_last"] == pytest.approx(losses[-1], abs=1e-5)
    for name, value in full_state_dict(trainer.policy).items():
        assert (value - expected[name]).abs().max() < 2e-5, name
    if len(plan) == 1:
        assert metrics["clip_frac"] == 0.0  # the ratio is 1 in a single step
    else:
        assert metrics["clip_frac"] > 0.05


def test_mini_batches_on_two_ranks_equal_one_rank(run_files, tmp_path):
    checkpoint, data = run_files
    results = {}
    for nproc in (1, 2):
        result = tmp_path / f"update_{nproc}.pt"
        torchrun(nproc, "tests/dist_update.py", str(checkpoint), str(data), str(tmp_path / f"out{nproc}"),
                 str(result), "loss.mini_batch_size=2", "loss.ppo_epochs=2", "data.prompts_per_step=2")
        results[nproc] = torch.load(result)
    one, two = results[1], results[2]
    # Twelve AdamW steps of lr 1e-3: an entry whose gradient is near 0 moves by up to lr whatever its rounding,
    # so the bound is a fraction of one step, not fp32 rounding.
    for key in one["state"]:
        assert (one["state"][key] - two["state"][key]).abs().max() < 2e-4, key
    for update in (0, 1):
        assert one["metrics"][update]["optimizer_steps"] == two["metrics"][update]["optimizer_steps"] == 6
        for key in ("loss_first", "loss_last", "clip_frac", "kl"):
            assert one["metrics"][update][key] == pytest.approx(two["metrics"][update][key], rel=1e-5, abs=1e-6), key


def test_schedule_counts_optimizer_steps_and_recycled_prompts_wait_for_a_full_batch(run_files, tmp_path):
    """2 prompts x 2 rollouts in mini-batches of 2: two optimizer steps per policy batch, four in the run's
    schedule; the recycled update takes the rate of the policy update's last step. Recycled prompts are trained
    only in full batches of spark.recycled_batch, the rest carried."""
    checkpoint, data = run_files
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(checkpoint, data, out, "loss.mini_batch_size=2", "optim.min_lr_ratio=0.1",
                                  "optim.warmup_ratio=0.25", "spark.recycled_batch=3"))
    assert (trainer.policy_optimizer_steps, trainer.schedule_steps) == (2, 4)
    waiting = [Sample(f"q{i}", "1", task="reflection") for i in range(7)]
    trainer.queue.push(waiting)
    assert trainer.take_recycled() == waiting[:6] and len(trainer.queue) == 1  # two full batches of 3
    assert trainer.take_recycled() == [] and len(trainer.queue) == 1
    trainer.queue.pop(1)
    trainer.train()
    metrics = read_metrics(out)
    for step, m in enumerate(metrics):
        assert m["optimizer_steps"] == 2
        # the rate of schedule step 2 * step + 1 (warm-up: 1 step), which the recycled update keeps
        assert m["lr"] == pytest.approx(1e-3 * cosine_lr(2 * step + 1, 4, 1, 0.1))
    recycled = sum(m["recycle/reflection"] + m["recycle/pointwise"] + m["recycle/pairwise"] for m in metrics)
    trained = sum(m.get("recycled/optimizer_steps", 0) for m in metrics)
    assert metrics[-1]["recycle/waiting"] == recycled % 3 and trained > 0
