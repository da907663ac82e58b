"""The Qwen2 decoder against transformers, and checkpoint I/O."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from spark.data.rows import Sample
from spark.generation.chat import image_inputs
from spark.models import CheckpointError, Packing, load_model, save_model
from spark.models.tiny import make_tiny_checkpoint
from spark.rl.packing import NoLossSequence, pack
from spark.rl.rollout import Experience


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


def test_scored_positions_give_the_same_logprobs_and_gradients(checkpoint):
    """The update scores only response positions: the same log-probs, and the same gradients, as scoring the whole
    stream and indexing it."""
    model = load_model(checkpoint)
    generator = torch.Generator().manual_seed(0)
    stream, targets = torch.randint(0, 300, (2, 1, 30), generator=generator)
    packing, scored = Packing.from_lengths([12, 18]), torch.tensor([3, 4, 5, 20, 21, 29])
    weights = torch.rand(len(scored), generator=generator)
    results = []
    for select in (True, False):
        model.zero_grad()
        logp, entropy = model.logprobs(stream, targets[0, scored] if select else targets, packing=packing,
                                       scored=scored if select else None)
        logp, entropy = (logp, entropy) if select else (logp[scored], entropy[scored])
        (logp * weights).sum().backward()
        results.append((logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (logp, entropy, grads), (full_logp, full_entropy, full_grads) = results
    assert torch.allclose(logp, full_logp, atol=1e-6) and torch.allclose(entropy, full_entropy, atol=1e-6)
    assert all(torch.allclose(g, full, atol=1e-6) for g, full in zip(grads, full_grads))


def shared_and_separate(model, prompts: list[list[int]], responses: list[list[list[int]]], images=None):
    """Response log-probs and parameter gradients of the same experiences packed twice: by `pack`, each prompt
    once with its responses continuing it; and by hand, each response in one sequence with its own copy of the
    prompt. The query and key weights are scaled up, so that attention is peaked (at random init it is near
    uniform and blind to positions)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight.mul_(20)
    images = images or [{}] * len(prompts)
    experiences = [Experience(Sample("q", "1"), prompt, response, "", 0.0, False, images=images[g], group=g)
                   for g, (prompt, group) in enumerate(zip(prompts, responses)) for response in group]
    batch = pack(experiences, no_loss=NoLossSequence.for_model(model), task_weights={"policy": 1.0}, drop_truncated=False)
    scored = batch.mask > 0
    sequences = [e.prompt_ids + e.response_ids[:-1] for e in experiences]
    starts = torch.tensor([0] + [len(s) for s in sequences]).cumsum(0).tolist()
    separate = (torch.tensor([sum(sequences, [])]), torch.tensor(sum((e.response_ids for e in experiences), [])),
                Packing.from_lengths([len(s) for s in sequences]),
                torch.tensor([start + len(e.prompt_ids) - 1 + j for start, e in zip(starts, experiences)
                              for j in range(len(e.response_ids))]),
                image_inputs([e.images for e in experiences], "cpu"))
    results = []
    for stream, targets, packing, positions, inputs in (
            (batch.input_ids, batch.targets[scored], batch.packing, batch.response_index[scored], batch.images),
            separate):
        model.zero_grad()
        logp, _ = model.logprobs(stream, targets, packing=packing, scored=positions, **inputs)
        (logp * torch.linspace(0.5, 1.5, len(logp))).sum().backward()
        results.append((stream.shape[1], logp.detach(),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    return results


def test_a_prompt_packed_once_for_its_responses_gives_the_same_logprobs_and_gradients(checkpoint):
    model = load_model(checkpoint)
    prompts = [[5, 6, 7, 8], [9, 10]]
    responses = [[[11, 12, 13], [14], [15, 16]], [[17, 18, 19, 20]]]
    (shared_len, shared, shared_grads), (separate_len, separate, separate_grads) = \
        shared_and_separate(model, prompts, responses)
    assert (shared_len, separate_len) == (4 + 2 + 1 + 2 + 3, 3 * 4 + 2 + 1 + 2 + 3)
    assert torch.allclose(shared, separate, atol=1e-5)
    assert all((a - b).abs().max() < 1e-4 * b.abs().max() for a, b in zip(shared_grads, separate_grads))


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
