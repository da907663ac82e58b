"""Images for Qwen2.5-VL: where rows keep them, loading with pillow, and the checkpoint's own preprocessing.

A row's image field holds images as datasets ship them (`image_sources`): paths relative to the data
file, encoded bytes, the `datasets` Image feature's `{bytes, path}` struct, or a list of these. Every
image is decoded once when its file is loaded (`check_images`), so a corrupt one fails the load, naming
the file, row and field.

`preprocess` reproduces transformers' Qwen2-VL image processor (`Qwen2VLImageProcessorPil`) bit for
bit: resize (bicubic, in uint8) to sides that are multiples of patch * merge with the pixel count in
[min_pixels, max_pixels], rescale to [0, 1], normalise by mean / std, and cut into patches of
`temporal_patch_size` identical frames x patch x patch pixels, merge unit by merge unit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spark.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_PAD = "<|image_pad|>"

# One image as rows carry it once loaded: an image file's path, or the encoded image itself (PNG / JPEG
# bytes, as the hub's Parquet files embed them).
ImageSource = str | bytes
# Where a question puts an image (ViRL39K's convention); a question without one shows its images first.
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ImageConfig:
    """The fields of a checkpoint's `preprocessor_config.json` that shape the model's input. Override
    one with `dataclasses.replace`, e.g. a larger `max_pixels` for judge prompts."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL's Image.Resampling.BICUBIC: pillow is imported only where images are opened

    @classmethod
    def from_hf(cls, hf: dict) -> ImageConfig:
        """From a preprocessor config dict; `min_pixels` / `max_pixels` win over `size` as in transformers."""
        for step in ("do_resize", "do_rescale", "do_normalize"):
            if hf.get(step) is False:
                raise ValueError(f"preprocessor config: {step} = false is not supported (Qwen2.5-VL always sets it)")
        size = hf.get("size") or {}
        kwargs = {f.name: hf[f.name] for f in fields(cls) if hf.get(f.name) is not None}
        kwargs["min_pixels"] = hf.get("min_pixels") or size.get("shortest_edge", cls.min_pixels)
        kwargs["max_pixels"] = hf.get("max_pixels") or size.get("longest_edge", cls.max_pixels)
        for name in ("image_mean", "image_std"):
            kwargs[name] = tuple(kwargs.get(name, getattr(cls, name)))
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ImageConfig:
        file = Path(path) / "preprocessor_config.json"
        if not file.exists():
            raise CheckpointError(f"{file}: not found (a Qwen2.5-VL checkpoint carries its image preprocessing)")
        try:
            return cls.from_hf(json.loads(file.read_text()))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{file}: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as the transformers processor does)."""
    from PIL import Image

    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _open(source: ImageSource) -> Image.Image:
    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def load_image(source: ImageSource, *, where: tuple[str | Path, int | None, str] | None = None) -> Image.Image:
    """Open an image (a file path or the encoded bytes) as RGB (`to_rgb`), upright per its EXIF
    orientation. Errors are DataErrors naming the image and, given `where` = (data file, line, field),
    the data row that holds it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _open(source) as image:
            return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        reason = "file not found" if isinstance(e, FileNotFoundError) else f"cannot read the image ({e})"
        if where is None:
            raise DataError(image_label(source), None, None, reason) from None
        path, line, key = where
        raise DataError(path, line, key, f"{image_label(source)}: {reason}") from None


def image_label(source: ImageSource) -> str:
    """How an image is named in errors, logs and saved records: its path, or for embedded bytes their
    size and a content hash (equal images, equal labels)."""
    if isinstance(source, bytes):
        return f"<embedded image, {len(source)} bytes, sha1 {hashlib.sha1(source).hexdigest()[:12]}>"
    return str(source)


def image_sources(value: object, base: Path, *, path: str | Path, line: int, key: str) -> list[ImageSource]:
    """A row's image field -> its images in order. The field may hold null (no image), a path (relative
    to `base`, the data file's folder), the encoded bytes, a `{bytes, path}` struct as the `datasets`
    Image feature stores an image in Parquet (the bytes win; `path` is then only the original file's
    name), or a list of any of these. Paths must exist; anything else is a DataError."""
    values = value if isinstance(value, list | tuple) else [] if value is None else [value]
    sources: list[ImageSource] = []
    for i, item in enumerate(values):
        what = f"image {i + 1} of {len(values)}" if isinstance(value, list | tuple) else "image"
        if isinstance(item, dict) and item.get("bytes") is not None:
            item = item["bytes"]
        elif isinstance(item, dict) and item.get("path"):
            item = item["path"]
        if isinstance(item, bytes | bytearray):
            sources.append(bytes(item))
        elif isinstance(item, str) and item.strip():
            file = (base / item).resolve()
            if not file.is_file():
                raise DataError(path, line, key, f"{what}: image file not found: {file}")
            sources.append(str(file))
        else:
            raise DataError(path, line, key, f"{what}: expected a path, image bytes or a {{bytes, path}} struct, "
                                             f"got {type(item).__name__}")
    return sources


def check_placeholders(text: str, num_images: int, *, path: str | Path, line: int, key: str) -> None:
    """A question marks where its images go with one `<image>` per image, or not at all; any other count
    is a DataError."""
    markers = text.count(IMAGE_PLACEHOLDER)
    if markers and markers != num_images:
        raise DataError(path, line, key, f"{markers} {IMAGE_PLACEHOLDER} placeholders for {num_images} images "
                                         f"(one per image, or none to show the images first)")


def _decode_error(source: ImageSource) -> str | None:
    """Why `source` cannot be decoded (pillow's message), or None when it decodes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _open(source) as image:
            image.load()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        return str(e) or type(e).__name__
    return None


def check_images(rows: list[tuple[list[ImageSource], str | Path, int, str]], threads: int = 8) -> None:
    """Decode every image of every row, (sources, data file, line, field), up front: a corrupt image is
    a DataError naming its file, row and field when the data is loaded, not when the step that draws its
    row comes. Pillow decodes outside the GIL, so threads run the decodes in parallel."""
    jobs = [(row, i, source) for row in rows for i, source in enumerate(row[0])]
    with ThreadPoolExecutor(max(1, min(threads, os.cpu_count() or 1))) as pool:
        errors = list(pool.map(lambda job: _decode_error(job[2]), jobs))
    for ((sources, path, line, key), i, source), error in zip(jobs, errors):
        if error is not None:
            what = f"image {i + 1} of {len(sources)}" if len(sources) > 1 else "image"
            raise DataError(path, line, key, f"{what} ({image_label(source)}) cannot be decoded: {error}")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's target size: each side rounded to a multiple of `factor`, then scaled (keeping
    the aspect ratio) so that height * width lies in [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image of {width}x{height}: aspect ratio above 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(image: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """image [C, H, W] -> patches [H/p * W/p, C * temporal * p * p], merge unit by merge unit
    (row-major over units, row-major inside a unit); a still image repeats over the temporal patch."""
    C, H, W = image.shape
    p, m = cfg.patch_size, cfg.merge_size
    patches = image.reshape(C, H // p // m, m, p, W // p // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], cfg.temporal_patch_size, p, p))
    return patches.reshape(H // p * W // p, -1)


def preprocess(images: list[Image.Image], cfg: ImageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images -> pixel_values [N, C * temporal * p * p] float32 and image_grid_thw [I, 3] long,
    the images' patches one after another."""
    factor = cfg.patch_size * cfg.merge_size
    mean, std = np.array(cfg.image_mean, np.float32), np.array(cfg.image_std, np.float32)
    all_patches, grids = [], []
    for image in map(to_rgb, images):
        height, width = smart_resize(image.height, image.width, factor, cfg.min_pixels, cfg.max_pixels)
        pixels = np.asarray(image.resize((width, height), resample=cfg.resample))  # [H, W, C] uint8
        pixels = (pixels.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
        pixels = ((pixels - mean) / std).transpose(2, 0, 1)
        all_patches.append(patchify(pixels, cfg))
        grids.append([1, height // cfg.patch_size, width // cfg.patch_size])
    return torch.from_numpy(np.concatenate(all_patches)), torch.tensor(grids, dtype=torch.long)


def image_token_count(grid_thw: list[int], merge_size: int) -> int:
    """Tokens an image takes in the text: its merged patches, t * h * w / merge^2."""
    t, h, w = grid_thw
    return t * h * w // merge_size**2


def expand_image_pads(text: str, image_grid_thw: torch.Tensor, merge_size: int) -> str:
    """Repeat the i-th `<|image_pad|>` of a rendered prompt once per token of image i, as the
    Qwen2.5-VL processor does: `<|vision_start|><|image_pad|><|vision_end|>` -> `...<|image_pad|> x n...`."""
    pieces = text.split(IMAGE_PAD)
    grids = image_grid_thw.tolist()
    if len(pieces) - 1 != len(grids):
        raise ValueError(f"the prompt has {len(pieces) - 1} {IMAGE_PAD} placeholders for {len(grids)} images")
    expanded = [pieces[0]]
    for grid, piece in zip(grids, pieces[1:]):
        expanded += [IMAGE_PAD * image_token_count(grid, merge_size), piece]
    return "".join(expanded)
