"""Tiny checkpoints built locally: a byte-level BPE tokenizer trained with `tokenizers`, a Qwen2-style
chat template, and a randomly initialised Qwen2 saved in Hugging Face format. Tests and the CPU demo
load them through the same `load_model` path as a 7B checkpoint; nothing comes from a hub.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's chat template without its default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
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
                         rope_theta: float = 10000.0, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """Save a random Qwen2 checkpoint (plus tokenizer) in Hugging Face format and return its path."""
    path = Path(path)
    tokenizer = tokenizer or build_tokenizer()
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        intermediate_size=intermediate_size or 3 * hidden_size, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, tie_word_embeddings=tie, rope_theta=rope_theta,
        max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path
