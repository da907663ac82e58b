"""The tensor-parallel sampler (spark.generation.tensor_parallel) and its weights from FSDP shards
(spark.distributed.resharding): how weights are cut, and the sharded sampler against the plain one on 2 and 4
gloo ranks."""

import json

import pytest
import torch

from spark.config import ConfigError
from spark.distributed.resharding import transfers
from spark.errors import UserError
from spark.generation.tensor_parallel import (
    Split,
    TensorParallel,
    check_divisible,
    load_sharded_model,
    split_of,
)
from spark.models import ModelConfig, load_model
from spark.models.tiny import make_tiny_checkpoint, make_tiny_vl_checkpoint
from spark.trainer import Trainer
from tests.trainer_utils import read_metrics, tiny_config, torchrun

CONFIG = ModelConfig(vocab_size=367, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=4)


def test_each_fused_part_is_cut_on_its_own_and_the_vocabulary_in_ceil_pieces():
    qkv = split_of("model.layers.1.self_attn.qkv_proj.weight", CONFIG, 2)
    assert qkv == Split(0, (64, 32, 32), 2)
    assert qkv.ranges(1) == [(32, 64), (80, 96), (112, 128)]  # the second half of q, of k and of v
    assert qkv.local_shape(torch.Size([128, 64]), 1) == (64, 64)
    assert split_of("model.layers.0.mlp.down_proj.weight", CONFIG, 4).ranges(3) == [(144, 192)]  # columns
    assert split_of("lm_head.weight", CONFIG, 4).ranges(3) == [(276, 367)]  # 92 rows each, the last 91
    assert split_of("model.norm.weight", CONFIG, 2) is None
    assert split_of("visual.blocks.0.mlp.gate_up_proj.weight", CONFIG, 2) is None  # the vision tower: replicated


def test_transfers_send_each_piece_the_rows_an_fsdp_shard_holds():
    qkv = Split(0, (64, 32, 32), 2)
    # FSDP rank 1 of 2 holds rows [64, 128): k and v; piece 1 takes their second halves, after its 32 q rows
    assert transfers(qkv, 1, (64, 128)) == [((80, 96), None, 32), ((112, 128), None, 48)]
    assert transfers(qkv, 0, (0, 64)) == [((0, 32), None, 0)]
    down = Split(1, (192,), 2)  # a column cut: every shard sends its rows, cut to the piece's columns
    assert transfers(down, 1, (32, 64)) == [((32, 64), (96, 192), 32)]
    assert transfers(down, 1, (64, 64)) == []


def test_the_pieces_read_from_a_checkpoint_are_its_slices(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ckpt", num_heads=8, num_kv_heads=4, tie=False)
    full = load_model(path)
    pieces = [load_sharded_model(path, TensorParallel(None, t, 2)).state_dict() for t in range(2)]  # no collective
    assert pieces[1]["model.layers.0.self_attn.qkv_proj.weight"].shape == (64, 64)  # 4 of 8 q heads, 2 of 4 kv
    assert pieces[1]["lm_head.weight"].shape == (183, 64)  # vocabulary rows 184-366
    for name, tensor in full.state_dict().items():
        split = split_of(name, full.config, 2)
        for t, piece in enumerate(pieces):
            expected = tensor if split is None else torch.cat(
                [tensor.narrow(split.dim, start, end - start) for start, end in split.ranges(t)], split.dim)
            assert torch.equal(piece[name], expected), (name, t)


def test_heads_and_mlp_that_do_not_divide_are_refused():
    check_divisible(CONFIG, 4)
    with pytest.raises(UserError, match="num_key_value_heads = 4 is not divisible by 8"):
        check_divisible(CONFIG, 8)


def run_group(tmp_path, size: int, vl: bool = False, **checkpoint) -> list[dict]:
    path = make_tiny_checkpoint(tmp_path / "ckpt", num_heads=8, num_kv_heads=4, **checkpoint)
    vl_path = make_tiny_vl_checkpoint(tmp_path / "vl", num_heads=8, num_kv_heads=4, seed=2) if vl else "-"
    torchrun(size, "tests/generation/dist_tensor_parallel.py", str(path), str(vl_path), str(tmp_path / "result.pt"))
    return torch.load(tmp_path / "result.pt", weights_only=False)


def check_vision_language(ranks: list[dict]) -> None:
    """Images through the replicated vision tower, text through the pieces: the plain model's tokens and
    log-probs, each rank's own rows out of the group's union."""
    for out in ranks:
        for mode in ("greedy", "seeded"):
            alone, together = out["vl"][mode]
            assert [[tokens for tokens, _ in group] for group in together] == \
                [[tokens for tokens, _ in group] for group in alone]
            assert max(abs(a - b) for x, y in zip(alone, together) for (_, p), (_, q) in zip(x, y)
                       for a, b in zip(p, q)) < 1e-5
        assert out["vl"]["copied_equal"]
    assert ranks[0]["vl"]["seeded"] != ranks[1]["vl"]["seeded"]


def check_group(ranks: list[dict], size: int) -> None:
    # Seeded draws can be equal for any T: every rank gets the full logits (equal to the plain model's up to
    # rounding) and the same uniforms, and rounding changes a draw only when a uniform falls within it of a step
    # of the CDF.
    for out in ranks:
        for mode in ("greedy", "seeded"):
            (plain_tokens, plain_logp), (sharded_tokens, sharded_logp) = out[mode]
            assert sharded_tokens == plain_tokens
            assert len(plain_tokens) == 6 and all(len(row) for row in plain_tokens)
            assert max(abs(a - b) for x, y in zip(plain_logp, sharded_logp) for a, b in zip(x, y)) < 1e-5
        assert out["verdict_logits"] < 1e-5  # the judge's scoring prefill: full logits from the pieces
        alone, together = out["union"]
        assert together == alone  # the group's union: each rank's own rows, drawn from its own seed
        assert out["copied_equal"]  # FSDP shards -> sampler shard: exactly the checkpoint's slices
        split = [numel for is_split, numel in out["split"].values() if is_split]
        replicated = [numel for is_split, numel in out["split"].values() if not is_split]
        # Counted during the copy and a rollout: the largest tensor is the largest piece of a split weight.
        assert out["largest"] == out["largest_parameter"] == max(max(split) // size, max(replicated))
        assert out["largest"] < max(split)
    # Ranks sampled different prompts in the union test, so the group did sample a union.
    assert ranks[0]["union"] != ranks[1]["union"]


@pytest.mark.slow
def test_two_ranks_sample_as_one_text_and_vision_language(tmp_path):
    ranks = run_group(tmp_path, 2, vl=True)
    check_group(ranks, 2)
    check_vision_language(ranks)


@pytest.mark.slow
def test_four_ranks_sample_as_one_with_an_untied_head(tmp_path):
    check_group(run_group(tmp_path, 4, tie=False), 4)


TIMED = ("time/", "tokens_per_s", "tflops/", "minutes")  # wall-clock figures, which differ between any two runs
ROUNDING = ("logp_mismatch", "recycled/logp_mismatch")  # sampler vs trainer log-probs: rounding alone, either way


@pytest.mark.slow
def test_a_spark_step_on_two_ranks_samples_and_trains_alike_with_t_2_and_t_1(run_files, tmp_path):
    """Every rank's rows drawn from its own seed, whether alone or in the union of its group: the same responses,
    rewards, recycled prompts and updates, so the same metrics up to fp32 rounding. The second step samples from
    the updated policy, copied from its FSDP shards into the sampler's pieces; the run then exports."""
    checkpoint, data = run_files
    config = tmp_path / "tiny.toml"
    config.write_text(f'[model]\npath = "{checkpoint}"\n[data]\ntrain_files = ["{data}"]\n')
    metrics = {}
    for size in (1, 2):
        out = tmp_path / f"t{size}"
        torchrun(2, "train.py", str(config), "model.mixed_precision=false", "data.prompts_per_step=4", "rollout.n=4",
                 "rollout.max_new_tokens=6", "rollout.batch_size=4", "run.max_steps=2", "optim.lr=1e-3",
                 "loss.micro_batch_tokens=64", "spark.recycle.balance_labels=false", "spark.recycle.content=\"cot\"",
                 "spark.recycle.reflection_cot_prob=1.0", f"run.out_dir={json.dumps(str(out))}",
                 f"rollout.tensor_parallel={size}")
        metrics[size] = read_metrics(out)
    exports = [load_model(tmp_path / f"t{size}" / "export").state_dict() for size in (1, 2)]
    assert exports[0].keys() == exports[1].keys()
    for key in exports[0]:  # the T = 2 run exports its gathered master weights, in their checkpoint's names
        assert (exports[0][key] - exports[1][key]).abs().max() < 1e-5, key
    for one, two in zip(metrics[1], metrics[2], strict=True):
        assert one["grad_norm"] > 0 and one["recycled/optimizer_steps"] == 1  # a policy update and a recycled one
        assert one.keys() == two.keys()
        for key in one:
            if key in ROUNDING:
                assert one[key] < 1e-5 and two[key] < 1e-5
            elif not key.startswith(TIMED):
                assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (one["step"], key)


def test_a_size_that_does_not_divide_the_heads_or_the_ranks_is_a_config_error(run_files, tmp_path):
    checkpoint, data = run_files
    with pytest.raises(ConfigError, match=r"^'rollout\.tensor_parallel' = 3: tensor parallelism over 3 ranks: the "
                                          r"model's num_key_value_heads = 2 is not divisible by 3$"):
        Trainer(tiny_config(checkpoint, data, tmp_path / "run", "rollout.tensor_parallel=3"))
    with pytest.raises(ConfigError, match=r"^'rollout\.tensor_parallel' = 2: tensor parallelism over 2 ranks: 2 must "
                                          r"divide the 1 ranks of a node \(and the 1 ranks in all\)$"):
        Trainer(tiny_config(checkpoint, data, tmp_path / "run", "rollout.tensor_parallel=2"))
