"""Text in, text out: a checkpoint's model and tokenizer behind one `generate` call.

Evaluation, test-time scaling and the trainer's demo talk to the policy through this: user messages
go through the checkpoint's chat template, the sampler runs, completions come back decoded. The
trainer encodes prompts with `ChatModel.encode` so that training and evaluation see the same ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from spark.models import load_model
from spark.sampler import SamplingParams, generate

# Qwen's end-of-turn and end-of-text tokens: a completion stops at either, whatever the config says.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Completion:
    text: str  # decoded response, special tokens stripped
    num_tokens: int  # generated tokens (incl. the stop token if one was produced)
    finish_reason: str  # "stop" | "length"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, path: Path) -> tuple[int, ...]:
    """EOS ids from the tokenizer and generation_config.json, plus Qwen's stop tokens when in the vocab."""
    ids = [tokenizer.eos_token_id]
    generation_config = path / "generation_config.json"
    if generation_config.exists():
        eos = json.loads(generation_config.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos]
    vocab = tokenizer.get_vocab()
    ids += [vocab.get(token) for token in STOP_TOKENS]
    return tuple(sorted({i for i in ids if i is not None}))


class ChatModel:
    """A checkpoint's model + tokenizer (+ image processor for VL) behind one generate call.

    `max_batch_rows` bounds the rows (prompts x n) sampled together, which bounds the KV cache.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, stop_token_ids: tuple[int, ...],
                 *, max_batch_rows: int = 256):
        self.model, self.tokenizer, self.stop_token_ids = model, tokenizer, stop_token_ids
        self.max_batch_rows = max_batch_rows

    def encode(self, prompts: list[str], images: list[str | None] | None = None) -> list[list[int]]:
        """User messages -> chat-templated token ids, ending with the assistant turn's header."""
        if images is not None and any(image is not None for image in images):
            raise NotImplementedError("images need the Qwen2.5-VL model")
        return [self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
                for prompt in prompts]

    def generate(self, prompts: list[str], images: list[str | None] | None = None, *,
                 max_new_tokens: int = 1024, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, n: int = 1, seed: int = 0) -> list[list[Completion]]:
        """prompts: user messages (the chat template is applied here). One list of n completions
        per prompt. temperature == 0 means greedy."""
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"ChatModel.generate: {len(images)} images for {len(prompts)} prompts")
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k, stop_token_ids=self.stop_token_ids)
        rows = [ids for ids in self.encode(prompts, images) for _ in range(n)]  # n copies of each prompt
        completions: list[Completion] = []
        for chunk, start in enumerate(range(0, len(rows), self.max_batch_rows)):
            rollouts = generate(self.model, rows[start:start + self.max_batch_rows], params, seed=seed + chunk)
            completions += [Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), reason)
                            for tokens, reason in zip(rollouts.tokens, rollouts.finish_reasons)]
        return [completions[i:i + n] for i in range(0, len(completions), n)]


def load_chat_model(path: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ChatModel:
    """The model and tokenizer of a Hugging Face checkpoint directory (local files only)."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return ChatModel(load_model(path, device=device, dtype=dtype), tokenizer, stop_token_ids(tokenizer, Path(path)))
