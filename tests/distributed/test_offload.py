"""model.offload: what is freed on the device, when, and that the training step is the same without it."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributed.fsdp import CPUOffloadPolicy

from spark.config import ConfigError
from spark.distributed import groups
from spark.distributed.groups import full_state_dict, init_distributed, own_units
from spark.distributed.offload import Parked, PhaseMemory, local_tensor, optimizer_state
from spark.generation.sampler import STATIC_CACHES
from spark.models import load_model
from spark.models.tiny import make_tiny_checkpoint
from spark.trainer import Trainer
from tests.dist_update import fixed_experiences
from tests.trainer_utils import QUESTIONS, read_metrics, tiny_config


def test_parked_tensors_keep_their_objects_and_values():
    weight = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    state = torch.arange(4.0)
    kept = Parked([weight, state, weight], keep=True)  # one tensor listed twice (tied weights) counts once
    assert len(kept.tensors) == 2 and kept.device_bytes == (6 + 4) * 4
    kept.release()
    assert kept.device_bytes == 0 and weight.shape == (0,)
    kept.release()  # twice is once
    kept.restore()
    assert torch.equal(weight, torch.arange(6.0).reshape(2, 3)) and torch.equal(state, torch.arange(4.0))
    assert weight.requires_grad and kept.device_bytes == 40
    refilled = Parked([weight], keep=False)
    refilled.release()
    refilled.restore()
    assert weight.shape == (2, 3) and not refilled.host  # values left to the caller


@pytest.mark.parametrize("offload", ["none", "optimizer", "all"])
def test_phase_memory_frees_the_sampler_and_its_kept_cache_for_the_update(offload):
    """What each setting frees around an update, on a plain model and optimizer: the sampler's weights and the
    compiled sampler's kept KV cache from the update's start to the next `sampler_needed`, AdamW's state from the
    update's end to the next update's start ("optimizer" only)."""
    sampler = torch.nn.Linear(3, 2)
    policy = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(policy.parameters())
    policy(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    STATIC_CACHES[sampler] = "cache"
    memory = PhaseMemory(offload, sampler, optimizer)
    memory.update_begins()
    freed = offload != "none"
    assert (sampler.weight.numel() == 0) == freed and (sampler in STATIC_CACHES) != freed
    memory.update_ends()
    moments = [t for t in optimizer_state(optimizer) if t.dim()]
    assert all((t.numel() == 0) == (offload == "optimizer") for t in moments)
    memory.sampler_needed()
    assert sampler.weight.shape == (2, 3)
    memory.update_begins()
    assert all(optimizer.state[p][k].shape == p.shape for p in policy.parameters() for k in ("exp_avg", "exp_avg_sq"))
    STATIC_CACHES.pop(sampler, None)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offload")
    checkpoint = make_tiny_checkpoint(folder / "ckpt", vocab_size=401, tie=False)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return checkpoint, data


def updates_with_a_save_between(trainer: Trainer, tmp_path) -> tuple[dict, list[dict]]:
    """Two updates, a checkpoint, a third update: the full weights and each update's metrics, and what was on the
    device at each optimizer step and after each update."""
    seen = []
    step = trainer.optimizer.step

    def state_bytes():  # AdamW's moments (its step counts are 0-dim host tensors)
        return sum(local_tensor(t).untyped_storage().nbytes() for t in optimizer_state(trainer.optimizer) if t.dim())

    def recording_step():
        seen.append({"sampler": sum(p.untyped_storage().nbytes() for p in trainer.rollouts.chat.model.parameters()),
                     "state": state_bytes()})
        step()

    trainer.optimizer.step = recording_step
    metrics = []
    for update in range(3):
        metrics.append(trainer.update(fixed_experiences()))
        seen.append({"after update": state_bytes()})
        if update == 1:
            trainer.save()
    return full_state_dict(trainer.policy), metrics, seen


def test_optimizer_offload_trains_the_same_weights(tiny_files, tmp_path):
    """AdamW's state in host memory between updates (and through a checkpoint's save), the sampler's weights
    freed during the update: three updates end with the same weights and metrics as without."""
    checkpoint, data = tiny_files
    runs = {}
    for offload in ("none", "optimizer"):
        trainer = Trainer(tiny_config(checkpoint, data, tmp_path / offload, f"model.offload={offload}",
                                      "loss.mini_batch_size=4"))
        runs[offload] = updates_with_a_save_between(trainer, tmp_path)
        sampler = trainer.rollouts.chat.model
    (weights, metrics, seen), (offloaded, offloaded_metrics, offloaded_seen) = runs["none"], runs["optimizer"]
    assert metrics == offloaded_metrics
    for name in weights:
        torch.testing.assert_close(offloaded[name], weights[name], rtol=0, atol=0)
    steps = [s for s in offloaded_seen if "sampler" in s]
    assert len(steps) > 3 and all(s["sampler"] == 0 and s["state"] > 0 for s in steps[1:])  # state from step 1
    assert all(s["after update"] == 0 for s in offloaded_seen if "after update" in s)
    assert all(s["sampler"] > 0 for s in seen if "sampler" in s)  # without offload nothing is freed
    assert all(s["after update"] > 0 for s in seen if "after update" in s)
    trainer.memory.sampler_needed()  # the next rollout's weights: allocated again, then copied in
    groups.copy_full_weights(trainer.policy, sampler)
    for name, tensor in sampler.state_dict().items():
        torch.testing.assert_close(tensor, offloaded[name])


def test_offload_all_needs_a_gpu(tiny_files, tmp_path):
    checkpoint, data = tiny_files
    with pytest.raises(ConfigError, match="needs a GPU"):
        Trainer(tiny_config(checkpoint, data, tmp_path / "run", "model.offload=all"))


def test_offload_all_puts_every_unit_on_the_host(tiny_files, monkeypatch):
    """shard_model(offload=True) gives every FSDP unit FSDP2's CPUOffloadPolicy (its transfers need a GPU: the
    device check runs them). With this CPU build it fails while sharding (pinned memory), so the calls are
    recorded instead."""
    init_distributed()
    calls = []
    monkeypatch.setattr(groups, "fully_shard", lambda module, **kwargs: calls.append((module, kwargs)))
    monkeypatch.setattr(groups, "register_fsdp_forward_method", lambda module, method: None)
    model = load_model(tiny_files[0])
    groups.shard_model(model, mixed_precision=True, offload=True)
    units = [module for module, _ in calls]
    assert units == [*model.model.layers, *own_units(model), model]
    assert all(isinstance(kwargs["offload_policy"], CPUOffloadPolicy) for _, kwargs in calls)


def test_a_run_with_optimizer_offload_samples_and_logs_as_without(run_files, tmp_path):
    """Two whole steps of the trainer tests' warmed-up checkpoint (rollouts from the sampler given back its
    weights, the recycled update, the export): the same metrics as without offload, timings aside."""
    checkpoint, data = run_files
    logged = {}
    for offload in ("none", "optimizer"):
        out = tmp_path / offload
        Trainer(tiny_config(checkpoint, data, out, f"model.offload={offload}")).train()
        logged[offload] = [{k: v for k, v in m.items() if not k.startswith(("time/", "minutes", "tokens_per_s", "tflops", "mfu"))}
                           for m in read_metrics(out)]
        assert (out / "export" / "model.safetensors").exists()
    assert logged["optimizer"] == logged["none"] and len(logged["none"]) == 2
