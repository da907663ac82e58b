"""The memory plan against what the trainer and the model really allocate on CPU, and its verdicts on the
shipped configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spark import plan as planning
from spark.config import TrainConfig, load_config
from spark.data.images import ImageConfig
from spark.generation.sampler import SamplingParams, generate
from spark.models import Packing, load_model
from spark.models.attention import KVCache
from spark.models.checkpoint import CheckpointError, read_config
from spark.models.tiny import make_tiny_checkpoint, make_tiny_vl_checkpoint
from spark.plan import KNOWN_CONFIGS, Shapes, fitting_settings, plan_for
from tests.trainer_utils import QUESTIONS, tiny_config

ROOT = Path(__file__).resolve().parents[1]
# The CPU's SDPA keeps each packed sequence's (or window's) output, GQA's repeated keys and, for small windows,
# the attention weights, besides what the GPU kernels keep: the activation tests below check that what autograd
# saves lies in [plan, ACTIVATION_MARGIN x plan].
ACTIVATION_MARGIN = 1.2


def saved_bytes(run, model: torch.nn.Module) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes, weights excluded, each storage once."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(seen.values())


def test_known_checkpoints_have_their_published_sizes():
    counts = {name: Shapes.from_hf(config).count() for name, config in KNOWN_CONFIGS.items()}
    assert counts == {"Qwen2.5-7B-Instruct": 7_615_616_512, "Qwen2.5-VL-7B-Instruct": 8_292_166_656,
                      "Qwen2.5-VL-32B-Instruct": 33_452_718_336}


def test_shards_gradients_optimizer_state_and_offload_exactly(tmp_path):
    """Two ranks of the real trainer with model.offload = "optimizer": rank 0 holds exactly the plan's bytes (dims
    chosen so that FSDP's ceil(rows / 2) split is uneven: vocab 401), rank 1 at most that; the sampler's weights
    are freed during the update and AdamW's state after it, as the plan's phases say; and the largest
    reduce-scatter's unsharded gradients and their flat copy are the plan's."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=401, intermediate_size=97, tie=False)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    overrides = ["model.mixed_precision=false", "model.offload=optimizer"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                    "tests/dist_plan.py", str(checkpoint), str(data), str(tmp_path / "run"), str(tmp_path / "r.json"),
                    *overrides], check=True, cwd=ROOT, env=env, timeout=300)
    ranks = json.loads((tmp_path / "r.json").read_text())
    config = tiny_config(checkpoint, data, tmp_path / "run", *overrides)
    plan = plan_for(config, read_config(checkpoint), world_size=2, gpu_memory_gb=1)
    for item in ("parameter shards", "reference shards", "gradient shards", "AdamW state", "sampler weights",
                 "unsharded gradients"):
        assert ranks[0][item] == plan.items[item], item
        assert ranks[1][item] <= plan.items[item], item
    assert ranks[1]["parameter shards"] < ranks[0]["parameter shards"]  # the uneven split is exercised
    assert plan.phase("sampler weights") == "rollout" and plan.phase("AdamW state") == "update"
    for rank in ranks:
        assert rank["sampler weights during the update"] == 0 and rank["AdamW state after the update"] == 0
    assert plan.host == plan.items["AdamW state"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_decoder_activations_within_margin(tmp_path, dtype, checkpointing):
    path = make_tiny_checkpoint(tmp_path / "c", hidden_size=128, intermediate_size=384, num_heads=4, num_kv_heads=2,
                                num_layers=3, tie=False)
    model = load_model(path, dtype=dtype).train()
    model.model.activation_checkpointing = checkpointing
    lengths = [70, 130, 40]
    ids, targets = torch.randint(0, 300, (2, 1, sum(lengths)))
    measured = saved_bytes(lambda: model.logprobs(ids, targets, packing=Packing.from_lengths(lengths)), model)
    element = torch.finfo(dtype).bits // 8
    planned = planning.decoder_activation_bytes(model.config, sum(lengths), element, checkpointing)
    if checkpointing:  # the one block recomputed in backward is not alive in forward
        block = planning.block_activation_bytes(128, 64, 384, 4, element) * sum(lengths)
        planned -= block
    assert planned <= measured <= ACTIVATION_MARGIN * planned, (measured, planned)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_vision_activations_within_margin(tmp_path, checkpointing):
    model = load_model(make_tiny_vl_checkpoint(tmp_path / "vl", vision_depth=4, vision_hidden_size=64,
                                               vision_heads=2)).train()
    grid = torch.tensor([[1, 8, 12], [1, 4, 4]])
    patches = int(grid.prod(-1).sum())
    vision = model.visual.config
    pixels = torch.randn(patches, vision.in_channels * vision.temporal_patch_size * vision.patch_size**2)
    measured = saved_bytes(lambda: model.visual(pixels, grid, checkpointing), model)
    planned = planning.vision_activation_bytes(vision, patches, 4, checkpointing)
    if checkpointing:
        planned -= planning.vision_block_activation_bytes(vision, 4) * patches
    assert planned <= measured <= ACTIVATION_MARGIN * planned, (measured, planned)


def test_vision_checkpointing_keeps_the_gradients(tmp_path):
    model = load_model(make_tiny_vl_checkpoint(tmp_path / "vl"))
    grid = torch.tensor([[1, 8, 8]])
    vision = model.visual.config
    pixels = torch.randn(64, vision.in_channels * vision.temporal_patch_size * vision.patch_size**2)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.visual(pixels, grid, checkpointing).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.visual.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_kv_cache_formula_is_what_the_sampler_allocates(tmp_path, monkeypatch):
    model = load_model(make_tiny_checkpoint(tmp_path / "c", num_layers=3, num_kv_heads=2, tie=False))
    allocated = []

    class Recording(KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            allocated.append(self.nbytes)

    monkeypatch.setattr("spark.generation.sampler.KVCache", Recording)
    prompts = [[5] * 7, [6] * 11, [7] * 3]
    generate(model, prompts, SamplingParams(max_new_tokens=9, temperature=0.0))
    assert allocated == [planning.kv_cache_bytes(model.config, 3, 11 + 9, 4)]


def known_plan(config_file: str, gpus: int, memory: float, *overrides: str):
    config = load_config(TrainConfig, ROOT / "configs" / config_file, list(overrides))
    model_config, _ = planning.read_model_config(config.model.path)
    return config, model_config, plan_for(config, model_config, gpus, memory)


def test_verdicts_on_the_shipped_configs():
    """The README's table: which configs fit 8 GPUs of 80 and 141 GB, and what makes them fit."""
    for name in ("7b.toml", "vl7b.toml"):  # their rollout.batch_size is what fits 80 GB cards
        for memory in (80, 141):
            assert known_plan(name, 8, memory)[2].fits
    # Each prompt prefilled once, in chunks; the cache is sized for the authors' 8192-token prompt limit: 128 rows
    # (all a rank samples) fit 141 GB but not 80 GB, where 64 rows do.
    assert known_plan("7b.toml", 8, 141, "rollout.batch_size=256")[2].fits
    assert not known_plan("7b.toml", 8, 80, "rollout.batch_size=256")[2].fits
    config, model_config, plan = known_plan("7b.toml", 8, 80, "rollout.batch_size=512", "data.prompts_per_step=512")
    assert not plan.fits
    assert fitting_settings(config, model_config, 8, 80) == ["rollout.batch_size=64"]
    # The sampler's bf16 copy alone is 62 GB of the 32B: on 80 GB cards a KV cache of 8 rows fits beside it only
    # once the copy is cut over a tensor-parallel group; on 141 GB cards, once it is freed for the update.
    config, model_config, plan = known_plan("vl32b.toml", 16, 80)
    assert plan.items["sampler weights"] / planning.GB == pytest.approx(62.3, abs=0.1)
    assert not known_plan("vl32b.toml", 16, 80, "rollout.batch_size=8", "model.offload=all")[2].fits
    config, model_config, _ = known_plan("vl32b.toml", 8, 141)
    assert fitting_settings(config, model_config, 8, 141) == ['model.offload="optimizer"', "rollout.batch_size=16"]


@pytest.mark.parametrize("config_file, gpus, memory, settings", [
    ("vl32b.toml", 8, 80, ['model.offload="all"', "rollout.batch_size=8", "rollout.tensor_parallel=8"]),
    ("vl32b.toml", 16, 80, ['model.offload="optimizer"', "rollout.batch_size=8", "rollout.tensor_parallel=2"]),
    ("vl32b.toml", 32, 80, ['model.offload="optimizer"', "rollout.batch_size=8", "rollout.tensor_parallel=2"]),
    ("vl7b.toml", 8, 40, ['model.offload="optimizer"', "rollout.tensor_parallel=4", "loss.micro_batch_tokens=8192"]),
    ("vl7b.toml", 4, 80, ['model.offload="optimizer"']),
    ("7b.toml", 1, 141, ['model.offload="all"']),
    ("7b.toml", 1, 80, ['model.offload="all"']),
])
def test_offload_makes_the_smaller_machines_fit(config_file, gpus, memory, settings):
    """The README's memory table: configs that do not fit as shipped, and the cheapest settings that make them fit
    (earlier changes that a later one made unneeded left out again)."""
    config, model_config, plan = known_plan(config_file, gpus, memory)
    assert not plan.fits
    assert fitting_settings(config, model_config, gpus, memory) == settings
    assert known_plan(config_file, gpus, memory, *(s.replace('"', "") for s in settings))[2].fits


def test_offload_moves_the_training_state_between_phases():
    """"optimizer": AdamW's state is on the GPU during the update only, the sampler's copy during the rollout only;
    "all": the shards and AdamW's state are on the host (the gathered units grow by two fp32 shards)."""
    none, optimizer, everything = (known_plan("7b.toml", 1, 141, f"model.offload={o}")[2]
                                   for o in ("none", "optimizer", "all"))
    assert optimizer.items == none.items
    assert optimizer.resident == none.resident - none.items["AdamW state"] - none.items["sampler weights"]
    assert optimizer.update == none.update + none.items["AdamW state"]
    assert optimizer.rollout == none.rollout + none.items["sampler weights"]
    assert optimizer.host == none.items["AdamW state"] and none.host == 0
    moved = ("parameter shards", "AdamW state", "gradient shards", "reference shards")
    assert all(everything.items[k] == 0 for k in moved) and everything.resident == 0
    assert everything.host == sum(none.items[k] for k in moved)
    shapes = Shapes.from_hf(KNOWN_CONFIGS["Qwen2.5-7B-Instruct"])
    largest = max(shapes.largest_block(), shapes.largest_outside_blocks())
    assert everything.items["gathered parameters"] == none.items["gathered parameters"] + 2 * largest * 4


def test_parts_outside_the_blocks_are_units_of_their_own():
    """The embedding, the head, the patch embedding and the merger each form a unit (untied), so the root keeps the
    final norms only; a tied embedding stays in the root."""
    units = Shapes.from_hf(KNOWN_CONFIGS["Qwen2.5-VL-7B-Instruct"]).unit_sizes()
    assert {u for u in units if not planning.is_block(u)} == {"root", "model.embed_tokens", "lm_head",
                                                              "visual.patch_embed", "visual.merger"}
    assert units["root"] == 3584  # model.norm
    tied = Shapes.from_hf({**KNOWN_CONFIGS["Qwen2.5-7B-Instruct"], "tie_word_embeddings": True}).unit_sizes()
    assert "model.embed_tokens" not in tied and tied["root"] == 152064 * 3584 + 3584


def test_cli_prints_the_plan_and_a_json_line(capsys):
    planning.main([str(ROOT / "configs" / "7b.toml"), "--gpus", "8", "--gpu-memory", "141"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["fits"] is True and summary["total_gb"] == pytest.approx(
        known_plan("7b.toml", 8, 141)[2].total / planning.GB, abs=0.01)
    assert any(line.startswith("KV cache") for line in lines)


def test_unknown_checkpoint_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json.*not one of the known"):
        planning.read_model_config(tmp_path / "Mystery-1B")


def test_image_patches_follow_the_config():
    vision = Shapes.from_hf(KNOWN_CONFIGS["Qwen2.5-VL-7B-Instruct"]).vision
    config = load_config(TrainConfig, None, ["data.max_pixels=1003520"])
    assert planning.image_patches(config, vision, ImageConfig.max_pixels) == 1003520 // 196


def test_compiled_sampler_keeps_its_cache_resident():
    """rollout.compile keeps the sampler's static cache between calls: the same bytes, counted as resident."""
    eager, compiled = known_plan("7b.toml", 8, 80)[2], known_plan("7b.toml", 8, 80, "rollout.compile=true")[2]
    assert compiled.items["KV cache"] == 0
    assert compiled.items["static KV cache"] == eager.items["KV cache"]  # 2048 + 768 tokens: a multiple of 256
    assert compiled.resident == eager.resident + eager.items["KV cache"]


@pytest.mark.parametrize("vision, tensor_parallel", [(False, 1), (False, 2), (False, 4), (True, 2)])
def test_the_sampler_weights_are_the_tensor_parallel_pieces(tmp_path, vision, tensor_parallel):
    """Rank 0's pieces of a tensor-parallel sampler, as spark.generation.tensor_parallel builds them, hold the
    plan's sampler weights (a vocabulary that does not divide, an untied head, a vision tower replicated)."""
    from spark.generation.tensor_parallel import TensorParallel, sharded_skeleton

    path = make_tiny_vl_checkpoint(tmp_path / "c", tie=False) if vision else \
        make_tiny_checkpoint(tmp_path / "c", vocab_size=403, num_heads=4, num_kv_heads=4, tie=False)
    model = sharded_skeleton(path, TensorParallel(None, 0, tensor_parallel), device="cpu", dtype=torch.bfloat16)
    held = sum(p.untyped_storage().nbytes() for p in {id(p): p for p in model.parameters()}.values())
    assert held == Shapes.from_hf(read_config(path)).sampler_numel(tensor_parallel) * 2
