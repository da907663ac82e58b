"""Packing experiences into micro-batches, grouping them by their explicit group ids, held-out metrics: no FSDP."""

import torch

from spark.data.rows import Sample
from spark.distributed.groups import init_distributed
from spark.generation.sampler import Sampling
from spark.rl.packing import NoLossSequence, pack, split_by_tokens
from spark.rl.rollout import Experience, by_group, heldout_metrics, rollout_groups

WEIGHTS = {"policy": 1.0, "pointwise": 0.5, "pairwise": 1.0, "reflection": 2.0}


def experience(prompt, response, *, task="policy", group=0, reward=0.0, truncated=False, advantage=0.0):
    sample = Sample("q", "1", task=task, meta={"question": "q"})
    return Experience(sample, prompt, response, f"r{response}", reward, truncated, advantage, group=group,
                      sampler_logprobs=-torch.arange(1.0, len(response) + 1))


def test_split_by_tokens_fills_longest_first_within_the_budget():
    lengths = [(3, 2), (2, 1), (5, 4), (1, 1), (4, 4)]  # packed lengths 4, 2, 8, 1, 7
    experiences = [experience([1] * p, [2] * r, group=g) for g, (p, r) in enumerate(lengths)]
    batches = split_by_tokens(experiences, budget=9)
    assert [[len(e.prompt_ids) + len(e.response_ids) - 1 for e in b] for b in batches] == [[8], [7], [4, 2, 1]]
    assert split_by_tokens([], budget=9) == []


def test_split_by_tokens_counts_a_shared_prompt_once_per_micro_batch():
    """Group 0: a 4-token prompt and responses of 3, 3 and 2 tokens (2, 2, 1 stream tokens each): 9 tokens in all.
    Group 1: 1 + 1. With a budget of 9 group 0 fits whole; with 8 its last response starts a new micro-batch,
    which packs the prompt again."""
    group = [experience([1] * 4, [2] * r, group=0) for r in (3, 2, 3)]
    other = experience([5], [6, 7], group=1)
    assert [[e.response_ids for e in b] for b in split_by_tokens(group + [other], budget=9)] == [
        [[2] * 3, [2] * 3, [2] * 2], [[6, 7]]]
    assert [[e.response_ids for e in b] for b in split_by_tokens(group + [other], budget=8)] == [
        [[2] * 3, [2] * 3], [[2] * 2, [6, 7]]]


def test_pack_indexes_the_positions_that_predict_each_response_token():
    a = experience([10, 11, 12], [13, 14], advantage=1.5)
    b = experience([20], [21, 22, 23], task="reflection", advantage=-0.5, truncated=True, group=1)
    batch = pack([a, b], no_loss=NoLossSequence(0, {}), task_weights=WEIGHTS, drop_truncated=False)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch.targets.tolist() == [[13, 14, 0], [21, 22, 23]]
    assert batch.packing.cu_seqlens.tolist() == [0, 3, 4, 5, 7] and batch.packing.continues == [-1, 0, -1, 2]
    assert batch.packing.positions().tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch.response_index.tolist() == [[2, 3, 0], [4, 5, 6]]
    assert batch.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.advantages.tolist() == [[1.5], [-0.5]] and batch.weights.tolist() == [[1.0], [2.0]]
    assert batch.sampler_logprobs.tolist() == [[-1, -2, 0], [-1, -2, -3]]
    dropped = pack([a, b], no_loss=NoLossSequence(0, {}), task_weights=WEIGHTS, drop_truncated=True)
    assert dropped.mask.tolist() == [[1, 1, 0], [0, 0, 0]]


def test_responses_to_one_prompt_share_its_packed_tokens():
    """Group 0's prompt [10, 11] is packed once; each response continues it (positions 2, 3, ...) and reads its
    keys; the last prompt token predicts the first token of both responses. A one-token response packs nothing."""
    responses = [[13, 14, 15], [16, 17], [18]]
    batch = pack([experience([10, 11], r) for r in responses], no_loss=NoLossSequence(0, {}), task_weights=WEIGHTS,
                 drop_truncated=False)
    assert batch.input_ids.tolist() == [[10, 11, 13, 14, 16]]
    assert batch.packing.cu_seqlens.tolist() == [0, 2, 4, 5] and batch.packing.continues == [-1, 0, 0]
    assert batch.packing.positions().tolist() == [[0, 1, 2, 3, 2]]
    assert batch.packing.keys.index.tolist() == [0, 1, 0, 1, 2, 3, 0, 1, 4]
    assert batch.packing.keys.cu_seqlens.tolist() == [0, 2, 6, 9]
    assert batch.response_index.tolist() == [[1, 2, 3], [1, 4, 0], [1, 0, 0]]
    assert batch.targets.tolist() == [[13, 14, 15], [16, 17, 0], [18, 0, 0]]
    assert batch.mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]


def test_an_empty_micro_batch_is_the_filler_alone():
    batch = pack([], no_loss=NoLossSequence(7, {}), task_weights=WEIGHTS, drop_truncated=False)
    assert batch.input_ids.tolist() == [[7]] and batch.mask.tolist() == [[0.0]]


def test_groups_follow_their_ids_not_the_list_order():
    experiences = [experience([1], [2], group=g, reward=r) for g, r in [(1, 1.0), (0, 0.0), (1, 0.0), (0, 1.0)]]
    assert [[e.reward for e in group] for group in by_group(experiences)] == [[0.0, 1.0], [1.0, 0.0]]
    judge = experience([1], [2], task="pointwise", group=2)
    groups = rollout_groups(experiences + [judge])
    assert [g.rewards for g in groups] == [[0.0, 1.0], [1.0, 0.0]]
    assert groups[0].responses == ["r[2]", "r[2]"]


class ScriptedRollouts:
    """Rollouts whose response to each prompt is scripted."""

    def __init__(self, replies: dict[str, str]):
        self.replies = replies

    def sample(self, samples, sampling, n, seed):
        return [Experience(s, [1], [2], self.replies[s.prompt], 0.0, False, group=i) for i, s in enumerate(samples)]


def test_heldout_metrics_are_policy_accuracy_and_balanced_judge_accuracy():
    init_distributed()
    policy = [Sample(f"q{i}", "4") for i in range(3)]
    judge = [Sample("j0", "Yes", task="pointwise"), Sample("j1", "Yes", task="pointwise"),
             Sample("j2", "No", task="pointwise")]
    replies = {"q0": "\\boxed{4}", "q1": "\\boxed{5}", "q2": "so \\boxed{4}",
               "j0": "\\boxed{Yes}", "j1": "\\boxed{No}", "j2": "\\boxed{No}"}
    metrics = heldout_metrics(ScriptedRollouts(replies), {"policy": policy, "pointwise": judge}, Sampling(), "strict")
    assert metrics == {"eval/policy_acc": 2 / 3, "eval/judge_acc": 0.5 * (1 / 2 + 1 / 1)}
    assert heldout_metrics(ScriptedRollouts(replies), {"policy": [], "pointwise": []}, Sampling(), "strict") == {}
