"""Packing experiences into micro-batches, and grouping them by their explicit group ids: pure, no FSDP."""

import torch

from spark.data import Sample
from spark.packing import Filler, pack, split_by_tokens
from spark.rollout import Experience, by_group, rollout_groups

WEIGHTS = {"policy": 1.0, "pointwise": 0.5, "pairwise": 1.0, "reflection": 2.0}


def experience(prompt, response, *, task="policy", group=0, reward=0.0, truncated=False, advantage=0.0):
    sample = Sample("q", "1", task=task, meta={"question": "q"})
    return Experience(sample, prompt, response, f"r{response}", reward, truncated, advantage, group=group,
                      sampler_logprobs=-torch.arange(1.0, len(response) + 1))


def test_split_by_tokens_fills_longest_first_within_the_budget():
    lengths = [(3, 2), (2, 1), (5, 4), (1, 1), (4, 4)]  # packed lengths 4, 2, 8, 1, 7
    experiences = [experience([1] * p, [2] * r) for p, r in lengths]
    batches = split_by_tokens(experiences, budget=9)
    assert [[len(e.prompt_ids) + len(e.response_ids) - 1 for e in b] for b in batches] == [[8], [7], [4, 2, 1]]
    assert split_by_tokens([], budget=9) == []


def test_pack_indexes_the_positions_that_predict_each_response_token():
    a = experience([10, 11, 12], [13, 14], advantage=1.5)
    b = experience([20], [21, 22, 23], task="reflection", advantage=-0.5, truncated=True)
    batch = pack([a, b], filler=Filler(0, {}), task_weights=WEIGHTS, drop_truncated=False)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch.targets.tolist() == [[11, 12, 13, 14, 21, 22, 23]]
    assert batch.packing.cu_seqlens.tolist() == [0, 4, 7]
    assert batch.response_index.tolist() == [[2, 3, 0], [4, 5, 6]]
    assert batch.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.equal(batch.targets[0][batch.response_index[0, :2]], torch.tensor([13, 14]))
    assert batch.advantages.tolist() == [[1.5], [-0.5]] and batch.weights.tolist() == [[1.0], [2.0]]
    assert batch.sampler_logprobs.tolist() == [[-1, -2, 0], [-1, -2, -3]]
    dropped = pack([a, b], filler=Filler(0, {}), task_weights=WEIGHTS, drop_truncated=True)
    assert dropped.mask.tolist() == [[1, 1, 0], [0, 0, 0]]


def test_an_empty_micro_batch_is_the_filler_alone():
    batch = pack([], filler=Filler(7, {}), task_weights=WEIGHTS, drop_truncated=False)
    assert batch.input_ids.tolist() == [[7]] and batch.mask.tolist() == [[0.0]]


def test_groups_follow_their_ids_not_the_list_order():
    experiences = [experience([1], [2], group=g, reward=r) for g, r in [(1, 1.0), (0, 0.0), (1, 0.0), (0, 1.0)]]
    assert [[e.reward for e in group] for group in by_group(experiences)] == [[0.0, 1.0], [1.0, 0.0]]
    judge = experience([1], [2], task="pointwise", group=2)
    groups = rollout_groups(experiences + [judge])
    assert [g.rewards for g in groups] == [[0.0, 1.0], [1.0, 0.0]]
    assert groups[0].responses == ["r[2]", "r[2]"]
