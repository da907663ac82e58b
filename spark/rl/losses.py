"""GRPO losses as small pure functions: advantages, the clipped surrogate, KL, aggregation, and the
policy losses chosen by name (`POLICY_LOSSES`, `register_policy_loss`).

The token log-probs they take come from the model (`spark.models.logprobs`).

Shapes: B sequences (responses) of T tokens; `mask` [B, T] is 1 on response tokens that count.
Per-token quantities are returned unreduced; `aggregate` turns them into one scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, get_args

import torch

KLKind = Literal["k1", "k2", "k3"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AdvantageScale = Literal["group", "batch", "none"]
AdvantageStd = Literal["population", "unbiased"]

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: beyond it a ratio is an outlier, and exp would overflow soon after


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: str = "group",
                     std: str = "population") -> torch.Tensor:
    """Per-group normalised advantages (eq. 3 of the method), rewards [num_groups, n] -> [num_groups, n].

    scale="group": A_i = (r_i - mean_g) / s_g, s_g the std of the group's rewards
    scale="batch": A_i = (r_i - mean_g) / s, s the std of the whole batch's rewards
    scale="none":  A_i = r_i - mean_g (Dr. GRPO: no std scaling)
    std="population": s = sqrt(var + eps), var the population variance (1/n)
    std="unbiased":   s = std + eps, std the sample (1/(n-1)) standard deviation: OpenRLHF's group_norm, the
                      authors' code (with eps = 1e-9); a group of one has A = 0
    A group whose rewards are all equal gets A = 0.
    """
    if scale not in get_args(AdvantageScale):
        raise ValueError(f"group_advantages: scale must be one of {get_args(AdvantageScale)}, got {scale!r}")
    if std not in get_args(AdvantageStd):
        raise ValueError(f"group_advantages: std must be one of {get_args(AdvantageStd)}, got {std!r}")
    if rewards.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be [num_groups, n], got {tuple(rewards.shape)}")
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centered
    spread = centered if scale == "group" else rewards - rewards.mean()
    dim = -1 if scale == "group" else None
    if std == "population":
        return centered / torch.sqrt(spread.pow(2).mean(dim=dim, keepdim=scale == "group") + eps)
    count = spread.shape[-1] if scale == "group" else spread.numel()
    if count < 2:
        return torch.zeros_like(rewards)
    sample_std = torch.sqrt(spread.pow(2).sum(dim=dim, keepdim=scale == "group") / (count - 1))
    return centered / (sample_std + eps)


def kl_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3", clamp: float = LOG_RATIO_CLAMP
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs (Schulman's k1, k2, k3).

    k1 = logp - ref_logp
    k2 = 0.5 (logp - ref_logp)^2
    k3 = exp(d) - d - 1 with d = clamp(ref_logp - logp, -clamp, clamp); k3 >= 0, and 0 iff logp == ref_logp
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp).pow(2)
    if kind == "k3":
        log_ratio = (ref_logp - logp).clamp(-clamp, clamp)
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"kl_penalty: kind must be one of {get_args(KLKind)}, got {kind!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO clipped surrogate loss, logp/old_logp [B, T], advantages [B, T] or [B, 1] -> [B, T].

    r = exp(logp - old_logp)  (log-ratio clamped to +-20)
    loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))        (clip_high > clip_low: clip-higher)
    dual-clip (Ye et al. 2020), for A < 0 only: loss = min(loss, -A dual_clip), dual_clip > 1
    Metrics, per token and detached: `clipped` = 1 where the clipped term is the larger (no gradient),
    `dual_clipped` = 1 where the dual clip bounds the loss, `approx_kl` = 0.5 (logp - old_logp)^2 (k2).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"policy_loss: dual_clip must be > 1, got {dual_clip}")
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    dual_clipped = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > bound)
        loss = torch.where(dual_clipped, bound, loss)
    metrics = {
        "clipped": (loss_clipped > loss_unclipped).float().detach(),
        "dual_clipped": dual_clipped.float(),
        "approx_kl": 0.5 * log_ratio.detach().pow(2),
    }
    return loss, metrics


def sequence_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's sequence-level clipped surrogate (Zheng et al. 2025, "Group Sequence Policy Optimization"), per
    token: logp/old_logp/mask [B, T], advantages [B, 1] -> [B, T].

    s_i = exp(sum_t m_it (logp_it - old_logp_it) / sum_t m_it)   the length-normalised sequence ratio
    s_it = sg(s_i) * exp(logp_it - sg(logp_it))                   value s_i, gradient s_i * grad logp_it
    loss_it = max(-A_i s_it, -A_i clip(s_it, 1 - clip_low, 1 + clip_high))
    Averaged per sequence (aggregation seq-mean-token-mean) its gradient is GSPO's,
    -A_i s_i (1 / |y_i|) sum_t grad logp_it where unclipped. The clip range is on a ratio of geometric means, so
    it is far narrower than a token ratio's (the paper's 3e-4 / 4e-4). Metrics as `policy_loss`'s, `clipped`
    per sequence (on each of its tokens).
    """
    mask = mask.float()
    token_log_ratio = (logp - old_logp).masked_fill(mask == 0, 0.0)
    seq_log_ratio = token_log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    log_ratio = (seq_log_ratio.detach() + logp - logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    metrics = {"clipped": (loss_clipped > loss_unclipped).float().detach(),
               "approx_kl": 0.5 * token_log_ratio.detach().pow(2)}
    return torch.maximum(loss_unclipped, loss_clipped), metrics


def truncated_is_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling for the sampler/trainer mismatch (Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training"), per token [B, T] -> (weights, capped) [B, T].

    w_t = min(exp(old_logp_t - sampler_logp_t), cap)
    old_logp is the trainer's pi_old and sampler_logp the sampler's log-prob of the same token: the two differ by
    kernels and precision, so the rollout is slightly off-policy and w_t reweights it. Detached (a weight, not
    a path for the gradient); `capped` = 1 where the cap bounds w.
    """
    ratio = torch.exp((old_logp - sampler_logp).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return ratio.clamp(max=cap), (ratio > cap).float()


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] over the mask [B, T] to a scalar.

    token-mean:              sum_{i,t} m_it v_it / num_tokens               (num_tokens defaults to sum m)
    seq-mean-token-mean:     sum_i (sum_t m_it v_it / sum_t m_it) / num_seqs (num_seqs defaults to the number
                             of rows with a token in the mask)
    seq-mean-token-sum-norm: sum_i (sum_t m_it v_it / max_tokens) / num_seqs, max_tokens a constant (the longest
                             response allowed): Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"),
                             where dividing by each response's own length favours long wrong answers
    To make the loss independent of the number of ranks and micro-batches, the trainer passes the counts
    over the whole global batch, so summing the micro-batches' results gives the full batch's value.
    Masked positions may hold anything (inf, nan); an all-empty mask with default counts gives 0.
    """
    mask = mask.bool()
    values = values.masked_fill(~mask, 0.0)
    if mode == "token-mean":
        denominator = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return values.sum() / denominator
    if mode == "seq-mean-token-mean":
        seq_lens = mask.sum(dim=-1)
        seq_means = values.sum(dim=-1) / seq_lens.clamp(min=1)
        denominator = num_seqs if num_seqs is not None else (seq_lens > 0).sum().clamp(min=1)
        return seq_means.sum() / denominator
    if mode == "seq-mean-token-sum-norm":
        if max_tokens is None:
            raise ValueError("aggregate: seq-mean-token-sum-norm needs max_tokens, the longest response allowed")
        denominator = num_seqs if num_seqs is not None else mask.any(dim=-1).sum().clamp(min=1)
        return values.sum() / (max_tokens * denominator)
    raise ValueError(f"aggregate: mode must be one of {get_args(Aggregation)}, got {mode!r}")


class LossSettings(Protocol):
    """What the losses read of the run's `[loss]` table (spark.config.LossSettings)."""

    policy_loss: str
    clip_low: float
    clip_high: float
    dual_clip: float
    kl_coef: float
    kl_kind: str
    aggregation: str
    gspo_clip_low: float
    gspo_clip_high: float
    tis_cap: float


# A policy loss: (logp, old_logp [S, R], advantages [S, 1], mask [S, R], settings) -> (per-token loss [S, R],
# per-token metrics [S, R]: at least `clipped` and `approx_kl`). Chosen by name with `loss.policy_loss`.
PolicyLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LossSettings],
                      tuple[torch.Tensor, dict[str, torch.Tensor]]]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: make a policy loss selectable as `loss.policy_loss = name`."""

    def register(fn: PolicyLoss) -> PolicyLoss:
        if name in POLICY_LOSSES:
            raise ValueError(f"register_policy_loss: {name!r} is registered already")
        POLICY_LOSSES[name] = fn
        return fn

    return register


@register_policy_loss("grpo")
def grpo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     settings: LossSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's token-level PPO clipped surrogate (`policy_loss`) with the settings' clip range and dual clip."""
    return policy_loss(logp, old_logp, advantages, clip_low=settings.clip_low, clip_high=settings.clip_high,
                       dual_clip=settings.dual_clip or None)


@register_policy_loss("gspo")
def gspo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     settings: LossSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's sequence-level clipped surrogate (`sequence_policy_loss`) with the settings' GSPO clip range."""
    return sequence_policy_loss(logp, old_logp, advantages, mask, clip_low=settings.gspo_clip_low,
                                clip_high=settings.gspo_clip_high)


def micro_batch_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    *,
    sampler_logp: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch: the policy loss `settings.policy_loss` (times the truncated importance
    weight when settings.tis_cap > 0) plus kl_coef times the KL to the reference, weighted per sequence by its
    task weight, aggregated over the (global) mini-batch.

    loss = aggregate(w_i * (tis_it * policy_loss_it + kl_coef * kl_penalty(logp, ref_logp)_it), mask)
    tis_it = truncated_is_weights(old_logp, sampler_logp, tis_cap), 1 when tis_cap = 0
    logp, old_logp, ref_logp, sampler_logp, mask: [S, R]; advantages, weights: [S, 1]. ref_logp None: no KL term.
    Also returns mask-summed per-token metrics (detached, not normalised): clip_frac, approx_kl, kl when there is
    a reference, tis_weight and tis_capped when the weights are on.
    """
    if settings.policy_loss not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {settings.policy_loss!r}; registered: {', '.join(POLICY_LOSSES)}")
    per_token, info = POLICY_LOSSES[settings.policy_loss](logp, old_logp, advantages, mask, settings)
    sums = {"clip_frac": (info["clipped"] * mask).sum(), "approx_kl": (info["approx_kl"] * mask).sum()}
    if settings.tis_cap:
        if sampler_logp is None:
            raise ValueError("micro_batch_loss: tis_cap > 0 needs the sampler's log-probs")
        tis, capped = truncated_is_weights(old_logp, sampler_logp, settings.tis_cap)
        per_token = per_token * tis
        sums["tis_weight"], sums["tis_capped"] = (tis * mask).sum(), (capped * mask).sum()
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, settings.kl_kind)
        per_token = per_token + settings.kl_coef * kl
        sums["kl"] = (kl.detach() * mask).sum()
    loss = aggregate(per_token * weights, mask, settings.aggregation, num_tokens=num_tokens, num_seqs=num_seqs,
                     max_tokens=max_tokens)
    return loss, sums


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Zero the mask rows [B, T] of responses cut off at the length limit (truncated [B] bool)."""
    return mask * ~truncated[:, None]
