"""Batched, KV-cached generation for RL rollouts (in the spirit of gpt-fast's generate.py).

One `generate` call samples n rows of each prompt (the n rollouts of a GRPO group):
  1. prefill: each distinct prompt once (and, for a VL model, its images through the vision tower once),
     right-padded to [D, T], in chunks of at most `prefill_tokens` tokens (rows x columns) per forward so the
     prefill's temporaries stay bounded; the lm_head is applied only at each prompt's last position (never a
     [D, T, vocab] tensor). Each prompt's cache rows are then copied to its other n - 1 rows;
  2. decode: one token per row per step at position `cache_lens + rope_deltas`, sampled with
     temperature / top-k / top-p (or greedily) after the repetition penalty, if any (on the logits the
     decode step returns, outside a compiled step), until each row has produced a stop token or its
     own `max_new_tokens`;
  3. finished rows stop costing compute: once a quarter of the batch has finished, the live rows are moved
     to the front of the cache in place (`KVCache.keep_rows`: no reallocation, a peak of one layer's live rows
     on top of the cache) and the batch shrinks to them.
The KV cache (one tensor per layer) is allocated once per call, for the longest prompt plus the most new
tokens; with `compile` on an accelerator it is kept and reused across calls (`static_cache`). On CPU the linear
layers run with weights prepacked for oneDNN during the call (see `packed_linear_weights`): faster decode
matmuls; a compiled CPU step keeps them, behind an op inductor calls (`packed_linear`), and fuses the rest.

Log-probs: for each sampled token we return log_softmax(logits / temperature) at that token (the
plain log_softmax(logits) when greedy), i.e. before top-k / top-p truncation: the same quantity the
trainer computes for the update, which logs the gap between the two as `logp_mismatch` (rounding, the
banned tokens, which get -inf logits here first, so these log-probs are over the other tokens, and a
repetition penalty, which changes the logits here first too: these log-probs are those sampled from).

Sampling is by inverse CDF with one uniform per row and step, from a `torch.Generator` on the
model's device seeded by `seed` (or one generator per run of rows: `generate`): a call is reproducible. (The exponential race of gpt-fast draws V
numbers per row, a noticeable share of a CPU decode step: benchmarks/sampler.py --profile shows it.) Each step draws uniforms for all of the
caller's rows, so a row's samples do not depend on when finished rows were dropped from the batch.

Vision-language models plug in through one optional hook: `model.prefill_positions(input_ids,
prompt_lens, **model_inputs) -> (positions [3, B, T], rope_deltas [B])` (M-RoPE); decode positions
are then `cache_lens + rope_deltas` on all three axes. `model_inputs` (pixel_values, ...) go to the
prefill forward only.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from spark.errors import check_ranges, ranged
from spark.models.attention import KVCache
from spark.models.qwen2 import Decoding


@dataclass
class Sampling:
    """How to sample: the settings a training run, an evaluation or a test-time-scaling call chooses."""

    max_new_tokens: int = ranged(1024, ">= 1")  # per row; `generate(max_new_tokens=[...])` overrides it row by row
    temperature: float = ranged(1.0, ">= 0")  # 0 means greedy
    top_p: float = ranged(1.0, "(0, 1]")  # keep the smallest set of tokens whose probability reaches top_p
    top_k: int = ranged(0, ">= 0")  # keep the k most likely tokens; 0 keeps all
    # transformers' and vLLM's repetition penalty: the logit of every token already in the row (prompt or
    # generated) is divided by it when positive, multiplied when not; 1 = off
    repetition_penalty: float = ranged(1.0, "> 0")

    def __post_init__(self):
        check_ranges(self)


@dataclass
class SamplingParams(Sampling):
    """A sampler call's settings: `Sampling` plus the checkpoint's own stop and banned tokens and the engine."""

    stop_token_ids: tuple[int, ...] = ()
    banned_token_ids: tuple[int, ...] = ()  # never sampled (logits set to -inf), e.g. Qwen2.5-VL's vision tokens
    # torch.compile of the decode step. On accelerators (CUDA graphs on CUDA) shapes are then static: keys are
    # read over the whole cache, finished rows are never dropped, and the cache is kept for the next call
    # (`static_cache`). On CPU they stay dynamic (inductor fuses the small ops; no graphs to replay).
    compile: bool = False
    prefill_tokens: int = ranged(8192, ">= 1")  # prompt tokens (rows x columns) one prefill forward takes at most


@dataclass
class Generations:
    tokens: list[list[int]]  # generated ids per row, ending with the stop token when one was produced
    logprobs: list[torch.Tensor]  # [len(tokens[b])] log-prob of each sampled token (see the module doc)
    finish_reasons: list[str]  # "stop" | "length"


def truncate(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Zero all but the top_k most likely tokens, then all outside the top-p nucleus. probs: [B, V]."""
    if top_k > 0:
        kth = probs.topk(top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first is always kept).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return probs


def sample(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] (fp32), uniforms [B] in [0, 1) -> next tokens [B] and their log-probs [B]:
    log softmax(logits / T) at the token (T = 1 when greedy).

    Inverse-CDF sampling: token = the first i with cdf_i >= (1 - u) * cdf_V over the truncated probs.
    Since (1 - u) * cdf_V is in (0, cdf_V], the token always has a positive probability.
    """
    if params.temperature == 0:
        probs = logits.softmax(-1)
        tokens = probs.argmax(-1)
    else:
        probs = (logits / params.temperature).softmax(-1)
        cdf = truncate(probs, params.top_k, params.top_p).cumsum(-1)  # [B, V], unnormalised
        tokens = torch.searchsorted(cdf, (1 - uniforms[:, None]) * cdf[:, -1:])[:, 0]
    return tokens, probs.gather(-1, tokens[:, None])[:, 0].log()


def tokens_seen(input_ids: torch.Tensor, prompt_lens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Which token ids each right-padded prompt [D, T] holds: [D, vocab] bool. Padding is left out, and so are
    ids the head cannot produce (>= vocab), as transformers leaves them out."""
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    ids = torch.where(columns < prompt_lens[:, None], input_ids.clamp(max=vocab), vocab)
    seen = torch.zeros(input_ids.shape[0], vocab + 1, dtype=torch.bool, device=input_ids.device)
    return seen.scatter_(1, ids, True)[:, :vocab]


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty on logits [B, V] (fp32) at the tokens `seen` [B, V] marks, as transformers'
    RepetitionPenaltyLogitsProcessor computes it."""
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def prefill_positions(model: nn.Module, input_ids: torch.Tensor, prompt_lens: torch.Tensor,
                      **model_inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions for the prefill ([B, T], or [3, B, T] for M-RoPE) and each row's offset [B] between
    its decode positions and its cache fill level: the model's own hook if it has one."""
    if hasattr(model, "prefill_positions"):
        return model.prefill_positions(input_ids, prompt_lens, **model_inputs)
    B, T = input_ids.shape
    positions = torch.arange(T, device=input_ids.device).expand(B, T)
    return positions, torch.zeros(B, dtype=torch.long, device=input_ids.device)


def decode_step(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, decoding: Decoding
                ) -> torch.Tensor:
    """tokens [B], positions [B, 1] or [3, B, 1] -> next-token logits [B, V] (fp32)."""
    return model(tokens[:, None], positions, decoding=decoding)[:, 0].float()


# Devices whose compiled decode step keeps dynamic shapes (see SamplingParams.compile).
DYNAMIC_COMPILE_DEVICES = {"cpu"}


@functools.cache
def compiled_decode_step(device_type: str, dynamic: bool):
    """`decode_step` compiled whole (fullgraph): CUDA graphs on CUDA ("reduce-overhead"), inductor's default
    elsewhere (CUDA graphs need CUDA). `dynamic`: one graph for any number of rows and keys (dynamo still
    specialises one row)."""
    mode = "reduce-overhead" if device_type == "cuda" else "default"
    return torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=dynamic or None)


# The compiled path's KV caches, one per model, kept between calls (see `static_cache`).
STATIC_CACHES: weakref.WeakKeyDictionary[nn.Module, KVCache] = weakref.WeakKeyDictionary()
CACHE_QUANTUM = 256  # a static cache's length is rounded up to a multiple of this, so later calls fit in it


def static_cache(model: nn.Module, batch: int, length: int) -> KVCache:
    """The compiled path's KV cache: allocated once per model and reused by every later call with at most its
    rows and its length in prompt + new tokens (a call with fewer rows pads them: `sample_batch`), so the decode
    graph's inputs keep their shapes and addresses (no recompile for a new row count, and CUDA graphs replay
    without copying the cache); a call that needs more replaces it (the old one freed first) by one with the
    rows and the length of both, the length rounded up to CACHE_QUANTUM. It stays allocated between calls
    (spark.plan counts it as resident when rollout.compile) until the trainer frees it for an update
    (model.offload). The eager path allocates a cache per call instead, for the call's own longest prompt plus its
    most new tokens, freed on return."""
    weight = model.lm_head.weight
    cache = STATIC_CACHES.pop(model, None)
    if cache is not None and (cache.k[0].dtype, cache.k[0].device) == (weight.dtype, weight.device) \
            and cache.batch >= batch and cache.max_len >= length:
        STATIC_CACHES[model] = cache
        return cache
    rows, length = (max(batch, cache.batch), max(length, cache.max_len)) if cache is not None else (batch, length)
    cache = None
    cache = KVCache(model.config.num_hidden_layers, rows, -(-length // CACHE_QUANTUM) * CACHE_QUANTUM,
                    *cache_heads(model), device=weight.device, dtype=weight.dtype)
    for tensor in cache.k + cache.v:  # written in place: CUDA graphs must not copy them in per replay
        # Unguarded (torch releases differ in the default): a replaced cache re-records the CUDA graph instead
        # of recompiling the step, which past dynamo's recompile limit would silently fall back to eager.
        torch._dynamo.mark_static_address(tensor, guard=False)
    STATIC_CACHES[model] = cache
    return cache


def cache_heads(model: nn.Module) -> tuple[int, int]:
    """(key/value heads, head dim) of the KV cache: the attention layers' own, which a tensor-parallel shard
    (spark.generation.tensor_parallel) divides by its group's size."""
    attention = model.model.layers[0].self_attn
    return attention.n_kv, attention.head_dim


def check_prompts(prompts: list[list[int]], copies: list[int], max_new_tokens: list[int]) -> None:
    if not prompts:
        raise ValueError("generate: no prompts")
    if len(copies) != len(prompts):
        raise ValueError(f"generate: n has {len(copies)} entries for {len(prompts)} prompts")
    if len(max_new_tokens) != sum(copies):
        raise ValueError(f"generate: max_new_tokens has {len(max_new_tokens)} entries for {sum(copies)} rows")
    for row, (prompt, n) in enumerate(zip(prompts, copies)):
        if not prompt:
            raise ValueError(f"generate: prompt {row} is empty")
        if n < 1:
            raise ValueError(f"generate: prompt {row}: n must be >= 1, got {n}")
    for row, limit in enumerate(max_new_tokens):
        if limit < 1:
            raise ValueError(f"generate: row {row}: max_new_tokens must be >= 1, got {limit}")


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# The packed copies of the weights during a traced call, by the dense weight's address (see `packed_linear`).
PACKED_WEIGHTS: dict[int, torch.Tensor] = {}


# Registered with torch.library's low-level API: a `custom_op` wrapper adds more per call.
_LIBRARY = torch.library.Library("spark", "FRAGMENT")
_LIBRARY.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias on weight's packed copy: an opaque call to torch.compile, which cannot trace oneDNN's
    tensors (inductor fuses the elementwise work around it)."""
    return _packed_linear(PACKED_WEIGHTS[weight.data_ptr()], bias, x)


_LIBRARY.impl("packed_linear", packed_linear, "CPU")


@torch.library.register_fake("spark::packed_linear")
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _traced_packed_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.spark.packed_linear(x, module.weight, module.bias)


# One traced forward per module for its lifetime: a compiled graph guards on the identity of `module.forward`.
TRACED_FORWARDS: weakref.WeakKeyDictionary[nn.Module, functools.partial] = weakref.WeakKeyDictionary()


@contextmanager
def packed_linear_weights(model: nn.Module, rows: int, traced: bool = False) -> Iterator[None]:
    """On CPU, run every fp32 nn.Linear of `model` for the duration with its weight prepacked in oneDNN's
    blocked layout for `rows` input rows (`torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise`,
    what inductor's CPU weight freezing uses); any number of rows still computes the same. `traced`: through
    the `packed_linear` op, which torch.compile can trace (in eager, one more dispatch per call).

    Decoding multiplies a few rows by each weight, and the packed layout streams the weight faster than the
    dense one, and a layout chosen for the batch's rows faster than oneDNN's default one (benchmarks/sampler.py
    measures both). Same results up to rounding.
    The packed copies take the weights' memory again; the modules are as before once the call returns.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.device.type == "cpu"
               and m.weight.dtype == torch.float32] if torch.backends.mkldnn.is_available() else []
    for m in linears:  # an instance attribute shadows the class's forward until deleted
        packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
        if traced:
            PACKED_WEIGHTS[m.weight.data_ptr()] = packed
            m.forward = TRACED_FORWARDS.setdefault(m, functools.partial(_traced_packed_linear, m))
        else:
            m.forward = functools.partial(_packed_linear, packed, m.bias)
    try:
        yield
    finally:
        for m in linears:
            del m.forward
        PACKED_WEIGHTS.clear()


@torch.inference_mode()
def generate(model: nn.Module, prompts: list[list[int]], params: SamplingParams, *, n: int | list[int] = 1,
             max_new_tokens: list[int] | None = None, seed: int | None | list[tuple[int, int]] = None,
             **model_inputs) -> Generations:
    """Sample `n` completions of every prompt (token ids, no padding; n may differ per prompt) in one
    KV-cached batch. Rows come out prompt by prompt, a prompt's n rows consecutive; `max_new_tokens` and
    `model_inputs` (each distinct prompt's images once) follow that order. Each prompt is prefilled once.
    `seed` may also be [(seed, rows), ...]: the rows in consecutive runs, each drawn from its own seed (the
    members of a tensor-parallel group sample their prompts together, each member's rows as it would alone)."""
    copies = [n] * len(prompts) if isinstance(n, int) else list(n)
    limits = max_new_tokens if max_new_tokens is not None else [params.max_new_tokens] * sum(copies)
    check_prompts(prompts, copies, limits)
    runs = seed if isinstance(seed, list) else [(seed, len(limits))]
    if sum(rows for _, rows in runs) != len(limits):
        raise ValueError(f"generate: the seeds' runs cover {sum(rows for _, rows in runs)} of {len(limits)} rows")
    generators = []
    for run_seed, rows in runs:
        generator = torch.Generator(model.lm_head.weight.device)
        if run_seed is None:
            generator.seed()
        else:
            generator.manual_seed(run_seed)
        generators.append((generator, rows))
    with packed_linear_weights(model, len(limits), traced=params.compile):
        out_tokens, out_logp = sample_batch(model, prompts, copies, limits, params, generators, **model_inputs)
    return finish(out_tokens, out_logp, limits, set(params.stop_token_ids))


def prefill(model: nn.Module, cache: KVCache, input_ids: torch.Tensor, prompt_lens: torch.Tensor,
            positions: torch.Tensor, chunk_tokens: int, **model_inputs) -> torch.Tensor:
    """Write the keys and values of D right-padded prompts input_ids [D, T] into cache rows [0, D) and return
    the logits [D, V] (fp32) after each prompt's last token (never a [D, T, V] tensor).

    The prompts are embedded once (a VL model's vision tower runs here), then the decoder runs over columns
    [start, start + w) of every row at a time, w = max(1, chunk_tokens // D), attending to the cache's first
    start + w positions: the prefill's per-block temporaries (the MLP's gate|up, ...) are bounded by
    chunk_tokens tokens, whatever the prompts' lengths. positions: [D, T] or [3, D, T].
    """
    D, T = input_ids.shape
    embeds = model.prompt_embeddings(input_ids, **model_inputs)  # [D, T, hidden]
    width = max(1, chunk_tokens // D)
    last = prompt_lens - 1  # [D]
    hidden = embeds.new_zeros(D, embeds.shape[-1])  # [D, hidden] at each row's last prompt token
    rows = torch.arange(D, device=input_ids.device)
    cache.rows = D
    for start in range(0, T, width):
        end = min(T, start + width)
        filled = torch.full_like(prompt_lens, start)
        out = model.model(embeds[:, start:end], positions[..., start:end], decoding=Decoding(cache, filled, end))
        inside = ((last >= start) & (last < end))[:, None]
        hidden = torch.where(inside, out[rows, (last - start).clamp(0, end - start - 1)], hidden)
    return model.lm_head(hidden).float()


def sample_batch(model: nn.Module, prompts: list[list[int]], copies: list[int], limits: list[int],
                 params: SamplingParams, generators: list[tuple[torch.Generator, int]], **model_inputs
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill and decode -> sampled tokens [B, N] and their log-probs [B, N], B = sum(copies) rows,
    N = max(limits). `generators`: (generator, rows) for consecutive runs of the rows. A row's entries after
    its stop token or its limit are garbage (or zero once the row was dropped)."""
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    cfg = model.config
    D, B, T, N = len(prompts), sum(copies), max(map(len, prompts)), max(limits)
    stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.long, device=device)
    banned_ids = torch.tensor(params.banned_token_ids, dtype=torch.long, device=device)

    static = params.compile and device.type not in DYNAMIC_COMPILE_DEVICES
    if static:
        cache = static_cache(model, B, T + N)
    else:
        cache = KVCache(cfg.num_hidden_layers, B, T + N, *cache_heads(model), device=device, dtype=dtype)
    # A static cache's rows beyond this call's: decoded as copies of the first prompt that finish at once (a
    # limit of one token) and are never returned, so the compiled step sees the same shapes in every call.
    pad = cache.batch - B
    limits = limits + [1] * pad

    # Cache row r holds the caller's row rows[r] of prompt source[r]: the first copy of each prompt in rows
    # [0, D) (prefilled), its other copies after them (their prompt's rows of the cache copied), then the pad.
    first = [sum(copies[:d]) for d in range(D)]
    others = [(first[d] + j, d) for d in range(D) for j in range(1, copies[d])]
    rows = torch.tensor(first + [row for row, _ in others] + list(range(B, B + pad)), device=device)
    source = torch.tensor(list(range(D)) + [d for _, d in others] + [0] * pad, device=device)

    # Prefill: right-padded prompts; pad positions write garbage keys that decode overwrites or masks.
    input_ids = torch.zeros(D, T, dtype=torch.long)
    for d, prompt in enumerate(prompts):
        input_ids[d, :len(prompt)] = torch.tensor(prompt)
    input_ids = input_ids.to(device)
    prompt_lens = torch.tensor(list(map(len, prompts)), device=device)
    positions, rope_deltas = prefill_positions(model, input_ids, prompt_lens, **model_inputs)
    logits = prefill(model, cache, input_ids, prompt_lens, positions, params.prefill_tokens, **model_inputs)
    cache.repeat_rows(source[D:], T)
    logits, cache_lens, rope_deltas = logits[source], prompt_lens[source], rope_deltas[source]
    mrope = positions.dim() == 3
    seen = None  # [B + pad, V] by the caller's row: the tokens each row holds so far (repetition penalty)
    if params.repetition_penalty != 1.0:
        seen = torch.empty(B + pad, logits.shape[-1], dtype=torch.bool, device=device)
        seen[rows] = tokens_seen(input_ids, prompt_lens, logits.shape[-1])[source]

    step_fn = compiled_decode_step(device.type, not static) if params.compile else decode_step
    row_limits = torch.tensor(limits, device=device)[rows]
    done = torch.zeros(B + pad, dtype=torch.bool, device=device)
    out_tokens = torch.zeros(B + pad, N, dtype=torch.long, device=device)
    out_logp = torch.zeros(B + pad, N, device=device)
    # Each look at `done` is a device -> host sync: free on CPU, batched on accelerators.
    check_every = 1 if device.type == "cpu" else 8
    for step in range(N):
        # for every row: see the doc
        uniforms = torch.cat([torch.rand(rows, generator=generator, device=device) for generator, rows in generators])
        if pad:  # the pad rows draw none: a call samples the same whatever the cache it found
            uniforms = torch.cat([uniforms, uniforms.new_zeros(pad)])
        uniforms = uniforms[rows]
        if params.banned_token_ids:
            logits.index_fill_(-1, banned_ids, float("-inf"))
        if seen is not None:
            logits = penalize(logits, seen[rows], params.repetition_penalty)
        tokens, logp = sample(logits, params, uniforms)
        if seen is not None:
            seen[rows, tokens] = True
        out_tokens[rows, step] = tokens
        out_logp[rows, step] = logp
        done |= torch.isin(tokens, stop_ids) | (step + 1 >= row_limits)
        if step + 1 == N:
            break
        if (step + 1) % check_every == 0:
            num_done = int(done.sum())
            if num_done == len(rows):
                break
            if not static and num_done > 0 and num_done >= len(rows) // 4:
                keep = (~done).nonzero()[:, 0]
                cache.keep_rows(keep, T + step)
                rows, tokens, cache_lens, row_limits, done, rope_deltas = (
                    t[keep] for t in (rows, tokens, cache_lens, row_limits, done, rope_deltas))
        decode_positions = (cache_lens + rope_deltas)[:, None]  # [B, 1]
        if mrope:
            decode_positions = decode_positions[None].expand(3, -1, -1)
        kv_len = cache.max_len if static else T + step + 1
        logits = step_fn(model, tokens, decode_positions, Decoding(cache, cache_lens, kv_len))
        cache_lens += 1
    return out_tokens[:B], out_logp[:B]


def finish(out_tokens: torch.Tensor, out_logp: torch.Tensor, limits: list[int], stop_ids: set[int]) -> Generations:
    """Cut each row [N] of sampled tokens after its first stop token or at its own limit. Tokens a row
    sampled after it finished (before it was dropped from the batch) are discarded here."""
    rollouts = Generations([], [], [])
    for row, (tokens, limit) in enumerate(zip(out_tokens.tolist(), limits)):
        tokens = tokens[:limit]
        stop = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
        length = limit if stop is None else stop + 1
        rollouts.tokens.append(tokens[:length])
        rollouts.logprobs.append(out_logp[row, :length])
        rollouts.finish_reasons.append("length" if stop is None else "stop")
    return rollouts
