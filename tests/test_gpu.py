"""The CUDA path (run by `make gpu-check` on a device; skipped without CUDA): our model against transformers in
fp32 and bf16, packed == padded, KV-cached decode == full forward, greedy sampling == transformers generate,
CUDA-graph decode == eager, one bf16 SPARK step through the trainer's public entry point, and the model.offload
settings' updates against each other."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

import spark.config
from spark.distributed.groups import close_distributed, full_state_dict
from spark.generation.sampler import SamplingParams, generate
from spark.models import Packing, load_model
from spark.models.attention import KVCache, attention_backend, describe_attention, varlen_attn
from spark.models.qwen2 import Decoding
from spark.models.tiny import make_tiny_checkpoint
from spark.trainer import Trainer
from tests.dist_update import fixed_experiences
from tests.trainer_utils import QUESTIONS, make_run_files, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
BF16_TOLERANCE = 3e-2  # relative error of bf16 logits against fp32 ones (bf16 keeps 8 bits of mantissa)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Wide enough (head_dim 64, GQA 4:1) for the flash kernels' real code paths."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("gpu") / "ckpt", hidden_size=512, num_layers=4, num_heads=8,
                                num_kv_heads=2, intermediate_size=1024, vocab_size=2048, tie=False, seed=7)


@pytest.fixture(scope="module")
def transformers_fp32(checkpoint):
    return Qwen2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(CUDA).eval()


def token_batch(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 2048, (n,), generator=g).to(CUDA) for n in lengths]


def test_backend_is_a_flash_kernel():
    """With torch >= 2.10 (or flash-attn) bf16 attention must not fall back to SDPA."""
    print(describe_attention(CUDA, torch.bfloat16))
    if varlen_attn is not None:
        assert attention_backend(CUDA, torch.bfloat16) in ("flash-attn", "torch-varlen")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_match_transformers(checkpoint, transformers_fp32, dtype):
    ids = torch.stack(token_batch([37, 37]))
    ours = load_model(checkpoint, device=CUDA, dtype=dtype)
    with torch.no_grad():
        reference = transformers_fp32(ids).logits
        logits = ours(ids)
        if dtype == torch.float32:
            assert (logits - reference).abs().max() < 1e-3
        else:
            theirs = Qwen2ForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(CUDA).eval()(ids).logits
            assert relative_error(logits, reference) < BF16_TOLERANCE
            assert relative_error(logits, reference) < 2 * relative_error(theirs, reference) + 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_equals_padded(checkpoint, dtype):
    model = load_model(checkpoint, device=CUDA, dtype=dtype)
    lengths = [5, 130, 1, 64]
    sequences = token_batch(lengths, seed=1)
    with torch.no_grad():
        packed = model(torch.cat(sequences)[None], packing=Packing.from_lengths(lengths, CUDA))[0]
        padded = model(torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True))
    start = 0
    for i, n in enumerate(lengths):
        error = relative_error(packed[start:start + n], padded[i, :n])
        assert error < (1e-5 if dtype == torch.float32 else BF16_TOLERANCE), (i, error)
        start += n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kv_cached_decode_equals_full_forward(checkpoint, dtype):
    model = load_model(checkpoint, device=CUDA, dtype=dtype)
    prompts = token_batch([9, 40, 3], seed=2)
    lengths = torch.tensor([len(p) - 1 for p in prompts], device=CUDA)
    batch = torch.nn.utils.rnn.pad_sequence([p[:-1] for p in prompts], batch_first=True)
    with torch.inference_mode():
        cache = KVCache(4, 3, 64, 2, model.config.head_dim, device=CUDA, dtype=dtype)
        model(batch, decoding=Decoding(cache, torch.zeros_like(lengths), batch.shape[1]))
        last = torch.stack([p[-1] for p in prompts])
        decoded = model(last[:, None], lengths[:, None], decoding=Decoding(cache, lengths, int(lengths.max()) + 1))
        for b, prompt in enumerate(prompts):
            full = model(prompt[None])[0, -1]
            assert relative_error(decoded[b, 0], full) < (1e-5 if dtype == torch.float32 else BF16_TOLERANCE)


def test_greedy_sampler_matches_transformers_generate(checkpoint, transformers_fp32):
    model = load_model(checkpoint, device=CUDA)
    prompts = [p.tolist() for p in token_batch([6, 21, 13], seed=3)]
    rollouts = generate(model, prompts, SamplingParams(max_new_tokens=24, temperature=0.0))
    for prompt, tokens in zip(prompts, rollouts.tokens):
        out = transformers_fp32.generate(torch.tensor([prompt], device=CUDA), do_sample=False, max_new_tokens=24,
                                         min_new_tokens=24, pad_token_id=0, top_k=None, top_p=None,
                                         temperature=None)
        assert tokens == out[0, len(prompt):].tolist()


def test_cuda_graph_decode_equals_eager(checkpoint):
    model = load_model(checkpoint, device=CUDA)
    prompts = [p.tolist() for p in token_batch([6, 21, 13, 2], seed=4)]
    eager = generate(model, prompts, SamplingParams(max_new_tokens=20, temperature=0.0))
    graphs = generate(model, prompts, SamplingParams(max_new_tokens=20, temperature=0.0, compile=True))
    assert graphs.tokens == eager.tokens
    sampled = [generate(model, prompts, SamplingParams(max_new_tokens=20, compile=c), seed=11) for c in (False, True)]
    assert sampled[0].tokens == sampled[1].tokens


@pytest.mark.skipif(spark.config.tomllib is None, reason="config overrides need Python 3.11 or tomli "
                    "(gpu_check's train section runs a bf16 step without them)")
def test_one_bf16_spark_step(tmp_path):
    checkpoint, data = make_run_files(tmp_path)
    out = tmp_path / "run"
    Trainer(tiny_config(checkpoint, data, out, "model.mixed_precision=true", "run.max_steps=1",
                        "rollout.temperature=1.5")).train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert math.isfinite(metrics[0]["loss"]) and math.isfinite(metrics[0]["grad_norm"])
    # The export keeps the checkpoint's dtype (fp32 here), not the bf16 of the sampler's copy.
    saved = lambda path: {t.dtype for t in load_file(path / "model.safetensors").values()}
    assert saved(out / "export") == saved(checkpoint) == {torch.float32}


@pytest.mark.skipif(spark.config.tomllib is None, reason="config overrides need Python 3.11 or tomli")
def test_offload_settings_train_the_same_weights(tmp_path):
    """model.offload = "all" (FSDP2's CPUOffloadPolicy: the shards on the host, AdamW stepping on the CPU) and
    "optimizer" end two updates and a checkpoint with the weights of "none", to fp32 rounding (the CPU's AdamW
    rounds as it does)."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", vocab_size=401, tie=False)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    close_distributed()  # "all" starts the process group with the host collectives its gradient norm needs
    weights = {}
    for offload in ("all", "optimizer", "none"):
        trainer = Trainer(tiny_config(checkpoint, data, tmp_path / offload, f"model.offload={offload}",
                                      "model.mixed_precision=true"))
        for _ in range(2):
            trainer.update(fixed_experiences())
        trainer.save()
        weights[offload] = {k: v.cpu() for k, v in full_state_dict(trainer.policy).items()}
        if offload == "all":
            assert all(p.to_local().device.type == "cpu" for p in trainer.policy.parameters())
        del trainer
    for name, tensor in weights["none"].items():
        torch.testing.assert_close(weights["optimizer"][name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(weights["all"][name], tensor)
