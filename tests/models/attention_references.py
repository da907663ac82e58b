"""Pure-PyTorch stand-ins for the GPU attention kernels, written from their documented semantics, so that
CPU tests catch an argument-order, dtype or cache-update mistake in our calls.

Sources:
  * flash_attn_varlen_func, flash_attn_with_kvcache: the docstrings in flash-attn's
    flash_attn/flash_attn_interface.py (v2): q/k/v (total, heads, dim) or (batch, seqlen, heads, dim),
    fp16 / bf16 only, cu_seqlens and cache_seqlens int32; GQA when k/v have fewer heads (query head h
    reads kv head h // (Hq / Hkv)); the causal mask is aligned to the bottom right (query i of Tq sees
    keys j <= i + Tk - Tq); with k and v given, flash_attn_with_kvcache writes them into k_cache /
    v_cache *in place* from index cache_seqlens[b] on and attends over the first cache_seqlens[b] + Tnew keys.
  * varlen_attn: docs.pytorch.org/docs/2.10 and /2.12, torch.nn.attention.varlen, in its three
    signatures: 2.10 `is_causal` (one head count for q, k, v); then keyword-only `window_size`
    ((-1, -1) full, (-1, 0) causal); 2.12+ also `enable_gqa` and `seqused_k` (sequence i uses only its
    first seqused_k[i] keys).
The references compute in fp32 and return the query's dtype, as the kernels do.
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None) -> torch.Tensor:
    """One sequence: softmax(q k^T * scale + mask) v. q [Tq, Hq, D], k/v [Tk, Hkv, D] -> [Tq, Hq, D] fp32."""
    Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[:2]
    assert Hq % Hkv == 0, f"{Hq} query heads are not a multiple of {Hkv} kv heads"
    k, v = (x.float().repeat_interleave(Hq // Hkv, dim=1) for x in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * (scale if scale is not None else D ** -0.5)
    if causal:
        visible = torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + Tk - Tq
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def check_half(*tensors: torch.Tensor) -> None:
    dtypes = {t.dtype for t in tensors}
    assert len(dtypes) == 1 and dtypes <= set(HALF), f"flash kernels take one fp16 / bf16 dtype, got {dtypes}"
    assert all(t.stride(-1) == 1 for t in tensors), "last dimension must be contiguous"


def check_offsets(cu: torch.Tensor, total: int, max_len: int) -> list[int]:
    assert cu.dtype == torch.int32, f"cu_seqlens must be int32, got {cu.dtype}"
    bounds = cu.tolist()
    assert bounds[0] == 0 and bounds[-1] == total, f"cu_seqlens {bounds} do not cover {total} tokens"
    assert max(b - a for a, b in zip(bounds[:-1], bounds[1:])) <= max_len, "max_seqlen below the longest sequence"
    return bounds


def varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal: bool, seqused_k=None, scale=None) -> torch.Tensor:
    """Sequence s: queries [cu_q[s], cu_q[s+1]) attend to keys [cu_k[s], cu_k[s+1]) (the first seqused_k[s])."""
    check_half(q, k, v)
    assert q.dim() == k.dim() == v.dim() == 3 and k.shape == v.shape
    q_bounds, k_bounds = check_offsets(cu_q, q.shape[0], max_q), check_offsets(cu_k, k.shape[0], max_k)
    assert len(q_bounds) == len(k_bounds)
    out = torch.zeros(q.shape, dtype=torch.float32)
    for s in range(len(q_bounds) - 1):
        k_end = k_bounds[s + 1] if seqused_k is None else k_bounds[s] + int(seqused_k[s])
        keys = slice(k_bounds[s], k_end)
        out[q_bounds[s]:q_bounds[s + 1]] = attend(q[q_bounds[s]:q_bounds[s + 1]], k[keys], v[keys], causal, scale)
    return out.to(q.dtype)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    assert dropout_p == 0.0 and tuple(window_size) == (-1, -1) and block_table is None
    return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale=softmax_scale)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    assert rotary_cos is None and cache_batch_idx is None and cache_leftpad is None and block_table is None
    check_half(q, k_cache, v_cache, *(t for t in (k, v) if t is not None))
    B, Tq = q.shape[:2]
    assert k_cache.shape[0] == B and k_cache.dim() == 4 and k_cache.shape == v_cache.shape
    assert isinstance(cache_seqlens, torch.Tensor) and cache_seqlens.dtype == torch.int32
    assert cache_seqlens.shape == (B,)
    out = torch.zeros(q.shape, dtype=torch.float32)
    for b in range(B):
        filled = int(cache_seqlens[b])
        if k is not None:
            assert filled + k.shape[1] <= k_cache.shape[1], "the cache is too short for the new keys"
            k_cache[b, filled:filled + k.shape[1]] = k[b]
            v_cache[b, filled:filled + v.shape[1]] = v[b]
            filled += k.shape[1]
        out[b] = attend(q[b], k_cache[b, :filled], v_cache[b, :filled], causal, softmax_scale)
    return out.to(q.dtype)


def varlen_attn_is_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10's signature: one head count for q, k and v."""
    assert query.shape[1] == key.shape[1], "this varlen_attn takes no GQA"
    return varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal)


def window_causal(window_size) -> bool:
    assert tuple(window_size) in ((-1, -1), (-1, 0)), f"unexpected window_size {window_size}"
    return tuple(window_size) == (-1, 0)


def varlen_attn_window(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                       window_size=(-1, -1)):
    """The signature after 2.10: keyword-only window_size, still one head count."""
    assert query.shape[1] == key.shape[1], "this varlen_attn takes no GQA"
    return varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_causal(window_size), scale=scale)


def varlen_attn_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.12+'s signature."""
    assert enable_gqa or query.shape[1] == key.shape[1], "k/v with fewer heads need enable_gqa=True"
    assert block_table is None
    if seqused_k is not None:
        assert seqused_k.dtype == torch.int32 and not torch.is_grad_enabled(), "seqused_k: int32, inference only"
    return varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_causal(window_size), seqused_k, scale)
