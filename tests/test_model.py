"""The Qwen2 decoder against transformers, and checkpoint I/O."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from spark.models import CheckpointError, Packing, load_model, save_model
from spark.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def checkpoint(request, tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", tie=request.param, seed=1)


def hf_logits(path, input_ids):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_match_transformers(tmp_path, seed):
    path = make_tiny_checkpoint(tmp_path / "c", tie=seed % 2 == 0, seed=seed, num_heads=4, num_kv_heads=seed % 2 + 1)
    input_ids = torch.randint(0, 300, (2, 23), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = load_model(path)(input_ids)
    assert (ours - hf_logits(path, input_ids)).abs().max() < 1e-4


def test_save_round_trip_loads_in_transformers(checkpoint, tmp_path):
    model = load_model(checkpoint)
    save_model(model, tmp_path / "out")
    input_ids = torch.randint(0, 300, (1, 15))
    with torch.no_grad():
        ours = load_model(tmp_path / "out")(input_ids)
        reference = model(input_ids)
    assert (ours - reference).abs().max() == 0
    assert (hf_logits(tmp_path / "out", input_ids) - reference).abs().max() < 1e-4
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_packed_equals_padded_equals_one_by_one(checkpoint):
    model = load_model(checkpoint)
    lengths = [5, 11, 3]
    sequences = [torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    with torch.no_grad():
        one_by_one = [model(s[None])[0] for s in sequences]
        packed = model(torch.cat(sequences)[None], packing=Packing.from_lengths(lengths))[0]
        padded = model(torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True))
    for i, (start, n) in enumerate(zip([0, 5, 16], lengths)):
        assert (packed[start:start + n] - one_by_one[i]).abs().max() < 1e-5
        assert (padded[i, :n] - one_by_one[i]).abs().max() < 1e-5


def test_sharded_checkpoint_loads(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "sharded", max_shard_size="60KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    input_ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert (load_model(path)(input_ids) - hf_logits(path, input_ids)).abs().max() < 1e-4


def test_save_shards_above_limit(checkpoint, tmp_path):
    model = load_model(checkpoint)
    save_model(model, tmp_path / "out", max_shard_bytes=50_000)
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) >= 2
    input_ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert (load_model(tmp_path / "out")(input_ids) - model(input_ids)).abs().max() == 0


def test_missing_shard_names_the_file(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "sharded", max_shard_size="60KB")
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(path)


def test_shape_mismatch_names_file_and_tensor(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "c")
    weights = load_file(path / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight.*\(3, 3\)"):
        load_model(path)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*unknown architecture 'LlamaForCausalLM'"):
        load_model(path)


def test_bf16_load(checkpoint):
    model = load_model(checkpoint, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 300, (1, 7))).float()).all()
