"""Attention kernels and the pre-allocated KV cache.

Three call patterns, one function each:
  * packed training / scoring: a flat token stream cut by `cu_seqlens` (no pad tokens); also the
    vision tower's windows, without the causal mask;
  * prefill / decode against a `KVCache` with a per-row fill level (`cache_lens`), so ragged
    prompts share one static-shape cache;
  * plain causal attention over [B, T] (the reference path, used when neither applies).

Backends (`attention_backend` picks one from the tensors' device and dtype; `describe_attention` is the
line a run prints at its start):
  * "flash-attn": the flash-attn package, when importable, on CUDA in fp16 / bf16;
  * "torch-varlen": otherwise PyTorch's own flash kernel, `torch.nn.attention.varlen.varlen_attn`
    (torch >= 2.10), on CUDA in fp16 / bf16, for packed sequences, vision windows and prefill, and for
    decode where the torch version takes `seqused_k` (2.12+);
  * "sdpa": everything else (CPU, fp32, a torch without varlen_attn): F.scaled_dot_product_attention.
    Packed sequences are padded in buckets of similar lengths (`padded_plan`: a pad at most doubles a
    sequence), one SDPA call per bucket, never a Python loop per sequence: on CPU a call costs far more
    than the few padded keys of short sequences (benchmarks/update.py).
All give the same numbers up to kernel rounding; tests/models/test_attention.py checks our calls against
pure-PyTorch references of each kernel's documented semantics.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # optional, CUDA only
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
except ImportError:
    flash_attn_varlen_func = flash_attn_with_kvcache = None

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None

FLASH_ATTN, TORCH_VARLEN, SDPA = "flash-attn", "torch-varlen", "sdpa"
HALF = (torch.float16, torch.bfloat16)  # the only dtypes the flash kernels take


def repeat_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[N, Hkv, D] -> [N, num_heads, D]: query head h reads kv head h // (num_heads / Hkv), as in GQA."""
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)


@dataclass(frozen=True)
class TorchVarlen:
    """`varlen_attn` and the arguments its signature takes; torch changed it between releases
    (docs.pytorch.org/docs/2.10 and /2.12, nn.attention.varlen; read off the function, not the version):
      * 2.10: `(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None)`, and q, k,
        v share one head count (shape (T, H, D));
      * later: keyword-only `window_size=(left, right)`, (-1, -1) full and (-1, 0) causal;
      * 2.12+: also `enable_gqa` (k, v with fewer heads than q) and `seqused_k` (sequence i uses only
        its first seqused_k[i] keys; inference only), which makes KV-cache decode possible.
    """

    fn: Callable
    is_causal_flag: bool  # the 2.10 form
    gqa: bool
    seqused_k: bool

    @classmethod
    def wrap(cls, fn: Callable) -> TorchVarlen:
        params = inspect.signature(fn).parameters
        return cls(fn, "is_causal" in params, "enable_gqa" in params, "seqused_k" in params)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                 max_q: int, max_k: int, *, causal: bool, seqused_k: torch.Tensor | None = None) -> torch.Tensor:
        """q [Tq, Hq, D], k/v [Tk, Hkv, D], cu_q/cu_k [S + 1] int32 -> [Tq, Hq, D]."""
        kwargs = {}
        if self.is_causal_flag:
            kwargs["is_causal"] = causal
        else:
            kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
        if self.gqa:
            kwargs["enable_gqa"] = True
        elif k.shape[1] != q.shape[1]:
            k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
        if seqused_k is not None:
            kwargs["seqused_k"] = seqused_k
        return self.fn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)

    def describe(self) -> str:
        form = "is_causal" if self.is_causal_flag else "window_size"
        gqa = "enable_gqa" if self.gqa else "KV heads repeated for GQA"
        decode = "decode with seqused_k" if self.decodes else "decode by SDPA"
        return f"torch.nn.attention.varlen.varlen_attn: {form} form, {gqa}, {decode}"

    @property
    def decodes(self) -> bool:
        """Whether KV-cache decode can read the cache in place (without repeating its heads)."""
        return self.seqused_k and self.gqa


torch_varlen = TorchVarlen.wrap(varlen_attn) if varlen_attn is not None else None


def attention_backend(device: torch.device, dtype: torch.dtype) -> str:
    """flash-attn when installed, else torch's varlen flash kernel, else SDPA; the flash kernels run on
    CUDA in fp16 / bf16 only."""
    if device.type != "cuda" or dtype not in HALF:
        return SDPA
    if flash_attn_varlen_func is not None:
        return FLASH_ATTN
    if torch_varlen is not None:
        return TORCH_VARLEN
    return SDPA


def describe_attention(device: torch.device, dtype: torch.dtype) -> str:
    """The line a run prints once at its start: which attention backend, and the compute dtype."""
    backend = attention_backend(device, dtype)
    detail = {FLASH_ATTN: "flash_attn_varlen_func, flash_attn_with_kvcache",
              TORCH_VARLEN: torch_varlen.describe() if torch_varlen is not None else "",
              SDPA: "packed sequences padded, one call per length bucket"}
    return f"attention: {backend} ({detail[backend]}); compute dtype: {str(dtype).removeprefix('torch.')}"


class KVCache:
    """Keys and values, one tensor per layer (gpt-fast's layout), allocated once and written in place.

    k[layer], v[layer]: [batch, max_len, num_kv_heads, head_dim]. Separate tensors, not slices of one
    [layers, ...] tensor: a compiled decode step that writes into a view of a larger graph input makes inductor
    copy that input and write it back whole every step, while an in-place write into an input of its own is
    kept in place. Rows [0, rows) are the live batch (`layer` hands out their views); row b holds
    `cache_lens[b]` valid positions, and the sampler owns `cache_lens` and passes it to each forward.
    """

    def __init__(self, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 *, device: torch.device | str, dtype: torch.dtype):
        shape = (batch, max_len, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.rows = batch  # live rows, a host int

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of the live rows, [rows, max_len, Hkv, D] each: the tensors themselves
        when every row is live (what a compiled step sees), else views of their first rows."""
        k, v = self.k[layer], self.v[layer]
        if self.rows == self.batch:
            return k, v
        return k[:self.rows], v[:self.rows]

    def repeat_rows(self, sources: torch.Tensor, length: int) -> None:
        """Rows [rows, rows + len(sources)) become copies of rows `sources` (< rows) over their first `length`
        positions, and join the live rows: the n rollouts of a prompt share its prefill. One layer's copied
        rows are the only temporary."""
        end = self.rows + len(sources)
        for t in self.k + self.v:
            t[self.rows:end, :length] = t[sources, :length]
        self.rows = end

    def keep_rows(self, keep: torch.Tensor, length: int) -> None:
        """Keep only the live rows `keep` (ascending indices), moved to the front in place over their first
        `length` positions: finished rows stop costing compute. The tensors are never reallocated; the
        memory peak is the cache plus one layer's kept rows x `length` (the gathered temporary)."""
        for t in self.k + self.v:
            t[:len(keep), :length] = t[keep, :length]
        self.rows = len(keep)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing,
                     causal: bool = True) -> torch.Tensor:
    """Attention within each packed sequence, causal unless `causal=False` (the vision tower's windows).
    q: [N, Hq, D], k/v: [N, Hkv, D] -> [N, Hq, D].

    A sequence that continues another (`packing.keys`) reads that one's keys before its own: its queries are
    the last of its keys, so "causal" is aligned to the bottom right (query i of Tq sees keys j <= i + Tk - Tq),
    as in flash-attn's varlen kernel."""
    backend = attention_backend(q.device, q.dtype)
    if backend in (FLASH_ATTN, TORCH_VARLEN):
        cu_q, max_q = packing.cu_seqlens, packing.max_seqlen
        cu_k, max_k = cu_q, max_q
        if packing.keys is not None:
            k, v = k[packing.keys.index], v[packing.keys.index]
            cu_k, max_k = packing.keys.cu_seqlens, packing.keys.max_seqlen
        if backend == FLASH_ATTN:
            # flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ..., causal):
            # GQA when k, v have fewer heads; the causal mask bottom-right aligned (flash_attn_interface.py docstring).
            return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal)
        return torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal)
    return padded_attention(q, k, v, packing.padded(causal))


@dataclass(frozen=True)
class PaddedBucket:
    """Sequences of similar lengths padded together: their queries [S, Lq] and keys [S, Lk], as stream rows."""

    q_rows: torch.Tensor  # [S * Lq] long: the stream row of each padded query (a pad repeats its sequence's last)
    k_rows: torch.Tensor  # [S * Lk] long: the stream row of each padded key
    mask: torch.Tensor  # [S, 1, Lq, Lk] bool: the keys each query sees
    kept: torch.Tensor  # [n] long: where the bucket's real queries are in the flattened [S * Lq]


@dataclass(frozen=True)
class PaddedPlan:
    """How `padded_attention` lays out a packing: its buckets, and where each stream query's output is in the
    buckets' outputs joined (`order`; None when they are already in stream order)."""

    buckets: list[PaddedBucket]
    order: torch.Tensor | None


@dataclass
class Keys:
    """Where each packed sequence reads its keys from: `index` [K] stream rows, sequence after sequence,
    cut by `cu_seqlens` [S + 1] int32; `max_seqlen` the most keys of one sequence."""

    index: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


@dataclass
class Packing:
    """A flat stream of sequences: `cu_seqlens` [S + 1] int32 offsets, `max_seqlen` the longest.

    A sequence may continue an earlier one (`continues[s]`, -1 for none): it then attends to that sequence's
    tokens before its own, and its positions go on from there, as if the two were one sequence. The update
    packs a prompt once and each of its responses as a continuation of it, so the prompt is computed once for
    its n responses. `keys` says where each sequence's keys are (None: its own tokens only).
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    continues: list[int] | None = None
    keys: Keys | None = None
    # SDPA's layout of this packing (spark.models.attention.padded_plan), by causal; built at its first
    # layer, reused by the others and by backward
    plans: dict[bool, PaddedPlan] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_lengths(cls, lengths: list[int], device: torch.device | str = "cpu",
                     continues: list[int] | None = None) -> Packing:
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths).cumsum(0)
        if continues is None or all(c < 0 for c in continues):
            return cls(cu.to(device), max(lengths))
        if len(continues) != len(lengths) or any(c >= s or (c >= 0 and continues[c] >= 0)
                                                 for s, c in enumerate(continues)):
            raise ValueError(f"Packing: each sequence continues an earlier one that continues none, got {continues}")
        starts = cu.tolist()
        ranges = [range(starts[c], starts[c + 1]) if c >= 0 else range(0) for c in continues]
        key_rows = [[*prefix, *range(starts[s], starts[s + 1])] for s, prefix in enumerate(ranges)]
        key_lengths = [len(rows) for rows in key_rows]
        cu_keys = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu_keys[1:] = torch.tensor(key_lengths).cumsum(0)
        keys = Keys(torch.tensor([row for rows in key_rows for row in rows], device=device), cu_keys.to(device), max(key_lengths))
        return cls(cu.to(device), max(lengths), list(continues), keys)

    def padded(self, causal: bool) -> PaddedPlan:
        """The buckets `padded_attention` runs this packing in (built once per causal flag)."""
        if causal not in self.plans:
            keys = self.keys
            self.plans[causal] = padded_plan(self.cu_seqlens, keys.cu_seqlens if keys else self.cu_seqlens,
                                             keys.index if keys else None, causal)
        return self.plans[causal]

    def positions(self) -> torch.Tensor:
        """[1, N]: each token's index within its sequence (a continuation's after those of the one it continues)."""
        cu = self.cu_seqlens.long()
        lengths = cu[1:] - cu[:-1]
        starts = cu[:-1]
        if self.keys is not None:  # the keys before a sequence's own tokens are its prefix
            starts = starts - (self.keys.cu_seqlens.long().diff() - lengths)
        return (torch.arange(int(cu[-1]), device=cu.device) - torch.repeat_interleave(starts, lengths))[None]


def padded_plan(cu_q: torch.Tensor, cu_k: torch.Tensor, key_rows: torch.Tensor | None, causal: bool) -> PaddedPlan:
    """Sequences s (queries cu_q[s]:cu_q[s+1] of the stream, keys key_rows[cu_k[s]:cu_k[s+1]], or the stream's
    own rows cu_k[s]:cu_k[s+1] when key_rows is None) grouped by the powers of two above their query and key
    counts, so a pad at most doubles a sequence's queries and keys whatever the mix of lengths."""
    device = cu_q.device
    cu_q, cu_k = cu_q.long(), cu_k.long()
    q_lengths, k_lengths = cu_q.diff(), cu_k.diff()
    groups: dict[tuple[int, int], list[int]] = {}
    for s, (lq, lk) in enumerate(zip(q_lengths.tolist(), k_lengths.tolist())):
        groups.setdefault(((lq - 1).bit_length(), (lk - 1).bit_length()), []).append(s)
    buckets, kept_rows = [], []
    for members in groups.values():
        seqs = torch.tensor(members, device=device)
        lq, lk = q_lengths[seqs], k_lengths[seqs]  # [S]
        width_q, width_k = int(lq.max()), int(lk.max())
        query, key = torch.arange(width_q, device=device), torch.arange(width_k, device=device)
        q_rows = cu_q[seqs, None] + torch.minimum(query, lq[:, None] - 1)  # [S, Lq]
        k_rows = cu_k[seqs, None] + torch.minimum(key, lk[:, None] - 1)  # [S, Lk]
        if key_rows is not None:
            k_rows = key_rows.long()[k_rows]
        mask = key < lk[:, None, None]  # [S, 1, Lk]
        if causal:
            mask = mask & (key <= query[:, None] + (lk - lq)[:, None, None])  # [S, Lq, Lk]
        real = (query < lq[:, None]).flatten()  # [S * Lq]
        buckets.append(PaddedBucket(q_rows.flatten(), k_rows.flatten(), mask[:, None].expand(-1, 1, width_q, -1),
                                    real.nonzero().squeeze(1)))
        kept_rows.append(q_rows.flatten()[real])
    order = None
    if len(buckets) > 1:
        rows = torch.cat(kept_rows)
        order = torch.empty_like(rows)
        order[rows] = torch.arange(len(rows), device=device)
    return PaddedPlan(buckets, order)


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PaddedPlan) -> torch.Tensor:
    """`packed_attention` by SDPA, one call per bucket of padded sequences (`padded_plan`), never one per
    sequence: every gather is an index_select, whose backward is one index_add.
    q: [N, Hq, D], k/v: [N, Hkv, D] -> [N, Hq, D]."""
    (heads, dim), kv_heads = q.shape[1:], k.shape[1]
    outs = []
    for bucket in plan.buckets:
        S, _, Lq, Lk = bucket.mask.shape
        out = F.scaled_dot_product_attention(q.index_select(0, bucket.q_rows).view(S, Lq, heads, dim).transpose(1, 2),
                                             k.index_select(0, bucket.k_rows).view(S, Lk, kv_heads, dim).transpose(1, 2),
                                             v.index_select(0, bucket.k_rows).view(S, Lk, kv_heads, dim).transpose(1, 2),
                                             attn_mask=bucket.mask, enable_gqa=True)  # [S, Hq, Lq, D]
        outs.append(out.transpose(1, 2).reshape(S * Lq, heads, dim).index_select(0, bucket.kept))
    if plan.order is None:
        return outs[0]
    return torch.cat(outs).index_select(0, plan.order)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [B, Tq, Hq, D], k/v: [B, Tk, Hkv, D] -> [B, Tq, Hq, D]; with Tk > Tq the queries are the last Tq
    positions (query i sees keys j <= i + Tk - Tq)."""
    Tq, Tk = q.shape[1], k.shape[1]
    if Tq == Tk:
        mask, is_causal = None, True
    else:  # SDPA's is_causal aligns to the top left
        mask, is_causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq), False
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, is_causal=is_causal, enable_gqa=True)
    return out.transpose(1, 2)


@torch.library.custom_op("spark::flash_attn_with_kvcache", mutates_args=("k_cache", "v_cache"))
def flash_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  cache_seqlens: torch.Tensor) -> torch.Tensor:
    """flash-attn's `flash_attn_with_kvcache` as a registered torch op that mutates the caches, so that
    torch.compile(fullgraph=True) traces through it (the raw extension call is opaque to dynamo). On CUDA the
    compiled step calls the kernel as one extern op, the caches written in place (inductor re-inplaces the
    op's functionalized form, as the cache tensors are graph inputs of their own), and CUDA graphs capture it
    like any kernel. It writes k, v [B, T, Hkv, D] into k_cache / v_cache [B, max_len, Hkv, D] from index
    cache_seqlens[b] on and attends with a bottom-right causal mask: new query i of row b sees keys
    [0, cache_seqlens[b] + i] (flash_attn/flash_attn_interface.py docstring). q [B, T, Hq, D] -> [B, T, Hq, D]."""
    return flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens, causal=True)


@flash_kvcache.register_fake
def _(q, k_cache, v_cache, k, v, cache_seqlens):
    return torch.empty_like(q)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, layer: int,
                     cache_lens: torch.Tensor, kv_len: int, key_mask: torch.Tensor) -> torch.Tensor:
    """Write the new keys/values of each row at its fill level and attend over the row's prefix.

    q: [B, T, Hq, D], k/v: [B, T, Hkv, D], cache_lens: [B] (positions already filled, before this call),
    B = cache.rows. T > 1 is a prefill chunk of right-padded prompts: columns [kv_len - T, kv_len) of every row
    (all rows filled to kv_len - T; pad queries are garbage the caller ignores, causality keeps real tokens
    from seeing pads). T == 1 is one decode step. `kv_len` bounds the keys read (a host int, so no device
    sync); pass cache.max_len for static shapes (CUDA graphs). key_mask [B, 1, 1, kv_len] is True where a key
    index is <= the row's cache_lens (decode).
    """
    k_cache, v_cache = cache.layer(layer)  # [B, max_len, Hkv, D]
    B, T = q.shape[:2]
    backend = attention_backend(q.device, q.dtype)
    if backend == FLASH_ATTN:
        return flash_kvcache(q, k_cache, v_cache, k, v, cache_lens.int())
    if T > 1:
        start = kv_len - T
        k_cache[:, start:kv_len] = k
        v_cache[:, start:kv_len] = v
        if start > 0:  # a later prefill chunk: query i sees keys [0, start + i] (bottom-right causal)
            return causal_attention(q, k_cache[:, :kv_len], v_cache[:, :kv_len])
        if backend == TORCH_VARLEN:  # the B padded rows as B packed sequences of T tokens
            starts = torch.arange(0, B * T + 1, T, device=q.device, dtype=torch.int32)
            out = torch_varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), starts, starts, T, T, causal=True)
            return out.view(q.shape)
        return causal_attention(q, k, v)
    # Row b's new key goes to flat index b * max_len + cache_lens[b] of this layer's own tensor (the live rows are
    # its first rows), in place: a compiled step that wrote into a view of it would copy the whole tensor.
    slots = torch.arange(B, device=q.device) * cache.max_len + cache_lens
    cache.k[layer].view(-1, *k.shape[2:]).index_copy_(0, slots, k[:, 0])
    cache.v[layer].view(-1, *v.shape[2:]).index_copy_(0, slots, v[:, 0])
    if backend == TORCH_VARLEN and torch_varlen.decodes:
        # Row b is sequence b of the flattened cache: keys [b * max_len, b * max_len + cache_lens[b] + 1).
        starts = torch.arange(B + 1, device=q.device, dtype=torch.int32)
        out = torch_varlen(q[:, 0], k_cache.flatten(0, 1), v_cache.flatten(0, 1), starts, starts * cache.max_len,
                           1, cache.max_len, causal=False, seqused_k=(cache_lens + 1).int())
        return out[:, None]
    # The G query heads that read one kv head (h // G) go in as G query rows of it: B x Hkv attention tasks of
    # G rows rather than B x Hq of one, and no repeated keys (benchmarks/sampler.py measures the decode speed).
    heads, kv_heads, dim = q.shape[2], k.shape[2], q.shape[3]
    out = F.scaled_dot_product_attention(
        q.reshape(B, kv_heads, heads // kv_heads, dim), k_cache[:, :kv_len].transpose(1, 2),
        v_cache[:, :kv_len].transpose(1, 2), attn_mask=key_mask)  # [B, Hkv, G, D]
    return out.reshape(B, 1, heads, dim)
