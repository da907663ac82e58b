"""Text in, text out: a checkpoint's model and tokenizer behind one `generate` call.

Evaluation, test-time scaling and the trainer's rollouts talk to the policy through this: user messages
go through the checkpoint's chat template (`render`), the sampler runs (`complete`, the one generation
path), completions come back decoded with their token ids and finish reasons, so that training and
evaluation see the same ids.

With a Qwen2.5-VL checkpoint a user message may come with images (`spark.data.images.ImageSource`s: paths
or encoded bytes): the template turns each into `<|vision_start|><|image_pad|><|vision_end|>`, where
the message's `<image>` placeholders are (one per image, in order) or else before the text; each pad is
repeated once per merged patch of its preprocessed image (as transformers' processor does), and the
images' `pixel_values` / `image_grid_thw` travel with the ids (`ChatPrompt`; `image_inputs` concatenates
them for a batch, passing the images that rows share only once). The vision tokens are never sampled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from spark.data.images import (
    IMAGE_PLACEHOLDER,
    ImageConfig,
    ImageSource,
    expand_image_pads,
    image_label,
    load_image,
    preprocess,
)
from spark.errors import CheckpointError, UserError
from spark.generation.sampler import Generations, Sampling, SamplingParams, generate
from spark.generation.tensor_parallel import TensorParallel, load_sharded_model
from spark.models import Qwen2_5_VL, load_model

# Qwen's end-of-turn and end-of-text tokens: a completion stops at either, whatever the config says.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# Qwen2.5-VL's vision markers: they only ever come from the prompt, a VL policy never samples them.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass
class Completion:
    text: str  # decoded response, special tokens stripped
    token_ids: list[int]  # generated ids (incl. the stop token if one was produced)
    finish_reason: str  # "stop" | "length"
    # [len(token_ids)] the sampler's log-prob of each token (spark.generation.sampler); equal completions may differ
    # in rounding here, so it is left out of ==
    logprobs: torch.Tensor | None = field(default=None, compare=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class ChatPrompt:
    """A user message rendered for the model: token ids ending with the assistant header, and the model
    inputs of its images (`pixel_values` [patches, C * temporal * patch^2], `image_grid_thw` [images, 3],
    the images in prompt order; empty for a text message)."""

    ids: list[int]
    images: dict[str, torch.Tensor] = field(default_factory=dict)


def image_inputs(images: Iterable[dict[str, torch.Tensor]], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The model inputs of a batch or packed stream whose sequences hold `images` (`ChatPrompt.images`, in
    sequence order): pixel_values and image_grid_thw concatenated, {} when no sequence has an image.
    A prompt's images that several sequences share (the same dict: its n rollouts) are passed once, with
    `image_index` saying which distinct image each image of the batch is, so the vision tower encodes
    them once."""
    images = [i for i in images if i]
    if not images:
        return {}
    first: dict[int, int] = {}  # id of a prompt's dict -> number of its first image among the distinct ones
    distinct, index = [], []
    for group in images:
        if id(group) not in first:
            first[id(group)] = sum(len(g["image_grid_thw"]) for g in distinct)
            distinct.append(group)
        index += range(first[id(group)], first[id(group)] + len(group["image_grid_thw"]))
    inputs = {"pixel_values": torch.cat([g["pixel_values"] for g in distinct]),
              "image_grid_thw": torch.cat([g["image_grid_thw"] for g in images])}
    if len(distinct) < len(images):
        inputs["image_index"] = torch.tensor(index)
    return {key: value.to(device) for key, value in inputs.items()}


def repeated_prompts(rows: list[ChatPrompt]) -> tuple[list[ChatPrompt], list[int]]:
    """Consecutive rows holding the same prompt (the same object) -> each run's prompt and its length."""
    distinct, copies = [], []
    for row in rows:
        if distinct and row is distinct[-1]:
            copies[-1] += 1
        else:
            distinct.append(row)
            copies.append(1)
    return distinct, copies


def user_content(prompt: str, num_images: int) -> list[dict]:
    """The chat-template parts of a user message with images: each of the first `num_images`
    `<image>` placeholders becomes an image part, in order; a prompt without any shows its images first."""
    if IMAGE_PLACEHOLDER not in prompt:
        return [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
    pieces = prompt.split(IMAGE_PLACEHOLDER, num_images)
    if len(pieces) != num_images + 1:
        raise ValueError(f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders for {num_images} images")
    content = [{"type": "text", "text": pieces[0]}]
    for piece in pieces[1:]:
        content += [{"type": "image"}, {"type": "text", "text": piece}]
    return [part for part in content if part["type"] == "image" or part["text"]]


def messages(content: str | list[dict], system: str | None = None) -> list[dict]:
    """A chat of one user message, after a system message when one is given (None: the template's own)."""
    first = [{"role": "system", "content": system}] if system is not None else []
    return first + [{"role": "user", "content": content}]


def user_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> list[int]:
    """A text-only user message, chat-templated and tokenized, ending with the assistant turn's header."""
    return tokenizer.apply_chat_template(messages(prompt, system), add_generation_prompt=True, tokenize=True,
                                         return_dict=False)


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
    """A checkpoint's model + tokenizer (+ image preprocessing for VL) behind one generate call.

    `image_config` is the checkpoint's image preprocessing (None for a text model); `max_batch_rows`
    bounds the rows (prompts x n) sampled together, which bounds the KV cache; `compile` compiles the
    decode step (spark.generation.sampler.SamplingParams.compile).

    A tensor-parallel shard (spark.generation.tensor_parallel) samples collectively. Without `sample_group`
    its members pass the same prompts (evaluation deals rows per group); with it (the trainer's rollouts) each
    passes its own, the group samples their union with at most max_batch_rows rows of each member per call (the
    KV cache of each rank holds 1/T of the heads of T times the rows), and each gets back its own rows.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, stop_token_ids: tuple[int, ...],
                 *, image_config: ImageConfig | None = None, max_batch_rows: int = 256, compile: bool = False,
                 sample_group: TensorParallel | None = None):
        self.model, self.tokenizer, self.stop_token_ids = model, tokenizer, stop_token_ids
        self.image_config, self.max_batch_rows, self.compile = image_config, max_batch_rows, compile
        self.sample_group = sample_group
        vocab = tokenizer.get_vocab()
        self.banned_token_ids = tuple(sorted(vocab[t] for t in VISION_TOKENS if t in vocab)) if image_config else ()

    def render(self, prompts: list[str], images: list[list[ImageSource]] | None = None, *,
               image_config: ImageConfig | None = None, system: str | None = None) -> list[ChatPrompt]:
        """User messages (each with its list of images, maybe empty) -> chat-templated prompts. The images
        are preprocessed with `image_config` (default: the checkpoint's), e.g. a larger max_pixels; prompts
        with the same images (a question's recycled judge prompts) share one decode and its tensors.
        `system`: the system message of every prompt (None: the chat template's own, if it has one)."""
        images = images if images is not None else [[]] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"ChatModel: image lists for {len(images)} prompts, but {len(prompts)} prompts")
        preprocessed: dict[tuple[ImageSource, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        return [self.render_one(prompt, own, image_config or self.image_config, preprocessed, system)
                for prompt, own in zip(prompts, images)]

    def render_one(self, prompt: str, images: list[ImageSource], image_config: ImageConfig | None,
                   preprocessed: dict[tuple[ImageSource, ...], tuple[torch.Tensor, torch.Tensor]],
                   system: str | None = None) -> ChatPrompt:
        """One prompt of `render`; `preprocessed` holds the image inputs already made with `image_config`."""
        if not images:
            return ChatPrompt(user_prompt_ids(self.tokenizer, prompt, system))
        if image_config is None:
            raise UserError(f"{image_label(images[0])}: images need a Qwen2.5-VL checkpoint")
        key = tuple(images)
        if key not in preprocessed:
            preprocessed[key] = preprocess([load_image(image) for image in images], image_config)
        pixel_values, image_grid_thw = preprocessed[key]
        text = self.tokenizer.apply_chat_template(messages(user_content(prompt, len(images)), system),
                                                  add_generation_prompt=True, tokenize=False)
        text = expand_image_pads(text, image_grid_thw, image_config.merge_size)
        return ChatPrompt(self.tokenizer(text, add_special_tokens=False)["input_ids"],
                          {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw})

    def complete(self, prompts: list[ChatPrompt], sampling: Sampling, *, n: int = 1, seed: int = 0
                 ) -> list[list[Completion]]:
        """n completions of each rendered prompt (one list per prompt). The n copies of a prompt are
        consecutive rows; rows are sampled `max_batch_rows` at a time, chunk k seeded with seed + k. Within a
        chunk each prompt is prefilled (and its images encoded) once for all its copies (`generate(n=...)`)."""
        knobs = {f.name: getattr(sampling, f.name) for f in dataclasses.fields(Sampling)}  # also of a subclass
        params = SamplingParams(**knobs, stop_token_ids=self.stop_token_ids, banned_token_ids=self.banned_token_ids,
                                compile=self.compile)
        rows = [prompt for prompt in prompts for _ in range(n)]
        chunks = [rows[start:start + self.max_batch_rows] for start in range(0, len(rows), self.max_batch_rows)]
        if self.sample_group is not None:  # every member makes as many calls as the one with the most chunks
            counts = [0] * self.sample_group.size
            dist.all_gather_object(counts, len(chunks), group=self.sample_group.group)
            chunks += [[]] * (max(counts) - len(chunks))
        completions: list[Completion] = []
        for chunk, chunk_rows in enumerate(chunks):
            distinct, copies = repeated_prompts(chunk_rows)
            out = self.sample(distinct, copies, params, seed + chunk)
            texts = self.tokenizer.batch_decode(out.tokens, skip_special_tokens=True)
            completions += [Completion(text, tokens, reason, logprobs)
                            for text, tokens, reason, logprobs in zip(texts, out.tokens, out.finish_reasons, out.logprobs)]
        return [completions[i:i + n] for i in range(0, len(completions), n)]

    def sample(self, prompts: list[ChatPrompt], copies: list[int], params: SamplingParams, seed: int) -> Generations:
        """One generate call: copies[i] rows of prompts[i]. With `sample_group`, the group's call (collective) on
        the union of its members' prompts, each member's rows drawn from its own seed; this member's rows return."""
        device = self.model.lm_head.weight.device
        if self.sample_group is None:
            return generate(self.model, [prompt.ids for prompt in prompts], params, n=copies, seed=seed,
                            **image_inputs((prompt.images for prompt in prompts), device))
        group = self.sample_group
        everyone: list = [None] * group.size
        mine = ([prompt.ids for prompt in prompts], copies, seed,
                [{key: value.cpu() for key, value in prompt.images.items()} for prompt in prompts])
        dist.all_gather_object(everyone, mine, group=group.group)
        runs = [(member_seed, sum(member_copies)) for _, member_copies, member_seed, _ in everyone if member_copies]
        out = generate(self.model, [ids for member in everyone for ids in member[0]], params,
                       n=[c for member in everyone for c in member[1]], seed=runs,
                       **image_inputs((images for member in everyone for images in member[3]), device))
        first = sum(sum(member[1]) for member in everyone[:group.rank])
        last = first + sum(copies)
        return Generations(out.tokens[first:last], out.logprobs[first:last], out.finish_reasons[first:last])

    def generate(self, prompts: list[str], images: list[list[ImageSource]] | None = None, *, n: int = 1,
                 seed: int = 0, image_config: ImageConfig | None = None, system: str | None = None,
                 **sampling) -> list[list[Completion]]:
        """prompts: user messages (the chat template is applied here, after `system` when given), images: each
        prompt's images. One list of n completions per prompt. `sampling` are `spark.generation.sampler.Sampling` fields;
        temperature defaults to 0 (greedy) here. `image_config` overrides the checkpoint's image preprocessing
        (e.g. max_pixels) for this call."""
        sampling = Sampling(**{"temperature": 0.0, **sampling})
        rendered = self.render(prompts, images, image_config=image_config, system=system)
        return self.complete(rendered, sampling, n=n, seed=seed)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A checkpoint directory's tokenizer, from its own files (never a hub); a missing or broken one is a
    CheckpointError naming the directory."""
    path = Path(path)
    if not any((path / name).exists() for name in ("tokenizer.json", "vocab.json")):
        raise CheckpointError(f"{path}: no tokenizer.json (or vocab.json) in the checkpoint directory")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its tokenizer does not load ({reason})") from None


def load_chat_model(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    tensor_parallel: TensorParallel | None = None, **engine) -> ChatModel:
    """The model and tokenizer (and, for Qwen2.5-VL, the image preprocessing in preprocessor_config.json)
    of a Hugging Face checkpoint directory (local files only); with `tensor_parallel`, this rank's shard of the
    model. `engine`: ChatModel's max_batch_rows, compile, sample_group.
    The model loads first: its errors name a missing directory or a broken file."""
    model = (load_model(path, device=device, dtype=dtype) if tensor_parallel is None else
             load_sharded_model(path, tensor_parallel, device=device, dtype=dtype))
    tokenizer = load_tokenizer(path)
    image_config = ImageConfig.from_pretrained(path) if isinstance(model, Qwen2_5_VL) else None
    return ChatModel(model, tokenizer, stop_token_ids(tokenizer, Path(path)), image_config=image_config, **engine)
