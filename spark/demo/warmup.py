"""Supervised warm-up: a small fine-tuning loop on chat-templated (user message, response) pairs.

The demo teaches its task's formats with it before RL, and the trainer tests give their tiny checkpoints
a few steps of it so that sampled groups mix right and wrong rollouts. Only the response tokens are trained.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerFast

from spark.generation.chat import user_prompt_ids
from spark.models import Packing


def encode_example(tokenizer: PreTrainedTokenizerFast, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of prompt + response + end-of-turn, and the number of prompt tokens."""
    context = user_prompt_ids(tokenizer, prompt)
    completion = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return context + completion, len(context)


def response_nll(model: nn.Module, batch: list[tuple[list[int], int]]) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens of `batch`, packed into one stream (no padding: the
    comparison drills are a third the length of the judge examples).

    loss = -sum_{b, t in response_b} log p(x_{b,t} | x_{b,<t}) / #response tokens
    """
    input_ids = torch.tensor([token for ids, _ in batch for token in ids])[None]  # [1, N]
    targets = torch.full_like(input_ids, -100)  # [1, N]: the next token where it is a response token
    start = 0
    for ids, num_prompt in batch:
        targets[0, start + num_prompt - 1:start + len(ids) - 1] = torch.tensor(ids[num_prompt:])
        start += len(ids)
    logits = model(input_ids, packing=Packing.from_lengths([len(ids) for ids, _ in batch]))  # [1, N, V]
    return F.cross_entropy(logits[0].float(), targets[0], ignore_index=-100)


def warm_up(model: nn.Module, tokenizer: PreTrainedTokenizerFast, examples: list[tuple[str, str]], *,
            steps: int, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
            stop: Callable[[int], bool] | None = None, check_every: int = 100) -> list[float]:
    """Supervised fine-tuning on random batches of `examples` with AdamW at a constant learning rate, for
    `steps` steps or until `stop(step)`, asked every `check_every` steps with the model in eval mode, says
    so; returns the loss of every step. No decay: stopped mid-descent, the policy keeps its correct answers
    close to its mistakes, which RL then sharpens within minutes."""
    encoded = [encode_example(tokenizer, prompt, response) for prompt, response in examples]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    losses = []
    for step in range(1, steps + 1):
        model.train()
        loss = response_nll(model, rng.sample(encoded, batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if stop is not None and step % check_every == 0:
            model.eval()
            if stop(step):
                break
    model.eval()
    return losses
