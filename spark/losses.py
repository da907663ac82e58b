"""GRPO losses as small pure functions: advantages, token log-probs, the clipped surrogate, KL, aggregation.

Shapes: B sequences (responses) of T tokens; `mask` [B, T] is 1 on response tokens that count.
Per-token quantities are returned unreduced; `aggregate` turns them into one scalar.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: beyond it a ratio is an outlier, and exp would overflow soon after


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: str = "group") -> torch.Tensor:
    """Per-group normalised advantages (eq. 3 of the method), rewards [num_groups, n] -> [num_groups, n].

    scale="group": A_i = (r_i - mean_g) / sqrt(var_g + eps), var_g the population variance (1/n) of the group
    scale="batch": A_i = (r_i - mean_g) / sqrt(var + eps), var the population variance of the whole batch
    scale="none":  A_i = r_i - mean_g (Dr. GRPO: no std scaling)
    A group whose rewards are all equal gets A = 0.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"group_advantages: scale must be 'group', 'batch' or 'none', got {scale!r}")
    if rewards.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be [num_groups, n], got {tuple(rewards.shape)}")
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centered
    var = centered.pow(2).mean(dim=-1, keepdim=True) if scale == "group" else rewards.var(unbiased=False)
    return centered / torch.sqrt(var + eps)


def kl_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3", clamp: float = 20.0
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
    raise ValueError(f"kl_penalty: kind must be 'k1', 'k2' or 'k3', got {kind!r}")


def _chunk_logits(hidden: torch.Tensor, weight32: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [chunk, V] = hidden [chunk, H] @ weight32 [V, H]^T / temperature, in fp32."""
    return (hidden.float() @ weight32.T) / temperature


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Token log-probs (and entropy) from hidden states, one [chunk, V] fp32 block of logits at a time.

    Forward keeps only the inputs; backward recomputes each chunk's logits and uses
    d logp_i / d logits_ij = (1[j == t_i] - softmax_ij), so no [N, V] tensor is ever alive.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, temperature, with_entropy):
        num_tokens, weight32 = hidden.shape[0], weight.float()
        logp = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp) if with_entropy else None
        for start in range(0, num_tokens, chunk_size):
            end = start + chunk_size
            logits = _chunk_logits(hidden[start:end], weight32, temperature)
            log_z = logits.logsumexp(dim=-1)
            logp[start:end] = logits.gather(-1, targets[start:end, None]).squeeze(-1) - log_z
            if with_entropy:
                # H = log Z - sum_j p_j logit_j
                entropy[start:end] = log_z - (logits.softmax(dim=-1) * logits).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        weight32 = weight.float()
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            h = hidden[start:end]
            logits = _chunk_logits(h, weight32, ctx.temperature)
            g = grad_logp[start:end, None]
            # dL/dlogits = g (onehot - softmax); the 1/T of the logits moves into it
            grad_logits = -logits.softmax(dim=-1).mul_(g)
            grad_logits.scatter_add_(-1, targets[start:end, None], g)
            grad_logits.div_(ctx.temperature)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ weight32
            if grad_weight is not None:
                grad_weight += grad_logits.T @ h.float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) under softmax(hidden @ W^T / temperature), and optionally the entropy of that softmax.

    hidden [N, H] (any dtype), lm_head_weight [V, H], targets [N] -> logp [N] fp32, entropy [N] fp32 or None.
    Logits are computed in fp32, `chunk_size` rows at a time, in forward and in backward, so memory holds
    [chunk_size, V] fp32 instead of [N, V] (8k tokens x 152k vocab x 4 B = 5 GB). Entropy is a metric:
    it carries no gradient.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"token_logprobs: expected hidden [N, H] and targets [N], got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return _ChunkedTokenLogprobs.apply(hidden, lm_head_weight, targets, chunk_size, temperature, with_entropy)


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


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] over the mask [B, T] to a scalar.

    token-mean:          sum_{i,t} m_it v_it / num_tokens               (num_tokens defaults to sum m)
    seq-mean-token-mean: sum_i (sum_t m_it v_it / sum_t m_it) / num_seqs (num_seqs defaults to the number
                         of rows with a token in the mask)
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
    raise ValueError(f"aggregate: mode must be 'token-mean' or 'seq-mean-token-mean', got {mode!r}")


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Zero the mask rows [B, T] of responses cut off at the length limit (truncated [B] bool)."""
    return mask * ~truncated[:, None]
