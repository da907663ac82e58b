"""Attention kernels and the pre-allocated KV cache.

Three call patterns, one function each:
  * packed training / scoring: a flat token stream cut by `cu_seqlens` (no pad tokens); also the
    vision tower's windows, without the causal mask;
  * prefill / decode against a `KVCache` with a per-row fill level (`cache_lens`), so ragged
    prompts share one static-shape cache;
  * plain causal attention over [B, T] (the reference path, used when neither applies).
flash-attn is used when importable and the tensors are on CUDA; otherwise PyTorch SDPA. Both give
the same numbers up to kernel rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional, CUDA only
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
except ImportError:
    flash_attn_varlen_func = flash_attn_with_kvcache = None


def use_flash(x: torch.Tensor) -> bool:
    return flash_attn_varlen_func is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


class KVCache:
    """Keys and values for every layer, allocated once per generation call.

    k, v: [num_layers, B, max_len, num_kv_heads, head_dim]. Row b holds `cache_lens[b]` valid
    positions; the sampler owns `cache_lens` and passes it to each forward.
    """

    def __init__(self, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 *, device: torch.device | str, dtype: torch.dtype):
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (a LongTensor of row indices): finished rows stop costing compute."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, causal: bool = True) -> torch.Tensor:
    """Attention within each packed sequence, causal unless `causal=False` (the vision tower's windows).
    q: [N, Hq, D], k/v: [N, Hkv, D] -> [N, Hq, D]."""
    if use_flash(q):
        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=causal)
    attention = causal_attention if causal else bidirectional_attention
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        out[start:end] = attention(q[None, start:end], k[None, start:end], v[None, start:end])[0]
    return out


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [B, T, Hq, D], k/v: [B, T, Hkv, D] -> [B, T, Hq, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)
    return out.transpose(1, 2)


def bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Every query sees every key. q: [B, T, Hq, D], k/v: [B, T, Hkv, D] -> [B, T, Hq, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)
    return out.transpose(1, 2)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, layer: int,
                     cache_lens: torch.Tensor, kv_len: int, key_mask: torch.Tensor) -> torch.Tensor:
    """Write the new keys/values of each row at its fill level and attend over the row's prefix.

    q: [B, T, Hq, D], k/v: [B, T, Hkv, D], cache_lens: [B] (positions already filled, before this
    call). T > 1 is a prefill of right-padded prompts into an empty cache (pad queries are garbage
    the caller ignores; causality keeps real tokens from seeing pads). T == 1 is one decode step.
    `kv_len` bounds the keys read (a host int, so no device sync); pass cache.max_len for static
    shapes (CUDA graphs). key_mask [B, 1, 1, kv_len] is True where a key index is <= the row's cache_lens.
    """
    k_cache, v_cache = cache.k[layer], cache.v[layer]
    B, T = q.shape[:2]
    if use_flash(q):
        return flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=cache_lens.int(), causal=True)
    if T > 1:
        k_cache[:, :T] = k
        v_cache[:, :T] = v
        return causal_attention(q, k, v)
    rows = torch.arange(B, device=q.device)
    k_cache[rows, cache_lens] = k[:, 0]
    v_cache[rows, cache_lens] = v[:, 0]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k_cache[:, :kv_len].transpose(1, 2), v_cache[:, :kv_len].transpose(1, 2),
        attn_mask=key_mask, enable_gqa=True)
    return out.transpose(1, 2)
