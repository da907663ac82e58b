"""Qwen2.5-VL against transformers: vision tower, logits with images, M-RoPE positions, greedy
generation, checkpoint layouts."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from spark.data.images import ImageConfig, expand_image_pads, preprocess
from spark.generation.sampler import SamplingParams, generate
from spark.models import ImageTokenError, Packing, Qwen2_5_VL, load_model, save_model
from spark.models.qwen2_vl import window_order
from spark.models.tiny import make_tiny_vl_checkpoint
from tests.models.test_model import shared_and_separate

IMAGE_SIZES = [(37, 91), (300, 17), (500, 400)]  # (height, width)
# Row 0: one image; row 1: text only; row 2: two images of different sizes.
MESSAGES = [
    [{"type": "image"}, {"type": "text", "text": "What is 2 + 2?"}],
    [{"type": "text", "text": "No image here: 1 2 3 4 5 6 7 8 9 + - * / = ( ) Yes No A B"}],
    [{"type": "image"}, {"type": "text", "text": "Which is bigger, A or B?"}, {"type": "image"}],
]
IMAGES_PER_ROW = [[0], [], [1, 2]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_vl_checkpoint(tmp_path_factory.mktemp("vl") / "tiny", seed=0)


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def images(checkpoint):
    """pixel_values, image_grid_thw of three random images, in row order."""
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in IMAGE_SIZES]
    return preprocess(pictures, ImageConfig.from_pretrained(checkpoint))


@pytest.fixture(scope="module")
def prompts(checkpoint, images):
    """Token ids of the three rows, image pads expanded."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    rows = []
    for content, own in zip(MESSAGES, IMAGES_PER_ROW):
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        rows.append(tokenizer(expand_image_pads(text, images[1][own], 2))["input_ids"])
    return rows


def right_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, T] and attention_mask [B, T]."""
    T = max(map(len, rows))
    input_ids = torch.tensor([row + [pad] * (T - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in rows])
    return input_ids, mask


def row_images(images: tuple[torch.Tensor, torch.Tensor], own: list[int]) -> dict:
    """The model inputs of one row's images (consecutive in the batch's pixel_values)."""
    if not own:
        return {}
    pixel_values, grid = images
    offsets = [0, *grid.prod(-1).cumsum(0).tolist()]
    return {"pixel_values": pixel_values[offsets[own[0]]:offsets[own[-1] + 1]], "image_grid_thw": grid[own]}


def hf_inputs(model: Qwen2_5_VL, input_ids: torch.Tensor, mask: torch.Tensor) -> dict:
    return {"input_ids": input_ids, "attention_mask": mask,
            "mm_token_type_ids": (input_ids == model.image_token_id).int()}


def test_window_attention_is_exercised(model, images):
    cfg = model.visual.config
    _, window_lengths = window_order(images[1].tolist(), cfg.spatial_merge_size, cfg.window_units)
    assert len(window_lengths) > 3 * len(IMAGE_SIZES)  # several windows per image
    assert 0 < len(cfg.fullatt_block_indexes) < cfg.depth


def test_vision_tower_matches_transformers(model, hf_model, images):
    pixel_values, grid = images
    with torch.no_grad():
        ours = model.visual(pixel_values, grid)
        reference = hf_model.model.visual(pixel_values, grid_thw=grid).pooler_output
    assert ours.shape == (int(grid.prod(-1).sum()) // 4, model.config.hidden_size)
    assert (ours - reference).abs().max() < 1e-5


def test_logits_match_transformers_with_images_and_text_rows(model, hf_model, images, prompts):
    input_ids, mask = right_pad(prompts)
    pixel_values, grid = images
    with torch.no_grad():
        ours = model(input_ids, pixel_values=pixel_values, image_grid_thw=grid)
        reference = hf_model(**hf_inputs(model, input_ids, mask), pixel_values=pixel_values,
                             image_grid_thw=grid).logits
    for row, prompt in enumerate(prompts):
        assert (ours[row, :len(prompt)] - reference[row, :len(prompt)]).abs().max() < 1e-4, f"row {row}"


def test_logits_match_transformers_text_only(model, hf_model, prompts):
    input_ids, mask = right_pad([prompts[1], prompts[1][:9]])
    with torch.no_grad():
        ours = model(input_ids)
        reference = hf_model(input_ids=input_ids, attention_mask=mask).logits
    assert (ours[0] - reference[0]).abs().max() < 1e-4
    assert (ours[1, :9] - reference[1, :9]).abs().max() < 1e-4


def test_prefill_positions_match_transformers_rope_index(model, hf_model, images, prompts):
    input_ids, mask = right_pad(prompts)
    lengths = [len(p) for p in prompts]
    positions, deltas = model.prefill_positions(input_ids, torch.tensor(lengths), pixel_values=images[0],
                                                image_grid_thw=images[1])
    inputs = hf_inputs(model, input_ids, mask)
    reference, reference_deltas = hf_model.model.get_rope_index(
        input_ids, inputs["mm_token_type_ids"], image_grid_thw=images[1], attention_mask=mask)
    for row, n in enumerate(lengths):
        assert torch.equal(positions[:, row, :n], reference[:, row, :n])
    assert deltas.tolist() == reference_deltas[:, 0].tolist()
    assert deltas[1] == 0 and deltas[0] < 0 and deltas[2] < deltas[0]


def test_packed_stream_equals_rows(model, images, prompts):
    """Packed training: one stream, positions and images per packed sequence."""
    pixel_values, grid = images
    stream = torch.tensor([token for prompt in prompts for token in prompt])[None]
    packing = Packing.from_lengths([len(p) for p in prompts])
    with torch.no_grad():
        packed = model(stream, pixel_values=pixel_values, image_grid_thw=grid, packing=packing)[0]
        for row, (prompt, own) in enumerate(zip(prompts, IMAGES_PER_ROW)):
            alone = model(torch.tensor([prompt]), **row_images(images, own))[0]
            start = int(packing.cu_seqlens[row])
            assert (packed[start:start + len(prompt)] - alone).abs().max() < 1e-5, f"row {row}"


def test_image_token_count_mismatch_names_the_row(model, images, prompts):
    pixel_values, grid = images
    short = list(prompts)
    short[2] = [t for i, t in enumerate(prompts[2]) if i != prompts[2].index(model.image_token_id)]
    input_ids, _ = right_pad(short)
    with pytest.raises(ImageTokenError, match=r"row 2: 66 <\|image_pad\|> tokens .* give 67$"):
        model(input_ids, pixel_values=pixel_values, image_grid_thw=grid)
    with pytest.raises(ImageTokenError, match=r"row 0: 8 <\|image_pad\|> tokens .* no image is left for it \(0 given\)"):
        model(right_pad(prompts)[0])  # images forgotten


def test_greedy_generation_matches_transformers(model, hf_model, images, prompts):
    """spark.generation.sampler on a ragged batch (right-padded, rope deltas while decoding) against transformers
    generate one prompt at a time."""
    pixel_values, grid = images
    eos = hf_model.config.text_config.eos_token_id
    rollouts = generate(model, prompts, SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(eos,)),
                        pixel_values=pixel_values, image_grid_thw=grid)
    for row, (prompt, own) in enumerate(zip(prompts, IMAGES_PER_ROW)):
        input_ids = torch.tensor([prompt])
        out = hf_model.generate(**hf_inputs(model, input_ids, torch.ones_like(input_ids)), **row_images(images, own),
                                do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=eos)
        assert rollouts.tokens[row] == out[0, len(prompt):].tolist(), f"row {row}"
    assert sum(map(len, rollouts.tokens)) > 3 * 4  # not a batch of immediate stops


def test_newer_layout_loads_and_saves_in_hub_layout(model, checkpoint, images, prompts, tmp_path):
    newer = tmp_path / "newer"
    save_model(model, newer)
    state = load_file(newer / "model.safetensors")
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else
                "model." + k if k.startswith("visual.") else k): v for k, v in state.items()}
    save_file(renamed, newer / "model.safetensors", metadata={"format": "pt"})
    input_ids, mask = right_pad(prompts)
    pixel_values, grid = images
    with torch.no_grad():
        reference = model(input_ids, pixel_values=pixel_values, image_grid_thw=grid)
        loaded = load_model(newer)
        assert torch.equal(loaded(input_ids, pixel_values=pixel_values, image_grid_thw=grid), reference)
        save_model(loaded, tmp_path / "hub")
        keys = load_file(tmp_path / "hub" / "model.safetensors").keys()
        assert keys == state.keys()
        hf_saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "hub").eval()
        hf_logits = hf_saved(**hf_inputs(model, input_ids, mask), pixel_values=pixel_values, image_grid_thw=grid).logits
    for row, prompt in enumerate(prompts):
        assert (hf_logits[row, :len(prompt)] - reference[row, :len(prompt)]).abs().max() < 1e-4
    assert (tmp_path / "hub" / "preprocessor_config.json").exists()


def test_loads_transformers4_config(model, checkpoint, images, prompts, tmp_path):
    """The hub's config.json (transformers 4): text fields at the top, `rope_scaling`, `in_chans`."""
    path = tmp_path / "v4"
    shutil.copytree(checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    text, vision = config.pop("text_config"), config.pop("vision_config")
    rope = text.pop("rope_parameters")
    vision.pop("rope_parameters")
    vision["in_chans"] = vision.pop("in_channels")
    config.update(text, model_type="qwen2_5_vl", vision_config=vision, rope_theta=rope["rope_theta"],
                  rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    (path / "config.json").write_text(json.dumps(config))
    input_ids, _ = right_pad(prompts)
    with torch.no_grad():
        reference = model(input_ids, pixel_values=images[0], image_grid_thw=images[1])
        assert torch.equal(load_model(path)(input_ids, pixel_values=images[0], image_grid_thw=images[1]), reference)


def test_freeze_vision(checkpoint, images, prompts):
    model = load_model(checkpoint)
    model.freeze_vision()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.model.parameters())
    model(torch.tensor(prompts[:1]), **row_images(images, [0])).sum().backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_each_distinct_image_goes_through_the_vision_tower_once(model, images, prompts):
    """Rollouts repeat their prompt's images: with image_index the tower encodes each distinct image once,
    and logits and greedy samples equal those of the batch that carries every copy."""
    pixel_values, grid = images
    rows, own = [prompts[0], prompts[2], prompts[0], prompts[2]], [[0], [1, 2], [0], [1, 2]]
    copies = [row_images(images, images_of_row) for images_of_row in own]
    every_copy = {"pixel_values": torch.cat([c["pixel_values"] for c in copies]),
                  "image_grid_thw": torch.cat([c["image_grid_thw"] for c in copies])}
    once = {"pixel_values": pixel_values, "image_grid_thw": every_copy["image_grid_thw"],
            "image_index": torch.tensor([0, 1, 2, 0, 1, 2])}
    encoded = []
    hook = model.visual.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    try:
        input_ids, _ = right_pad(rows)
        with torch.no_grad():
            assert torch.equal(model(input_ids, **once), model(input_ids, **every_copy))
        params = SamplingParams(max_new_tokens=6, temperature=0)
        assert generate(model, rows, params, **once).tokens == generate(model, rows, params, **every_copy).tokens
    finally:
        hook.remove()
    assert encoded == [len(pixel_values), 2 * len(pixel_values)] * 2


def test_a_prompt_with_images_packed_once_for_its_responses_is_exact(model, images, prompts):
    """Shared prompts in the update: each prompt (one image, none, two) packed once with its responses continuing
    it (M-RoPE positions going on after the prompt's) gives the log-probs and gradients of one copy per response."""
    responses = [[[11, 12, 13], [14, 15]], [[16, 17]], [[18], [19, 20, 21], [22, 23]]]
    row_inputs = [row_images(images, own) for own in IMAGES_PER_ROW]
    (_, shared, shared_grads), (_, separate, separate_grads) = shared_and_separate(model, prompts, responses, row_inputs)
    assert torch.allclose(shared, separate, atol=1e-5)
    assert all((a - b).abs().max() < 1e-4 * b.abs().max() for a, b in zip(shared_grads, separate_grads))


def test_n_rollouts_encode_and_prefill_each_prompt_once(model, images, prompts):
    """generate(n=3): the vision tower encodes the batch's images once and the decoder prefills 3 rows (one
    per distinct prompt), and the samples equal those of the batch holding every copy (same seed)."""
    pixel_values, grid = images
    rows = [prompt for prompt in prompts for _ in range(3)]
    every_copy = {"pixel_values": pixel_values, "image_grid_thw": grid,
                  "image_index": torch.tensor([0, 0, 0, 1, 2, 1, 2, 1, 2])}
    every_copy["image_grid_thw"] = grid[every_copy["image_index"]]
    encoded, prefilled = [], []
    hooks = [model.visual.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0])),
             model.model.register_forward_hook(
                 lambda module, args, out: prefilled.append(args[0].shape[0]) if args[0].shape[1] > 1 else None)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    try:
        shared = generate(model, prompts, params, n=3, seed=4, pixel_values=pixel_values, image_grid_thw=grid)
        assert encoded == [len(pixel_values)] and prefilled == [3]
        assert shared.tokens == generate(model, rows, params, seed=4, **every_copy).tokens
    finally:
        for hook in hooks:
            hook.remove()
