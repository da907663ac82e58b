"""Token log-probs from hidden states: the lm_head and log-softmax in chunks, in forward and backward, so
that no [tokens, vocab] fp32 tensor is ever held (8k tokens x 152k vocab x 4 B = 5 GB).

The lm_head GEMMs run in the weight's dtype (bf16 under FSDP mixed precision: tensor-core speed, and no
fp32 copy of a [vocab, hidden] weight), the log-softmax and the gradient of the logits in fp32."""

from __future__ import annotations

import torch


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [chunk, V] fp32 = hidden [chunk, H] @ weight [V, H]^T / temperature, the GEMM in weight's dtype."""
    return (hidden.to(weight.dtype) @ weight.T).float() / temperature


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Token log-probs (and entropy) from hidden states, one [chunk, V] block of logits at a time.

    Forward keeps only the inputs; backward recomputes each chunk's logits and uses
    d logp_i / d logits_ij = (1[j == t_i] - softmax_ij), so no [N, V] tensor is ever alive.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, temperature, with_entropy):
        num_tokens = hidden.shape[0]
        logp = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp) if with_entropy else None
        for start in range(0, num_tokens, chunk_size):
            end = start + chunk_size
            logits = _chunk_logits(hidden[start:end], weight, temperature)
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
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            h = hidden[start:end]
            logits = _chunk_logits(h, weight, ctx.temperature)
            g = grad_logp[start:end, None]
            # dL/dlogits = g (onehot - softmax); the 1/T of the logits moves into it
            grad_logits = -logits.softmax(dim=-1).mul_(g)
            grad_logits.scatter_add_(-1, targets[start:end, None], g)
            grad_logits.div_(ctx.temperature)
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ weight
            if grad_weight is not None:  # accumulated in place: no [V, H] fp32 temporary beside it
                if weight.dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.T, h.to(weight.dtype))
                else:
                    grad_weight.add_(grad_logits.T @ h.to(weight.dtype))
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
    Logits are computed `chunk_size` rows at a time, in forward and in backward (the GEMM in the weight's
    dtype, the softmax in fp32), so memory holds [chunk_size, V] fp32 instead of [N, V]. Entropy is a metric:
    it carries no gradient.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"token_logprobs: expected hidden [N, H] and targets [N], got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return _ChunkedTokenLogprobs.apply(hidden, lm_head_weight, targets, chunk_size, temperature, with_entropy)
