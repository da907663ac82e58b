"""Hugging Face checkpoint directories in and out.

A directory as published on the hub: `config.json`, `model.safetensors` or sharded
`model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`, plus tokenizer files.
The model is built on the meta device and each tensor filled from its file in turn, so a 7B model never exists
twice in memory (and an FSDP-sharded one never whole: see load_model's `prepare`). The projections our model
fuses (q/k/v and gate/up, see spark.models.qwen2) are joined on load and split on save: the directory keeps the
hub's tensor names, and errors name those.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from spark.errors import CheckpointError
from spark.models.qwen2 import FusedLinear, ModelConfig, Qwen2
from spark.models.qwen2_vl import Qwen2_5_VL

# config.json's `architectures[0]` -> our model, built from the config dict.
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {
    "Qwen2ForCausalLM": lambda hf: Qwen2(ModelConfig.from_hf(hf)),
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VL.from_hf,
}
# The newer transformers layout of VL checkpoints -> the hub's (which our modules mirror).
LAYOUT_PREFIXES = {"model.language_model.": "model.", "model.visual.": "visual."}
# Files a checkpoint directory carries besides the weights, copied through on save.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
              "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json",
              "preprocessor_config.json")


def read_config(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory" if not path.exists() else
                              f"{path}: not a directory (a checkpoint is a Hugging Face checkpoint directory)")
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{config_file}: not found (is {path} a Hugging Face checkpoint directory?)")
    return read_json(config_file)


def read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


@contextmanager
def open_weights(file: Path, device: str = "cpu") -> Iterator:
    """safe_open, with a file it cannot read (cut short, not safetensors) a CheckpointError naming it."""
    try:
        with safe_open(file, "pt", device=device) as f:
            yield f
    except SafetensorError as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e}); was it copied in full?") from None


def weight_files(path: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map")
        files = {name: path / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.exists():
                raise CheckpointError(f"{index}: shard {file.name} is listed but missing from {path}")
        return files
    single = path / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{path}: no model.safetensors and no model.safetensors.index.json")
    with open_weights(single) as f:
        return {name: single for name in f.keys()}


def build_model(config: dict, path: Path) -> nn.Module:
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture in ARCHITECTURES:
        return ARCHITECTURES[architecture](config)
    raise CheckpointError(f"{path / 'config.json'}: unknown architecture '{architecture}' "
                          f"(supported: {', '.join(sorted(ARCHITECTURES))})")


def hub_layout(name: str) -> str:
    """`model.language_model.layers.0...` -> `model.layers.0...`, `model.visual.*` -> `visual.*`."""
    for prefix, hub_prefix in LAYOUT_PREFIXES.items():
        if name.startswith(prefix):
            return hub_prefix + name[len(prefix):]
    return name


def fused_parts(model: nn.Module) -> Iterator[tuple[str, str, dict[str, int]]]:
    """(our tensor name, its parent's prefix, the parts' names and sizes) for each fused weight and bias:
    ("model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.", {"q_proj": ...})."""
    for name, module in model.named_modules():
        if isinstance(module, FusedLinear):
            parent = name.rpartition(".")[0]
            for param, _ in module.named_parameters(recurse=False):
                yield f"{name}.{param}", f"{parent}." if parent else "", module.parts


def to_checkpoint_names(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the checkpoint's tensors: each fused tensor split into its parts (views)."""
    state = dict(state)
    for name, prefix, parts in fused_parts(model):
        param = name.rpartition(".")[2]
        for part, tensor in zip(parts, state.pop(name).split(list(parts.values()))):
            state[f"{prefix}{part}.{param}"] = tensor
    return state


def load_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               prepare: Callable[[nn.Module], object] | None = None,
               weights_device: str | torch.device | None = None) -> nn.Module:
    """Load a checkpoint directory into our model, on `device` in `dtype`. Tensor names in the hub's
    layout or the newer transformers one both load.

    `prepare` runs on the model while it is still shapes only (on the meta device), e.g. FSDP2's `fully_shard`:
    each parameter is then allocated as this rank's shard and filled with only its own rows of the checkpoint's
    tensors (safetensors slices), so no rank ever holds the whole model (torchtitan's meta-device init).
    `weights_device`: where the parameters live if not on `device` (host memory under FSDP2's CPU offload; the
    buffers stay on `device`)."""
    path = Path(path)
    config = read_config(path)
    with torch.device("meta"):
        model = build_model(config, path).to(dtype)
    stored = stored_tensors(model, path)
    if prepare is not None:
        prepare(model)
    weights_device = weights_device or device
    model.to_empty(device=weights_device)
    model.tie_weights()  # to_empty gives tied parameters their own tensors (FSDP2's keep theirs)
    model.hf_config, model.source_dir = config, path  # what save_model writes back
    # Non-persistent buffers (rotary frequencies) were created on meta: rebuild them for real.
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers(device)
    fill_weights(model, stored, weights_device, lambda name, param: own_rows(param))
    return model.eval()


Pieces = tuple[torch.Tensor, int, int, list[tuple[int, int]]]


def fill_weights(model: nn.Module, stored: dict[str, tuple[Path, str]], device: str | torch.device,
                 pieces: Callable[[str, torch.Tensor], Pieces]) -> None:
    """Copy into each of `model`'s tensors its part of the checkpoint's, read as safetensors slices (on `device`).
    `pieces(name, tensor)` says what it holds: (the tensor to fill, the dim its pieces lie side by side along, the
    full tensor's size along it, the [start, end) ranges of the full tensor it holds, in order)."""
    fused = {name: (prefix, parts) for name, prefix, parts in fused_parts(model)}
    with ExitStack() as stack, torch.no_grad():
        files = {file: stack.enter_context(open_weights(file, str(device)))
                 for file in sorted({file for file, _ in stored.values()})}
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            local, dim, size, ranges = pieces(name, tensor)
            at = 0
            for start, end in ranges:
                for key, first, last in checkpoint_rows(name, size, fused, start, end):
                    file, stored_name = stored[key]
                    piece = files[file].get_slice(stored_name)
                    local.narrow(dim, at, last - first).copy_(piece[first:last] if dim == 0 else piece[:, first:last])
                    at += last - first


def stored_tensors(model: nn.Module, path: Path) -> dict[str, tuple[Path, str]]:
    """The checkpoint's tensor for each of the model's (in the hub's names: fused parts apart): its file and
    stored name. Names and shapes are checked from the files' headers, before any weight is read."""
    expected = {name: tensor.shape for name, tensor in to_checkpoint_names(model, model.state_dict()).items()}
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        expected.pop("lm_head.weight")
    names_by_file: dict[Path, list[str]] = {}
    for name, file in weight_files(path).items():
        names_by_file.setdefault(file, []).append(name)
    stored: dict[str, tuple[Path, str]] = {}
    for file, names in names_by_file.items():
        with open_weights(file) as f:
            for name in names:
                key = hub_layout(name)
                if key == "lm_head.weight" and tied:
                    continue
                if key not in expected:
                    raise CheckpointError(f"{file}: unexpected tensor '{name}' for {type(model).__name__}")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[key]):
                    raise CheckpointError(f"{file}: tensor '{name}' has shape {shape}, "
                                          f"the config says {tuple(expected[key])}")
                stored[key] = (file, name)
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise CheckpointError(f"{path}: tensors missing from the checkpoint: {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return stored


def own_rows(param: torch.Tensor) -> Pieces:
    """What this rank fills for a parameter (see `fill_weights`): all of a plain tensor; FSDP2's shard of a DTensor
    (rank r holds torch.chunk's piece r of dim 0: ceil(rows / ranks) rows, the last ones fewer)."""
    rows = param.shape[0]
    if not isinstance(param, DTensor):
        return param, 0, rows, [(0, rows)]
    if tuple(param.placements) != (Shard(0),):
        raise ValueError(f"only FSDP's dim-0 shards load in place, not {param.placements}")
    local = param.to_local()
    start = min(param.device_mesh.get_local_rank() * -(-rows // param.device_mesh.size()), rows)
    return local, 0, rows, [(start, start + local.shape[0])]


def checkpoint_rows(name: str, rows: int, fused: dict[str, tuple[str, dict[str, int]]], start: int, end: int
                    ) -> list[tuple[str, int, int]]:
    """The checkpoint tensors (hub names) and their [first, last) rows that make up rows [start, end) of our
    `rows`-row parameter `name`, in order: a fused parameter's parts are stacked along dim 0. (For a tensor cut
    along another dim, which is never fused, the range is the tensor's own along that dim.)"""
    param = name.rpartition(".")[2]
    parts = {name: rows}
    if name in fused:
        prefix, sizes = fused[name]
        parts = {f"{prefix}{part}.{param}": size for part, size in sizes.items()}
    pieces, offset = [], 0
    for key, size in parts.items():
        first, last = max(start, offset), min(end, offset + size)
        if first < last:
            pieces.append((key, first - offset, last - offset))
        offset += size
    return pieces


def checkpoint_dtype(config: dict) -> torch.dtype:
    """The dtype a config.json says its weights are stored in (`dtype`, or transformers 4's `torch_dtype`);
    float32 when it says none."""
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name.removeprefix("torch."))


def save_model(model: nn.Module, path: str | Path, *, max_shard_bytes: int = 5 * 2**30,
               state: dict[str, torch.Tensor] | None = None) -> None:
    """Write `model` as a Hugging Face checkpoint directory that `transformers` and `load_model` load.

    The config.json and the tokenizer / side files come from the directory the model was loaded
    from. Shards above `max_shard_bytes` get an index JSON. `state` (our tensor names) replaces the
    model's own weights, e.g. the fp32 master weights gathered from a sharded copy of it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config, source = model.hf_config, model.source_dir
    state = model.state_dict() if state is None else state
    state = {k: v.detach().contiguous().cpu() for k, v in to_checkpoint_names(model, state).items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards):
            save_file(shard, path / name, metadata={"format": "pt"})
        weight_map = {tensor: name for name, shard in zip(names, shards) for tensor in shard}
        total = sum(t.numel() * t.element_size() for t in state.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if source.resolve() != path.resolve():
        for name in SIDE_FILES:
            if (source / name).exists():
                shutil.copy(source / name, path / name)
