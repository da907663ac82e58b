"""Tiny checkpoints built locally: a byte-level BPE tokenizer trained with `tokenizers`, a Qwen2-style
chat template, and a randomly initialised Qwen2 (or Qwen2.5-VL, with its image preprocessor config)
saved in Hugging Face format. Tests and the CPU demo load them through the same `load_model` path as a
7B checkpoint; nothing comes from a hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from spark.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's chat template without its default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
# Qwen2.5-VL's chat template without its default system prompt: a message's content is a string or a
# list of {"type": "image"} / {"type": "text", "text": ...} parts; each image becomes one placeholder.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Please first conduct reasoning, and then answer the "
    "question. Repeat the final answer using a \\boxed{}. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) Yes No A B",
)


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens and chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(corpus), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)


def make_tiny_checkpoint(path: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                         num_kv_heads: int = 2, intermediate_size: int | None = None, tie: bool = True,
                         tokenizer: PreTrainedTokenizerFast | None = None, vocab_size: int | None = None,
                         rope_theta: float = 10000.0, seed: int = 0, max_shard_size: str | None = None,
                         dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Save a random Qwen2 checkpoint (plus tokenizer) in Hugging Face format and return its path. `device`
    is where the weights are drawn (a GPU draws a 1.5B-shaped model in seconds), `dtype` how they are saved."""
    path = Path(path)
    tokenizer = tokenizer or build_tokenizer()
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        intermediate_size=intermediate_size or 3 * hidden_size, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, tie_word_embeddings=tie, rope_theta=rope_theta,
        max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_vl_checkpoint(path: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                            num_kv_heads: int = 2, vision_depth: int = 3, vision_hidden_size: int = 32,
                            vision_heads: int = 2, window_size: int = 56, fullatt_block_indexes: tuple[int, ...] = (1,),
                            min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 64, tie: bool = False,
                            rope_theta: float = 10000.0, seed: int = 0) -> Path:
    """Save a random Qwen2.5-VL checkpoint (tokenizer with the vision tokens, VL chat template, image
    preprocessor config in the hub's format) and return its path. The default window (56 pixels: 2 x 2
    merge units) is small enough that window attention differs from full attention on tiny images."""
    path = Path(path)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    vision_start, image_pad, vision_end = tokenizer.convert_tokens_to_ids(VISION_TOKENS)
    rotary_half = hidden_size // num_heads // 2
    temporal = rotary_half // 4  # Qwen2.5-VL's split of the rotary frequencies: 16 / 24 / 24 of 64
    mrope_section = [temporal, (rotary_half - temporal) // 2, rotary_half - temporal - (rotary_half - temporal) // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=3 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            rms_norm_eps=1e-6, max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
            rope_parameters={"rope_type": "default", "mrope_section": mrope_section, "rope_theta": rope_theta}),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_heads=vision_heads, out_hidden_size=hidden_size, window_size=window_size,
            fullatt_block_indexes=list(fullatt_block_indexes)),
        image_token_id=image_pad, vision_start_token_id=vision_start, vision_end_token_id=vision_end,
        tie_word_embeddings=tie)
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).float().save_pretrained(path)
    tokenizer.save_pretrained(path)
    preprocessor = {
        "min_pixels": min_pixels, "max_pixels": max_pixels, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "resample": 3,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return path
