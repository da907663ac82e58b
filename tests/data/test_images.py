"""Image loading and preprocessing against transformers' Qwen2-VL image processor."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from spark.data.images import (
    ImageConfig,
    check_images,
    expand_image_pads,
    image_sources,
    load_image,
    preprocess,
    smart_resize,
)
from spark.errors import DataError
from spark.models.tiny import make_tiny_vl_checkpoint

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 80


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


@pytest.mark.parametrize("sizes", [
    [(37, 91)], [(300, 17)], [(500, 400)], [(28, 28)], [(1, 150)], [(37, 91), (300, 17), (500, 400), (61, 61)],
], ids=lambda sizes: "+".join(f"{h}x{w}" for h, w in sizes))
def test_matches_transformers_processor(sizes):
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    reference = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)(images, return_tensors="pt")
    pixel_values, grid = preprocess(images, ImageConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS))
    assert torch.equal(grid, reference["image_grid_thw"])
    assert pixel_values.dtype == reference["pixel_values"].dtype == torch.float32
    assert torch.equal(pixel_values, reference["pixel_values"])


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_other_modes_match_transformers_processor(mode):
    images = [random_image(45, 70, mode)]
    reference = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)(images, return_tensors="pt")
    pixel_values, _ = preprocess(images, ImageConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS))
    assert torch.equal(pixel_values, reference["pixel_values"])


def test_checkpoint_preprocessor_config_matches_transformers(tmp_path):
    path = make_tiny_vl_checkpoint(tmp_path / "vl", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 30)
    images = [random_image(37, 91), random_image(500, 400, seed=1)]
    reference = Qwen2VLImageProcessorPil.from_pretrained(path)(images, return_tensors="pt")
    pixel_values, grid = preprocess(images, ImageConfig.from_pretrained(path))
    assert torch.equal(grid, reference["image_grid_thw"])
    assert torch.equal(pixel_values, reference["pixel_values"])


def test_config_reads_both_preprocessor_layouts():
    hub = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "image_mean": [0.5, 0.5, 0.5]}
    newer = {"size": {"shortest_edge": 3136, "longest_edge": 12845056}, "patch_size": 14,
             "image_mean": [0.5, 0.5, 0.5]}
    assert ImageConfig.from_hf(hub) == ImageConfig.from_hf(newer)
    assert ImageConfig.from_hf(hub).max_pixels == 12845056


@pytest.mark.parametrize("height,width", [(37, 91), (300, 17), (5000, 4000), (1, 150), (28, 28)])
def test_smart_resize_bounds(height, width):
    h, w = smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
    assert h % 28 == 0 and w % 28 == 0
    assert MIN_PIXELS <= h * w <= MAX_PIXELS


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 300, 28, MIN_PIXELS, MAX_PIXELS)


def test_load_image_applies_exif_orientation(tmp_path):
    image = random_image(20, 50)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    loaded = load_image(str(tmp_path / "rotated.jpg"))
    assert loaded.mode == "RGB" and loaded.size == (20, 50)


def test_load_image_composites_transparency_onto_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(str(tmp_path / "clear.png")).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_images_name_the_file_and_row(tmp_path):
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"train\.jsonl, line 7, field 'image': .*broken\.jpg: cannot read"):
        load_image(str(tmp_path / "broken.jpg"), where=("train.jsonl", 7, "image"))
    with pytest.raises(DataError, match=r"line 2, field 'images': <embedded image, 3 bytes, sha1 \w+>: cannot"):
        load_image(b"abc", where=("train.parquet", 2, "images"))


def png_bytes(height: int, width: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    random_image(height, width, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_sources_accept_paths_bytes_structs_and_lists(tmp_path):
    random_image(30, 40).save(tmp_path / "a.png")
    embedded = png_bytes(20, 50, seed=1)
    where = {"path": "rows.parquet", "line": 3, "key": "images"}
    assert image_sources(None, tmp_path, **where) == []
    assert image_sources("a.png", tmp_path, **where) == [str((tmp_path / "a.png").resolve())]
    assert image_sources(embedded, tmp_path, **where) == [embedded]
    # The datasets Image feature: bytes win over the original file name; a struct without bytes is a path.
    assert image_sources({"bytes": embedded, "path": "gone.png"}, tmp_path, **where) == [embedded]
    assert image_sources({"bytes": None, "path": "a.png"}, tmp_path, **where) == [str(tmp_path / "a.png")]
    both = image_sources([{"bytes": embedded, "path": None}, "a.png"], tmp_path, **where)
    assert both == [embedded, str(tmp_path / "a.png")]
    assert load_image(both[0]).size == (50, 20) and load_image(both[1]).size == (40, 30)
    pixels, grids = preprocess([load_image(s) for s in both], ImageConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS))
    reference = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)(
        [Image.open(io.BytesIO(embedded)), Image.open(tmp_path / "a.png")], return_tensors="pt")
    assert torch.equal(pixels, reference["pixel_values"]) and torch.equal(grids, reference["image_grid_thw"])


@pytest.mark.parametrize("value,message", [
    ("gone.png", r"rows\.parquet, line 3, field 'images': image: image file not found: .*gone\.png"),
    ([b"x", 5], r"field 'images': image 2 of 2: expected a path, image bytes or a \{bytes, path\} struct, got int"),
    ({"bytes": None, "path": None}, r"image: expected a path, .* got dict"),
])
def test_image_sources_name_the_row_and_field(tmp_path, value, message):
    with pytest.raises(DataError, match=message):
        image_sources(value, tmp_path, path="rows.parquet", line=3, key="images")


def test_check_images_decodes_every_image_and_names_the_bad_one(tmp_path):
    good, truncated = png_bytes(30, 30), png_bytes(30, 30, seed=2)[:-40]
    check_images([([good], "rows.parquet", 1, "images"), ([good, good], "rows.parquet", 2, "images")])
    rows = [([good], "rows.parquet", 1, "images"), ([good, truncated], "rows.parquet", 2, "images"),
            ([b"not a png"], "rows.parquet", 3, "images")]
    with pytest.raises(DataError, match=r"rows\.parquet, line 2, field 'images': image 2 of 2 \(<embedded image, "
                                        r"\d+ bytes, sha1 \w+>\) cannot be decoded"):
        check_images(rows)


def test_expand_image_pads():
    grid = torch.tensor([[1, 4, 8], [1, 2, 2]])
    text = "<|vision_start|><|image_pad|><|vision_end|>A or <|vision_start|><|image_pad|><|vision_end|>?"
    expanded = expand_image_pads(text, grid, merge_size=2)
    assert expanded == ("<|vision_start|>" + "<|image_pad|>" * 8 + "<|vision_end|>A or <|vision_start|>"
                        + "<|image_pad|>" + "<|vision_end|>?")
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders for 1 images"):
        expand_image_pads(text, grid[:1], merge_size=2)
