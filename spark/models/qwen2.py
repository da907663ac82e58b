"""The Qwen2 / Qwen2.5 decoder in plain PyTorch.

Module and parameter names mirror the Hugging Face checkpoint (`model.layers.0.self_attn.o_proj`), except
that projections of the same input are fused into one matmul, as in gpt-fast: `qkv_proj` holds q_proj, k_proj
and v_proj, `gate_up_proj` holds gate_proj and up_proj (a decode step then runs 4 matmuls per block, not 7).
`FusedLinear.parts` names the pieces; spark.models.checkpoint splits and joins them on save and load.

Positions are an explicit input: `positions` is [B, T] (1-D RoPE) or [3, B, T] (multimodal RoPE:
temporal / height / width ids, with `mrope_section` saying which rotary frequencies use which axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from spark.models.attention import (
    KVCache,
    Packing,
    cached_attention,
    causal_attention,
    packed_attention,
)
from spark.models.logprobs import token_logprobs


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    mrope_section: tuple[int, ...] | None = None  # Qwen2.5-VL: rotary dims per (t, h, w) axis

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """From a `config.json` dict (transformers 4 or 5 layout; VL configs keep the text part in `text_config`)."""
        hf = {**hf, **hf.get("text_config", {})}
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        kwargs = {f.name: hf[f.name] for f in fields(cls) if f.name in hf and hf[f.name] is not None}
        kwargs["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", cls.rope_theta)))
        if "mrope_section" in rope:
            kwargs["mrope_section"] = tuple(rope["mrope_section"])
        kwargs.setdefault("num_key_value_heads", hf["num_attention_heads"])
        return cls(**kwargs)


@dataclass
class Decoding:
    """Where this forward reads and writes the KV cache: row b already holds `cache_lens[b]` positions."""

    cache: KVCache
    cache_lens: torch.Tensor  # [B] long
    kv_len: int  # keys to read this step (host int): max(cache_lens) + T, or cache.max_len
    key_mask: torch.Tensor = field(init=False)  # [B, 1, 1, kv_len]: keys a decoded token sees (SDPA path)

    def __post_init__(self):
        # Built once per step here rather than in each layer.
        positions = torch.arange(self.kv_len, device=self.cache_lens.device)
        self.key_mask = (positions[None, :] <= self.cache_lens[:, None])[:, None, None, :]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference does; the scale multiplies in the input dtype.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, mrope_section: tuple[int, ...] | None = None):
        super().__init__()
        self.head_dim, self.theta, self.mrope_section = head_dim, theta, mrope_section
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self, device: torch.device | str | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / self.theta**exponents

    def reset_buffers(self, device: torch.device | str) -> None:
        """Recompute the frequencies after building on the meta device."""
        self.inv_freq = self.frequencies(device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] or [3, B, T] -> cos, sin [B, T, head_dim]."""
        freqs = positions[..., None].float() * self.inv_freq  # [..., B, T, D/2]
        if positions.dim() == 3:
            # M-RoPE: frequency band i takes its angle from axis i % 3 (t, h, w), band widths from the config.
            bands = freqs.split(list(self.mrope_section), dim=-1)
            freqs = torch.cat([band[i % 3] for i, band in enumerate(bands)], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D], cos/sin: [B, T, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


class FusedLinear(nn.Linear):
    """Several linear maps of the same input in one matmul: the output is the parts' outputs side by side.
    `parts` maps each part's checkpoint name to its output size, e.g. {"q_proj": 896, "k_proj": 128, ...}."""

    def __init__(self, in_features: int, parts: dict[str, int], bias: bool):
        super().__init__(in_features, sum(parts.values()), bias=bias)
        self.parts = parts


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv, self.head_dim = (
            layer, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.qkv_proj = FusedLinear(cfg.hidden_size, {"q_proj": q_size, "k_proj": kv_size, "v_proj": kv_size},
                                    bias=True)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                packing: Packing | None, decoding: Decoding | None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_heads + 2 * self.n_kv, self.head_dim)
        qk = apply_rotary(qkv[:, :, :self.n_heads + self.n_kv], cos, sin)  # q and k heads in one rotation
        q, k = qk.split([self.n_heads, self.n_kv], dim=2)
        v = qkv[:, :, self.n_heads + self.n_kv:]
        if packing is not None:
            out = packed_attention(q[0], k[0], v[0], packing)[None]
        elif decoding is not None:
            out = cached_attention(q, k, v, decoding.cache, self.layer, decoding.cache_lens, decoding.kv_len,
                                   decoding.key_mask)
        else:
            out = causal_attention(q, k, v)
        return self.o_proj(out.reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The vision tower's has biases, the decoder's not."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = FusedLinear(hidden_size, {"gate_proj": intermediate_size, "up_proj": intermediate_size},
                                        bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, packing: Packing | None = None, decoding: Decoding | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, packing, decoding)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embeddings, blocks and the final norm: `model.*` in the checkpoint."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
        self.activation_checkpointing = False  # recompute each block in backward (the trainer turns it on)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, packing: Packing | None = None,
                decoding: Decoding | None = None) -> torch.Tensor:
        cos, sin = self.rotary(positions, embeds.dtype)
        x = embeds
        for block in self.layers:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, packing, decoding, use_reentrant=False)
            else:
                x = block(x, cos, sin, packing, decoding)
        return self.norm(x)


class Head(nn.Linear):
    """The lm_head: hidden states -> logits, and the update's chunked token log-probs on its weight (a method of
    the head, so that FSDP, which shards the head as a unit of its own, gathers its weight for the call)."""

    def token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, *, chunk_size: int, temperature: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        return token_logprobs(hidden, self.weight, targets, chunk_size=chunk_size, temperature=temperature,
                              with_entropy=True)


class Qwen2(nn.Module):
    """Qwen2ForCausalLM. `model(input_ids)` -> logits [B, T, vocab]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = Head(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, *,
                packing: Packing | None = None, decoding: Decoding | None = None,
                inputs_embeds: torch.Tensor | None = None, last_only: bool = False,
                return_hidden: bool = False) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab] ([B, 1, vocab] with `last_only`; the final
        hidden states [B, T, hidden] with `return_hidden`, for chunked log-probs).

        `positions` defaults to 0..T-1 per row, or per packed sequence when `packing` is given
        (then B == 1 and the row is the packed stream). `last_only` assumes no right padding; the
        sampler gathers its own last positions from `return_hidden`.
        """
        if positions is None:
            positions = packing.positions() if packing is not None else (
                torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1))
        embeds = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = self.model(embeds, positions, packing, decoding)
        if return_hidden:
            return hidden
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden)

    def prompt_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> the decoder's input [B, T, hidden] (the sampler's prefill embeds once, then runs
        the decoder chunk by chunk). Vision-language subclasses take their image inputs here."""
        return self.model.embed_tokens(input_ids)

    def logprobs(self, input_ids: torch.Tensor, targets: torch.Tensor, *, packing: Packing | None = None,
                 scored: torch.Tensor | None = None, temperature: float = 1.0, chunk_size: int = 1024,
                 **model_inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies [M] of `targets` [M] after the positions `scored` [M] of `input_ids` [1, N];
        with `scored` None, of `targets` [1, N] after every position. The update scores only its response
        tokens (the lm_head never runs over prompts), and the first token of every response that shares a
        packed prompt follows the same position.

        The lm_head runs in chunks (spark.models.logprobs.token_logprobs), so no [N, vocab] tensor is held.
        A method of the model (not a free function) so that FSDP gathers the head's weight for it.
        `model_inputs` (pixel_values, image_grid_thw) go to the forward of vision-language subclasses.
        """
        hidden = self.forward(input_ids, packing=packing, return_hidden=True, **model_inputs).flatten(0, 1)
        if scored is not None:
            hidden = hidden[scored]
        return self.lm_head.token_logprobs(hidden, targets.flatten(), chunk_size=chunk_size, temperature=temperature)
