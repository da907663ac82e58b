r"""The judge's confidence: the probability the model puts on its verdict.

A verdict is one token of the judge's response (`Yes` in `\boxed{Yes}`, after the judge's own reasoning). Its
probability is the softmax of the model's logits at that position over the allowed verdicts' tokens only (Yes
against No, in the case the judge wrote):

    p(verdict) = exp(l_verdict) / (exp(l_Yes) + exp(l_No)),  l = the logits after prompt + response[:verdict token]

The logits come from a scoring pass over the prompt and the judge's own sampled tokens up to the verdict token (the
sampler's prefill, which computes logits at each row's last position only), not from the sampler: its log-probs
are over the whole vocabulary and of the sampled token only, and the sampler stays the one generation path. A
greedy verdict is the one with p > 1/2 (up to the rounding between the prefill's and the decode's kernels).
"""

from __future__ import annotations

import re

import torch

from spark.generation.chat import image_inputs
from spark.generation.sampler import cache_heads, prefill, prefill_positions
from spark.models.attention import KVCache

# Each verdict word against the other one, in the case the judge wrote it.
OTHER_VERDICT = {"Yes": "No", "No": "Yes", "yes": "no", "no": "yes", "YES": "NO", "NO": "YES"}
BOX = re.compile(r"\\boxed\{")


def verdict_start(response: str, verdict: str | None, box: str) -> int | None:
    """Where in `response` the verdict word starts: inside its first or last \\boxed{} (`box`: "first" | "last",
    the box the verdict was read from); None when there is no verdict or the box does not hold the word."""
    boxes = [m.end() for m in BOX.finditer(response)]
    if verdict is None or not boxes:
        return None
    start = boxes[0] if box == "first" else boxes[-1]
    end = response.find("}", start)
    word = re.compile(re.escape(verdict), re.IGNORECASE).search(response, start, end if end >= 0 else len(response))
    return word.start() if word is not None else None


def _prefix_length(tokenizer, token_ids: list[int], start: int) -> int:
    """The number k of tokens whose decoded text ends at or before character `start`: token k holds that
    character (binary search: a decoded prefix grows with the number of tokens)."""
    low, high = 0, len(token_ids)
    while low < high:
        middle = (low + high + 1) // 2
        if len(tokenizer.decode(token_ids[:middle], skip_special_tokens=True)) <= start:
            low = middle
        else:
            high = middle - 1
    return low


def verdict_tokens(tokenizer, response: str, token_ids: list[int], start: int) -> tuple[int, int, int] | None:
    """(k, the verdict's token id, the other verdict's token id): the verdict word at character `start` of the
    response is in token k, which may also hold text before or after it (`{Yes` in a tokenizer that merges them);
    the other verdict's token is that text with the other word, when it is one token. None when it is not, or
    the verdict is not one of OTHER_VERDICT's words."""
    k = _prefix_length(tokenizer, token_ids, start)
    if k >= len(token_ids):
        return None
    before = tokenizer.decode(token_ids[:k], skip_special_tokens=True)
    text = tokenizer.decode(token_ids[:k + 1], skip_special_tokens=True)[len(before):]
    offset = start - len(before)
    word = next((w for w in sorted(OTHER_VERDICT, key=len, reverse=True) if text.startswith(w, offset)), None)
    if word is None:
        return None
    other = tokenizer(text[:offset] + OTHER_VERDICT[word] + text[offset + len(word):], add_special_tokens=False)
    if len(other["input_ids"]) != 1:
        return None
    return k, token_ids[k], other["input_ids"][0]


@torch.inference_mode()
def next_token_logits(model, rows: list[list[int]], images: list[dict], prefill_tokens: int = 8192) -> torch.Tensor:
    """The logits [len(rows), V] (fp32) of the token after each row of token ids (a prompt and the start of its
    response), `images` each row's image inputs (spark.generation.chat.ChatPrompt.images; {} for text)."""
    device = model.lm_head.weight.device
    cfg = model.config
    lengths = torch.tensor([len(row) for row in rows], device=device)
    input_ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
    input_ids = input_ids.to(device)
    inputs = image_inputs(images, device)
    cache = KVCache(cfg.num_hidden_layers, len(rows), input_ids.shape[1], *cache_heads(model),
                    device=device, dtype=model.lm_head.weight.dtype)
    positions, _ = prefill_positions(model, input_ids, lengths, **inputs)
    return prefill(model, cache, input_ids, lengths, positions, prefill_tokens, **inputs)


def verdict_probabilities(chat, prompts: list, completions: list, verdicts: list[str | None], box: str
                          ) -> list[float | None]:
    """p(verdict) of each judge completion (see the module doc) of `prompts` (spark.generation.chat.ChatPrompt,
    rendered as the judge saw them) with `chat` (a spark.generation.chat.ChatModel); None where the verdict is
    unreadable or not one token. Rows are scored `chat.max_batch_rows` at a time."""
    located = {}
    for i, (completion, verdict) in enumerate(zip(completions, verdicts)):
        start = verdict_start(completion.text, verdict, box)
        tokens = None if start is None else verdict_tokens(chat.tokenizer, completion.text, completion.token_ids, start)
        if tokens is not None:
            located[i] = tokens
    probabilities: list[float | None] = [None] * len(completions)
    order = list(located)
    for chunk in range(0, len(order), chat.max_batch_rows):
        rows = order[chunk:chunk + chat.max_batch_rows]
        logits = next_token_logits(chat.model, [prompts[i].ids + completions[i].token_ids[:located[i][0]]
                                                for i in rows], [prompts[i].images for i in rows])
        for row, i in enumerate(rows):
            _, verdict_id, other_id = located[i]
            pair = logits[row, [verdict_id, other_id]].softmax(-1)
            probabilities[i] = pair[0].item()
    return probabilities
