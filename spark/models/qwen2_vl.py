"""Qwen2.5-VL in plain PyTorch: the vision tower and the causal LM that reads its features.

Module names mirror the hub checkpoint (`visual.blocks.0.attn.qkv`, `model.layers.0...`, `lm_head`),
so its state dict loads without renaming.

How an image reaches the language model:
  * the image processor (spark.data.images) cuts it into patches of 2 frames x 14 x 14 pixels, grouped
    in 2 x 2 blocks ("merge units"); `image_grid_thw` [I, 3] holds each image's (t, h, w) in patches;
  * the vision tower embeds the patches, runs blocks that attend within windows of merge units (and
    over the whole image in the `fullatt_block_indexes` blocks), and merges each 2 x 2 block into one
    token of the language model's width;
  * the prompt holds `<|vision_start|>` + one `<|image_pad|>` per merged token + `<|vision_end|>`; the
    embeddings of the pads are replaced by the image's tokens, in order;
  * rows that repeat an image (the n rollouts of a prompt) may pass it once, with `image_index` saying
    which distinct image each image of the batch is: the tower then encodes it once (`image_tokens`);
  * positions are multimodal (M-RoPE, [3, B, T]): see `mrope_positions`.

Positions, by caller:
  * training on a padded batch: leave `positions=None` (computed per row, padding treated as text);
  * training on a packed stream (B == 1, `packing`): leave `positions=None`; each packed sequence
    gets its own positions from 0 and its own images, in stream order (`packed_positions`);
  * sampling: `prefill_positions(input_ids, prompt_lens, image_grid_thw=...)` gives the prefill's
    positions and each row's `rope_deltas`; decode step positions are `cache_lens + rope_deltas`, the
    same on all three axes (a [B, 1] tensor works too: 1-D RoPE equals M-RoPE with equal axes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from spark.models.attention import Packing, packed_attention
from spark.models.qwen2 import MLP, Decoding, ModelConfig, Qwen2, RMSNorm, apply_rotary


class ImageTokenError(ValueError):
    """The `<|image_pad|>` tokens of a sequence do not match the features of its images."""


@dataclass
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int  # the language model's width
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112  # pixels per window side
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    in_channels: int = 3
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def window_units(self) -> int:
        """Merge units per window side."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @classmethod
    def from_hf(cls, hf: dict) -> VisionConfig:
        """From a Qwen2.5-VL `config.json` dict (its `vision_config`; transformers 4 or 5 layout)."""
        vision = hf["vision_config"]
        if vision.get("hidden_act", "silu") != "silu":
            raise ValueError(f"vision_config.hidden_act '{vision['hidden_act']}': only silu is implemented")
        kwargs = {f.name: vision[f.name] for f in fields(cls) if vision.get(f.name) is not None}
        kwargs["fullatt_block_indexes"] = tuple(kwargs.get("fullatt_block_indexes", cls.fullatt_block_indexes))
        kwargs["in_channels"] = vision.get("in_channels", vision.get("in_chans", cls.in_channels))
        kwargs["rope_theta"] = float((vision.get("rope_parameters") or {}).get("rope_theta", cls.rope_theta))
        return cls(**kwargs)


# ---- vision tower: index bookkeeping (pure functions of the grids) ----

def patch_coordinates(grids: list[list[int]], merge: int) -> torch.Tensor:
    """(row, column) of every patch [N, 2], patches in the processor's order: merge unit by merge
    unit (row-major over units), row-major inside each unit, frame after frame."""
    coordinates = []
    for t, h, w in grids:
        frame = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), dim=-1)  # [h, w, 2]
        frame = frame.view(h // merge, merge, w // merge, merge, 2).transpose(1, 2).reshape(-1, 2)
        coordinates.append(frame.repeat(t, 1))
    return torch.cat(coordinates)


def window_order(grids: list[list[int]], merge: int, window_units: int) -> tuple[torch.Tensor, list[int]]:
    """Regroup merge units window by window: windows of `window_units` x `window_units` units tile each
    frame row-major (the last row / column of windows may be smaller).

    Returns `order` [N / merge^2] (position in window order -> index of the unit in processor order)
    and the number of patches in each window.
    """
    order, window_lengths, offset = [], [], 0
    for t, h, w in grids:
        units = torch.arange(t * (h // merge) * (w // merge)).view(t, h // merge, w // merge) + offset
        for frame in units:
            for top in range(0, frame.shape[0], window_units):
                for left in range(0, frame.shape[1], window_units):
                    window = frame[top:top + window_units, left:left + window_units].flatten()
                    order.append(window)
                    window_lengths.append(window.numel() * merge**2)
        offset += units.numel()
    return torch.cat(order), window_lengths


# ---- vision tower: modules ----

class PatchEmbed(nn.Module):
    """A Conv3d whose kernel equals its stride, applied to pre-cut patches: a linear map of each
    flattened (channel, frame, row, column) patch. The weight keeps the checkpoint's Conv3d shape."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C * 2 * 14 * 14] -> [N, hidden]."""
        weight = self.proj.weight
        return F.linear(patches.to(weight.dtype), weight.flatten(1))


class VisionRotaryEmbedding(nn.Module):
    """2-D RoPE: the first half of the rotary frequencies turn with the patch's row, the second half
    with its column (each half uses head_dim / 4 frequencies)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self, device: torch.device | str | None = None) -> torch.Tensor:
        axis_dim = self.head_dim // 2
        return 1.0 / self.theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float32, device=device) / axis_dim)

    def reset_buffers(self, device: torch.device | str) -> None:
        self.inv_freq = self.frequencies(device)

    def forward(self, coordinates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coordinates [N, 2] -> cos, sin [N, head_dim] (fp32)."""
        freqs = (coordinates[..., None].float() * self.inv_freq).flatten(1)  # [N, head_dim / 2]: rows | columns
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Packing) -> torch.Tensor:
        """x [N, hidden]; every patch attends to all patches of its segment (a window or a frame)."""
        N = x.shape[0]
        q, k, v = self.qkv(x).view(N, 3, self.n_heads, self.head_dim).unbind(1)
        # Rotate in fp32 as the reference does.
        q = apply_rotary(q[None].float(), cos[None], sin[None])[0].to(v.dtype)
        k = apply_rotary(k[None].float(), cos[None], sin[None])[0].to(v.dtype)
        out = packed_attention(q, k, v, segments, causal=False)
        return self.proj(out.reshape(N, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, 1e-6)
        self.attn = VisionAttention(cfg)
        self.norm2 = RMSNorm(cfg.hidden_size, 1e-6)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Packing) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Each 2 x 2 merge unit -> one token of the language model's width: RMSNorm, concat, MLP."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.unit_dim = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = RMSNorm(cfg.hidden_size, 1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.unit_dim, self.unit_dim), nn.GELU(),
                                 nn.Linear(self.unit_dim, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, hidden] -> [N / merge^2, out_hidden]."""
        return self.mlp(self.ln_q(x).view(-1, self.unit_dim))


class VisionTransformer(nn.Module):
    """`visual.*` in the checkpoint. Images of different sizes travel packed in one stream."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.rotary_pos_emb = VisionRotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, checkpointing: bool = False
                ) -> torch.Tensor:
        """pixel_values [N, C * 2 * 14 * 14], image_grid_thw [I, 3] -> image tokens [N / merge^2, out_hidden],
        image after image in processor order. `checkpointing` recomputes each block in backward (a
        micro-batch of images keeps ~1.9 MB of activations per patch in the 7B's tower otherwise)."""
        cfg, device = self.config, pixel_values.device
        grids = image_grid_thw.tolist()
        unit = cfg.spatial_merge_size**2
        order, window_lengths = window_order(grids, cfg.spatial_merge_size, cfg.window_units)
        order = order.to(device)
        to_windows = lambda x: x.view(len(order), unit, -1)[order].flatten(0, 1)  # merge units keep their patches

        frames = Packing.from_lengths([h * w for t, h, w in grids for _ in range(t)], device)
        windows = Packing.from_lengths(window_lengths, device)
        cos, sin = self.rotary_pos_emb(patch_coordinates(grids, cfg.spatial_merge_size).to(device))
        cos, sin = to_windows(cos), to_windows(sin)
        x = to_windows(self.patch_embed(pixel_values))
        for i, block in enumerate(self.blocks):
            segments = frames if i in cfg.fullatt_block_indexes else windows
            if checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, segments, use_reentrant=False)
            else:
                x = block(x, cos, sin, segments)
        return self.merger(x)[torch.argsort(order)]


# ---- image tokens in the text ----

def assign_images(image_token_counts: list[int], tokens_per_image: list[int], unit: str = "row") -> list[range]:
    """Which images (indices, in order) belong to each sequence: images fill the sequences in order,
    and each sequence's `<|image_pad|>` count must equal the tokens of the images it takes."""
    assigned, next_image = [], 0
    for i, count in enumerate(image_token_counts):
        first, filled = next_image, 0
        while filled < count and next_image < len(tokens_per_image):
            filled += tokens_per_image[next_image]
            next_image += 1
        if filled != count:
            images = (f"its images (numbers {first} to {next_image - 1} of {len(tokens_per_image)}) give {filled}"
                      if next_image > first else f"no image is left for it ({len(tokens_per_image)} given)")
            raise ImageTokenError(f"{unit} {i}: {count} <|image_pad|> tokens in the text, but {images}")
        assigned.append(range(first, next_image))
    if next_image != len(tokens_per_image):
        raise ImageTokenError(f"{len(tokens_per_image)} images given, but the <|image_pad|> tokens of all "
                              f"{len(image_token_counts)} {unit}s account for only {next_image}")
    return assigned


def mrope_positions(input_ids: torch.Tensor, grids: list[list[int]], image_token_id: int, merge: int) -> torch.Tensor:
    """(temporal, height, width) positions [3, L] of one sequence `input_ids` [L] holding `grids`' images.

    Text advances all three axes by one per token. An image whose t x h x w merged tokens start at
    position p gets (p + frame, p + row, p + column); the text after it resumes at p + max(h, w).
    """
    device = input_ids.device
    image_positions = (input_ids == image_token_id).nonzero().flatten().tolist()
    chunks, text_start, position, consumed = [], 0, 0, 0
    for t, h, w in grids:
        h, w = h // merge, w // merge
        start = image_positions[consumed]
        chunks.append(torch.arange(start - text_start, device=device).expand(3, -1) + position)
        position += start - text_start
        grid = torch.meshgrid(*(torch.arange(n, device=device) for n in (t, h, w)), indexing="ij")
        chunks.append(torch.stack(grid).flatten(1) + position)
        position += max(h, w)
        consumed += t * h * w
        text_start = start + t * h * w
    chunks.append(torch.arange(len(input_ids) - text_start, device=device).expand(3, -1) + position)
    return torch.cat(chunks, dim=1)


def split_packed(input_ids: torch.Tensor, packing: Packing) -> list[torch.Tensor]:
    """The sequences [L_s] of a packed stream [1, N]."""
    bounds = packing.cu_seqlens.tolist()
    return [input_ids[0, start:end] for start, end in zip(bounds[:-1], bounds[1:])]


class Qwen2_5_VL(Qwen2):
    """Qwen2_5_VLForConditionalGeneration: the Qwen2 decoder plus the vision tower (`visual.*`).

    `model(input_ids, pixel_values=..., image_grid_thw=...)` -> logits [B, T, vocab], with the image
    processor's outputs; rows without images (or no images at all) work as text.
    """

    def __init__(self, cfg: ModelConfig, vision: VisionConfig, image_token_id: int):
        super().__init__(cfg)
        self.visual = VisionTransformer(vision)
        self.image_token_id = image_token_id

    @classmethod
    def from_hf(cls, hf: dict) -> Qwen2_5_VL:
        return cls(ModelConfig.from_hf(hf), VisionConfig.from_hf(hf), hf["image_token_id"])

    def freeze_vision(self) -> None:
        """Keep the vision tower fixed (no gradients), as during RL."""
        self.visual.requires_grad_(False)

    def images_of(self, sequences: list[torch.Tensor], image_grid_thw: torch.Tensor | None,
                  unit: str) -> list[list[list[int]]]:
        """The grids of each sequence's images; raises ImageTokenError on a token count mismatch."""
        grids = image_grid_thw.tolist() if image_grid_thw is not None else []
        merge = self.visual.config.spatial_merge_size
        counts = [int((s == self.image_token_id).sum()) for s in sequences]
        owned = assign_images(counts, [t * h * w // merge**2 for t, h, w in grids], unit)
        return [[grids[i] for i in images] for images in owned]

    def sequence_positions(self, sequences: list[torch.Tensor], image_grid_thw: torch.Tensor | None,
                           unit: str) -> list[torch.Tensor]:
        """M-RoPE positions [3, L] of each sequence, the images distributed over the sequences in order."""
        merge = self.visual.config.spatial_merge_size
        return [mrope_positions(s, grids, self.image_token_id, merge)
                for s, grids in zip(sequences, self.images_of(sequences, image_grid_thw, unit))]

    def prefill_positions(self, input_ids: torch.Tensor, prompt_lens: torch.Tensor | list[int] | None = None, *,
                          image_grid_thw: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                          image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [3, B, T] of right-padded prompts and their rope deltas [B].

        Row b's real tokens are `input_ids[b, :prompt_lens[b]]`; its pads continue as text. The next
        token of row b sits at position `prompt_lens[b] + rope_deltas[b]` (and so on while decoding):
        rope_delta = (last prompt position + 1) - prompt length, negative after images.
        `pixel_values` and `image_index` are accepted so the sampler can pass its model inputs through;
        positions depend on the grids alone.
        """
        B, T = input_ids.shape
        lengths = [T] * B if prompt_lens is None else torch.as_tensor(prompt_lens).tolist()
        rows = self.sequence_positions([row[:n] for row, n in zip(input_ids, lengths)], image_grid_thw, "row")
        positions = torch.empty(3, B, T, dtype=torch.long, device=input_ids.device)
        deltas = torch.empty(B, dtype=torch.long, device=input_ids.device)
        for b, (row, n) in enumerate(zip(rows, lengths)):
            last = int(row.max()) if n else -1
            positions[:, b, :n] = row
            positions[:, b, n:] = torch.arange(last + 1, last + 1 + T - n, device=input_ids.device)
            deltas[b] = last + 1 - n
        return positions, deltas

    def packed_positions(self, input_ids: torch.Tensor, packing: Packing,
                         image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Positions [3, 1, N] of a packed stream `input_ids` [1, N]: each packed sequence from 0, with
        its own images (the stream's images in order); a continuation (a response after its shared prompt)
        goes on as text after the last position of the sequence it continues."""
        sequences = split_packed(input_ids, packing)
        positions = self.sequence_positions(sequences, image_grid_thw, "packed sequence")
        continues = packing.continues or []
        # on the device (no host sync per continuation), once per prefix; a prefix continues none (Packing)
        last = {prefix: positions[prefix].max() for prefix in set(continues) if prefix >= 0}
        for s, prefix in enumerate(continues):
            if prefix >= 0:
                positions[s] = positions[s] + last[prefix] + 1
        return torch.cat(positions, dim=1)[:, None]

    def image_tokens(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                     image_index: torch.Tensor | None = None) -> torch.Tensor:
        """The language-model tokens of every image [sum_i t_i * h_i * w_i / merge^2, hidden], image after
        image. With `image_index` [I], `pixel_values` holds each distinct image once (image i of the
        batch is distinct image image_index[i]; `image_grid_thw` stays one row per image i): the vision
        tower runs once per distinct image, e.g. once for the n rollouts of a prompt, and its tokens are
        repeated for every image that is it."""
        # The decoder's activation-checkpointing switch covers the vision tower too.
        checkpointing = self.model.activation_checkpointing
        if image_index is None:
            return self.visual(pixel_values, image_grid_thw, checkpointing)
        index = image_index.tolist()
        first = {d: i for i, d in reversed(list(enumerate(index)))}  # distinct image -> its first image i
        if sorted(first) != list(range(len(first))):
            raise ValueError(f"image_index must number the distinct images 0, 1, ..., got {sorted(first)}")
        grids = image_grid_thw[[first[d] for d in range(len(first))]]
        counts = (grids.prod(-1) // self.visual.config.spatial_merge_size**2).tolist()
        offsets = [0, *torch.tensor(counts).cumsum(0).tolist()]
        tokens = self.visual(pixel_values, grids, checkpointing)  # [sum over distinct images, hidden]
        rows = torch.cat([torch.arange(offsets[d], offsets[d + 1]) for d in index]).to(tokens.device)
        return tokens[rows]

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None, packing: Packing | None,
              image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [B, T, hidden] with each `<|image_pad|>` replaced by its image token."""
        embeds = self.model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        if image_grid_thw is None:
            raise ValueError("pixel_values given without image_grid_thw (both come from the image processor)")
        if packing is None:
            self.images_of(list(input_ids), image_grid_thw, "row")
        else:
            self.images_of(split_packed(input_ids, packing), image_grid_thw, "packed sequence")
        image_tokens = self.image_tokens(pixel_values, image_grid_thw, image_index).to(embeds.dtype)
        return embeds.masked_scatter((input_ids == self.image_token_id)[..., None], image_tokens)

    def prompt_embeddings(self, input_ids: torch.Tensor, *, pixel_values: torch.Tensor | None = None,
                          image_grid_thw: torch.Tensor | None = None,
                          image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded prompts [B, T] -> [B, T, hidden] with their image tokens in place: the vision tower runs
        here, once per distinct image."""
        return self.embed(input_ids, pixel_values, image_grid_thw, None, image_index)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, *,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None, packing: Packing | None = None, decoding: Decoding | None = None, last_only: bool = False,
                return_hidden: bool = False) -> torch.Tensor:
        """input_ids [B, T] (B == 1 with `packing`) -> logits [B, T, vocab] (or hidden states, see Qwen2).

        `positions` defaults to the M-RoPE positions of each row or packed sequence; decoding needs
        them explicit (`prefill_positions`, then cache_lens + rope_deltas).
        """
        if positions is None:
            if decoding is not None:
                raise ValueError("decoding needs explicit positions: prefill_positions(), then cache_lens + rope_deltas")
            positions = (self.packed_positions(input_ids, packing, image_grid_thw) if packing is not None
                         else self.prefill_positions(input_ids, image_grid_thw=image_grid_thw)[0])
        embeds = self.embed(input_ids, pixel_values, image_grid_thw, packing, image_index)
        return super().forward(input_ids, positions, packing=packing, decoding=decoding, inputs_embeds=embeds,
                               last_only=last_only, return_hidden=return_hidden)
