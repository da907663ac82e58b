from __future__ import annotations

import math

import pytest
import torch

from spark.models.logprobs import token_logprobs
from spark.rl.losses import aggregate, group_advantages, kl_penalty, mask_truncated, policy_loss

EPS = 1e-6


def test_group_advantages_group_scale():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # group 0: mean 0.5, var 0.25; group 1: mean 0.25, var (0.75^2 + 3 * 0.25^2) / 4 = 0.1875; group 2: equal
    expected = torch.tensor(
        [
            [x / math.sqrt(0.25 + EPS) for x in (0.5, -0.5, -0.5, 0.5)],
            [x / math.sqrt(0.1875 + EPS) for x in (0.75, -0.25, -0.25, -0.25)],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(group_advantages(rewards), expected)


def test_group_advantages_batch_and_none():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # batch mean 0.75; var = (2 * 0.25^2 + 2 * 0.75^2 + 4 * 0.25^2) / 8 = 0.1875
    expected_batch = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]) / math.sqrt(0.1875 + EPS)
    torch.testing.assert_close(group_advantages(rewards, scale="batch"), expected_batch)
    expected_none = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4])
    torch.testing.assert_close(group_advantages(rewards, scale="none"), expected_none)


def test_group_advantages_unbiased_std_as_the_authors_code():
    """OpenRLHF's group_norm: (r - mean) / (std + eps) with the sample std (1/(n-1))."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # group 0: mean 0.25, sample var (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5
    expected = torch.tensor([[x / (0.5 + 1e-9) for x in (0.75, -0.25, -0.25, -0.25)], [0.0] * 4])
    torch.testing.assert_close(group_advantages(rewards, 1e-9, std="unbiased"), expected)
    # batch: mean 0.625; sample var = sum (r - 0.625)^2 / 7 = (5 * 0.375^2 + 3 * 0.625^2) / 7
    batch_std = math.sqrt((5 * 0.375**2 + 3 * 0.625**2) / 7)
    torch.testing.assert_close(group_advantages(rewards, 1e-9, "batch", "unbiased"),
                               torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.0] * 4]) / (batch_std + 1e-9))
    # the population std of the same group is sqrt(3/4) of it: advantages sqrt(4/3) larger
    ratio = group_advantages(rewards, 0.0)[0, 0] / group_advantages(rewards, 0.0, std="unbiased")[0, 0]
    assert ratio.item() == pytest.approx(math.sqrt(4 / 3))
    assert group_advantages(torch.tensor([[1.0], [0.0]]), std="unbiased").tolist() == [[0.0], [0.0]]


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(2, 4), scale="std")
    with pytest.raises(ValueError, match="std must be"):
        group_advantages(torch.zeros(2, 4), std="sample")
    with pytest.raises(ValueError, match="num_groups"):
        group_advantages(torch.zeros(8))


def test_kl_penalty_hand_computed():
    logp = torch.tensor([0.0, -1.0, -2.0])
    ref_logp = torch.tensor([0.0, -2.0, -1.0])
    torch.testing.assert_close(kl_penalty(logp, ref_logp, "k1"), torch.tensor([0.0, 1.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref_logp, "k2"), torch.tensor([0.0, 0.5, 0.5]))
    # k3 with d = ref - logp = [0, -1, 1]: exp(d) - d - 1
    expected_k3 = torch.tensor([0.0, math.exp(-1), math.e - 2])
    torch.testing.assert_close(kl_penalty(logp, ref_logp, "k3"), expected_k3)
    # the log-ratio -100 is clamped to -20: exp(-20) + 20 - 1
    far = kl_penalty(torch.tensor([0.0]), torch.tensor([-100.0]), "k3", clamp=20.0)
    torch.testing.assert_close(far, torch.tensor([math.exp(-20) + 19]))
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(logp, ref_logp, "k4")


def test_k3_nonnegative_and_zero_iff_equal():
    torch.manual_seed(0)
    logp = -torch.rand(1000, dtype=torch.float64) * 5
    offset = 0.001 + 3 * torch.rand(1000, dtype=torch.float64)  # |logp - ref_logp| >= 0.001, both signs
    ref_logp = logp + torch.where(torch.rand(1000) < 0.5, -offset, offset)
    assert (kl_penalty(logp, ref_logp) > 0).all()
    assert (kl_penalty(logp, logp) == 0).all()


def _dense_logprobs(hidden, weight, targets, temperature):
    logits = hidden.float() @ weight.float().T / temperature
    log_probs = logits.log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, targets[:, None]).squeeze(-1), entropy


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_token_logprobs_matches_dense(chunk_size):
    torch.manual_seed(0)
    n, h, v, temperature = 10, 8, 17, 0.7
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n)  # arbitrary dL/dlogp

    logp, entropy = token_logprobs(
        hidden, weight, targets, chunk_size=chunk_size, temperature=temperature, with_entropy=True
    )
    (logp * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None

    dense_logp, dense_entropy = _dense_logprobs(hidden, weight, targets, temperature)
    (dense_logp * upstream).sum().backward()

    assert logp.dtype == torch.float32 and not entropy.requires_grad
    torch.testing.assert_close(logp, dense_logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, dense_entropy.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[0], hidden.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-6, rtol=0)


def test_token_logprobs_low_precision_input_and_no_grad():
    torch.manual_seed(0)
    hidden = torch.randn(5, 8, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    logp, entropy = token_logprobs(hidden, weight, targets, chunk_size=2)
    assert entropy is None and logp.dtype == torch.float32
    # The lm_head GEMM runs in bf16 (its output rounded to 8 bits of mantissa), the log-softmax in fp32.
    torch.testing.assert_close(logp, _dense_logprobs(hidden, weight, targets, 1.0)[0], atol=0.02, rtol=0)
    logp.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert not token_logprobs(hidden, weight, targets)[0].requires_grad


def test_policy_loss_clipping_both_sides():
    ratio = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]])
    old_logp = torch.zeros(2, 3)
    advantages = torch.tensor([[1.0], [-1.0]])
    loss, metrics = policy_loss(ratio.log(), old_logp, advantages, clip_low=0.2, clip_high=0.2)
    # A > 0: max(-r, -clip(r, 0.8, 1.2)); A < 0: max(r, clip(r, 0.8, 1.2))
    torch.testing.assert_close(loss, torch.tensor([[-0.5, -1.0, -1.2], [0.8, 1.0, 1.5]]))
    torch.testing.assert_close(metrics["clipped"], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["approx_kl"], 0.5 * ratio.log() ** 2)
    assert not metrics["dual_clipped"].any()


def test_policy_loss_clip_higher():
    ratio = torch.tensor([[1.25, 1.5, 0.75]])
    loss, metrics = policy_loss(ratio.log(), torch.zeros(1, 3), torch.ones(1, 1), clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.25, -1.28, -0.75]]))
    torch.testing.assert_close(metrics["clipped"], torch.tensor([[0.0, 1.0, 0.0]]))


def test_policy_loss_dual_clip():
    ratio = torch.tensor([[5.0, 2.0], [5.0, 2.0]])
    advantages = torch.tensor([[-1.0], [1.0]])
    loss, metrics = policy_loss(ratio.log(), torch.zeros(2, 2), advantages, dual_clip=3.0)
    # A < 0: min(max(r, clip(r)), 3); A > 0 untouched: max(-r, -1.2)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 2.0], [-1.2, -1.2]]))
    torch.testing.assert_close(metrics["dual_clipped"], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(ratio.log(), torch.zeros(2, 2), advantages, dual_clip=1.0)


def test_aggregate_modes():
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(aggregate(values, mask, "token-mean"), torch.tensor(7 / 3))
    torch.testing.assert_close(aggregate(values, mask, "seq-mean-token-mean"), torch.tensor((1.5 + 4.0) / 2))
    # an empty row counts as no sequence; global counts override the local ones
    empty_row = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(aggregate(values, empty_row, "seq-mean-token-mean"), torch.tensor(1.5))
    torch.testing.assert_close(aggregate(values, mask, num_tokens=7.0), torch.tensor(1.0))
    torch.testing.assert_close(aggregate(values, torch.zeros(2, 3)), torch.tensor(0.0))
    with pytest.raises(ValueError, match="mode"):
        aggregate(values, mask, "seq-sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_aggregate_micro_batches_sum_to_the_whole_batch(mode):
    torch.manual_seed(0)
    values = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).int()
    mask[3] = 0
    num_tokens, num_seqs = mask.sum().item(), (mask.sum(-1) > 0).sum().item()
    parts = [
        aggregate(values[i : i + 2], mask[i : i + 2], mode, num_tokens=num_tokens, num_seqs=num_seqs)
        for i in range(0, 6, 2)
    ]
    torch.testing.assert_close(sum(parts), aggregate(values, mask, mode))


def test_mask_truncated():
    mask = torch.tensor([[1, 1], [1, 0]])
    assert mask_truncated(mask, torch.tensor([False, True])).tolist() == [[1, 1], [0, 0]]


def test_one_step_gradient_matches_textbook_objective():
    torch.manual_seed(0)
    b, t, kl_coef = 4, 6, 0.1
    old_logp = -torch.rand(b, t, dtype=torch.float64) * 3
    ref_logp = -torch.rand(b, t, dtype=torch.float64) * 3
    # log-ratios up to +-0.5, so some tokens are clipped on each side
    start = old_logp + (torch.rand(b, t, dtype=torch.float64) - 0.5)
    advantages = torch.tensor([[1.0], [-0.5], [2.0], [-1.5]], dtype=torch.float64)
    mask = (torch.rand(b, t) > 0.2).double()

    logp = start.clone().requires_grad_(True)
    per_token, _ = policy_loss(logp, old_logp, advantages, clip_low=0.2, clip_high=0.3)
    aggregate(per_token + kl_coef * kl_penalty(logp, ref_logp, "k3"), mask).backward()

    textbook_logp = start.clone().requires_grad_(True)
    ratio = torch.exp(textbook_logp - old_logp)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 0.8, 1.3) * advantages)
    k3 = torch.exp(ref_logp - textbook_logp) - (ref_logp - textbook_logp) - 1
    objective = ((surrogate - kl_coef * k3) * mask).sum() / mask.sum()
    (-objective).backward()

    clipped = ((ratio < 0.8) & (advantages < 0)) | ((ratio > 1.3) & (advantages > 0))
    assert clipped.any() and (~clipped).any()
    torch.testing.assert_close(logp.grad, textbook_logp.grad, atol=1e-12, rtol=0)


def test_token_logprobs_saves_no_logits_for_backward():
    torch.manual_seed(0)
    n, h, v = 64, 4, 1000
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))

    def largest_saved_tensor(fn) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn()
        return max(sizes)

    assert largest_saved_tensor(lambda: token_logprobs(hidden, weight, targets, chunk_size=8)) == v * h  # W
    assert largest_saved_tensor(lambda: _dense_logprobs(hidden, weight, targets, 1.0)) == n * v  # logits


def test_bf16_logprob_head_error_against_the_fp32_path():
    """At a realistic width the bf16 GEMM moves log-probs of magnitude ~9 by at most 0.01 (mean 0.002)."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(64, 256).bfloat16(), (torch.randn(4096, 256) / 16).bfloat16()
    targets = torch.randint(0, 4096, (64,))
    fp32 = token_logprobs(hidden.float(), weight.float(), targets, chunk_size=16)[0]
    bf16 = token_logprobs(hidden, weight, targets, chunk_size=16)[0]
    error = (bf16 - fp32).abs()
    assert fp32.abs().mean() > 8 and error.max() < 0.01 and error.mean() < 0.002


def test_a_policy_loss_chosen_by_name(monkeypatch):
    """A sequence-level variant is one function in the registry: here the length-normalised log-ratio of each
    response, unclipped, its loss -A * ratio on every token (it needs the mask)."""
    from spark.config import ConfigError, LossSettings, TrainConfig, load_config
    from spark.rl.losses import POLICY_LOSSES, micro_batch_loss, register_policy_loss

    def sequence_ratio(logp, old_logp, advantages, mask, settings):
        log_ratio = ((logp - old_logp) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
        loss = (-advantages * log_ratio.exp()).expand_as(logp)
        return loss, {"clipped": torch.zeros_like(loss), "approx_kl": torch.zeros_like(loss)}

    monkeypatch.setitem(POLICY_LOSSES, "toy", sequence_ratio)
    settings = LossSettings(policy_loss="toy", kl_coef=0.0)
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    old_logp = torch.tensor([[-1.5, -1.5, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages, weights = torch.tensor([[1.0], [-2.0]]), torch.ones(2, 1)
    loss, _ = micro_batch_loss(logp, old_logp, None, advantages, weights, mask, settings)
    # row 0: mean log-ratio 0, ratio 1, two tokens of -1; row 1: log-ratio 0.5, one token of 2 e^0.5; over 3 tokens
    assert loss.item() == pytest.approx((-2 + 2 * math.exp(0.5)) / 3)
    loss.backward()
    # d/dlogp of row 1's token: 2 e^0.5 * (1/1) / 3; row 0's tokens: -1 * e^0 * (1/2) * 2 tokens / 3 each
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3, 0.0], [2 * math.exp(0.5) / 3, 0.0, 0.0]]))
    assert load_config(TrainConfig, None, ["loss.policy_loss=toy"]).loss.policy_loss == "toy"
    with pytest.raises(ConfigError, match=r"^command line: 'loss\.policy_loss' = 'gspo-ish' is not one of "
                                          r"'grpo', 'gspo', 'toy'$"):
        load_config(TrainConfig, None, ["loss.policy_loss=gspo-ish"])
    register_policy_loss("registered-by-test")(sequence_ratio)
    try:
        assert POLICY_LOSSES["registered-by-test"] is sequence_ratio
        with pytest.raises(ValueError, match="registered already"):
            register_policy_loss("registered-by-test")(sequence_ratio)
    finally:
        del POLICY_LOSSES["registered-by-test"]


def test_gspo_clips_the_length_normalised_sequence_ratio_and_its_gradient_is_gspos():
    from spark.rl.losses import sequence_policy_loss

    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.2, 0.0, 0.0]], requires_grad=True)
    old_logp = torch.tensor([[-1.2, -1.6, 5.0], [-0.5, 5.0, 5.0]])  # 5.0: masked, never read
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([[-1.0], [1.0]])
    per_token, metrics = sequence_policy_loss(logp, old_logp, advantages, mask, clip_low=0.1, clip_high=0.1)
    # row 0: token log-ratios 0.2, -0.4, mean -0.1: s = e^-0.1 = 0.9048 inside [0.9, 1.1]; A = -1: loss s per token
    # row 1: log-ratio 0.3, s = e^0.3 = 1.3499 > 1.1; A = +1: max(-1.3499, -1.1) = -1.1, clipped (no gradient)
    s0 = math.exp(-0.1)
    torch.testing.assert_close(per_token * mask, torch.tensor([[s0, s0, 0.0], [-1.1, 0.0, 0.0]]))
    assert (metrics["clipped"] * mask).tolist() == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    loss = aggregate(per_token, mask, "seq-mean-token-mean")
    assert loss.item() == pytest.approx((s0 - 1.1) / 2)
    loss.backward()
    # GSPO's gradient: -A s (1/|y|) grad logp_t over 2 sequences: row 0's tokens s0 / 2 / 2 each, row 1 clipped
    torch.testing.assert_close(logp.grad, torch.tensor([[s0 / 4, s0 / 4, 0.0], [0.0, 0.0, 0.0]]))


def test_gspo_by_name_reads_its_own_clip_range():
    from spark.config import LossSettings
    from spark.rl.losses import micro_batch_loss

    logp, mask = torch.tensor([[0.3]]), torch.ones(1, 1)
    settings = LossSettings(policy_loss="gspo", aggregation="seq-mean-token-mean", kl_coef=0.0,
                            gspo_clip_low=0.1, gspo_clip_high=0.2)
    loss, sums = micro_batch_loss(logp, torch.zeros(1, 1), None, torch.ones(1, 1), torch.ones(1, 1), mask, settings)
    assert loss.item() == pytest.approx(-1.2) and sums["clip_frac"].item() == 1.0  # e^0.3 clipped to 1 + 0.2


def test_dr_grpo_aggregation_divides_token_sums_by_a_constant():
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # (1 + 2) / 4 and 3 / 4, averaged over 2 sequences; seq-mean-token-mean would give ((1 + 2) / 2 + 3) / 2
    loss = aggregate(values, mask, "seq-mean-token-sum-norm", max_tokens=4)
    assert loss.item() == pytest.approx(0.75)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(2.25)
    assert aggregate(values, mask, "seq-mean-token-sum-norm", max_tokens=4, num_seqs=4).item() == pytest.approx(0.375)
    loss.backward()
    # every token weighs 1 / (max_tokens * sequences) = 1/8, whatever its response's length
    torch.testing.assert_close(values.grad, mask / 8)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(values, mask, "seq-mean-token-sum-norm")


def test_truncated_importance_weights_scale_the_policy_loss():
    from spark.config import LossSettings
    from spark.rl.losses import micro_batch_loss, truncated_is_weights

    old_logp, sampler_logp = torch.tensor([[-1.0, -0.5]]), torch.tensor([[-1.2, -2.0]])
    weights, capped = truncated_is_weights(old_logp, sampler_logp, cap=2.0)
    # exp(0.2) = 1.2214 under the cap; exp(1.5) = 4.4817 capped to 2
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.2), 2.0]]))
    assert capped.tolist() == [[0.0, 1.0]]
    logp = old_logp.clone().requires_grad_(True)
    settings = LossSettings(kl_coef=0.0, tis_cap=2.0)
    loss, sums = micro_batch_loss(logp, logp.detach(), None, torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 2),
                                  settings, sampler_logp=sampler_logp)
    # ratio 1 on both tokens, A = 1: loss -w_t per token, token-mean over 2
    assert loss.item() == pytest.approx(-(math.exp(0.2) + 2.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, -weights / 2)
    assert sums["tis_weight"].item() == pytest.approx(math.exp(0.2) + 2.0) and sums["tis_capped"].item() == 1.0
    plain, plain_sums = micro_batch_loss(logp, logp.detach(), None, torch.ones(1, 1), torch.ones(1, 1),
                                         torch.ones(1, 2), LossSettings(kl_coef=0.0), sampler_logp=sampler_logp)
    assert plain.item() == pytest.approx(-1.0) and "tis_weight" not in plain_sums  # tis_cap = 0: off
