"""Model FLOPs against a hand count, and MFU."""

import pytest

from spark.distributed.flops import FlopModel, flop_metrics, peak_tflops, step_flops, throughput
from spark.plan import KNOWN_CONFIGS

# hidden 8, MLP 16, 2 layers, 2 heads of 4 (1 KV head), vocab 10, untied head.
TINY = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False}


def test_tiny_model_by_hand():
    model = FlopModel.from_hf(TINY)
    # per layer: q|k|v 8 x (8 + 4 + 4) = 128, o 8 x 8 = 64, gate|up 8 x 32 = 256, down 16 x 8 = 128 -> 576;
    # two layers and the head 10 x 8 = 80 (the embedding table is a lookup).
    assert model.matmul_params == 2 * 576 + 80 == 1232
    # 3 tokens: 2 N x 3 = 7392, attention 4 L d (1 + 2 + 3) = 4 x 2 x 8 x 6 = 384.
    assert model.sequence(3) == 7392 + 384
    flops = step_flops(model, updated=[(2, [1]), (1, [2])], generated=[(2, [1]), (1, [2])], reference=True)
    assert flops == {"update": 6 * 7776, "reference": 2 * 7776, "rollout": 2 * 7776}
    # Two 1-token responses to one 2-token prompt packed once: the prompt's 2 tokens once, and the two
    # responses' third tokens, each attending to 3 keys: 2 x (3 x 2 N / 3 + 4 L d 3).
    shared = step_flops(model, updated=[(2, [1, 1])], generated=[(2, [1, 1])], reference=False)
    assert shared["update"] == 3 * (model.sequence(2) + 2 * (2 * 1232 + 4 * 2 * 8 * 3)) == 3 * shared["rollout"]
    two_epochs = step_flops(model, updated=[(3, [0])], generated=[], reference=False, ppo_epochs=2)
    assert two_epochs["update"] == (3 * 2 + 1) * 7776 and two_epochs["reference"] == 0


def test_tied_head_counts_once():
    model = FlopModel.from_hf({**TINY, "tie_word_embeddings": True})
    assert model.matmul_params == 1232


def test_seven_b_is_six_n_per_trained_token():
    """At short context the update of Qwen2.5-7B is ~6 x 7.07B FLOPs per token (N: the 7.62B parameters
    less the 0.55B embedding table)."""
    model = FlopModel.from_hf(KNOWN_CONFIGS["Qwen2.5-7B-Instruct"])
    assert model.matmul_params == 7_615_616_512 - 152064 * 3584 - 28 * (2 * 3584 + 3584 + 2 * 512) - 3584
    per_token = step_flops(model, updated=[(1, [0])], generated=[], reference=False)["update"]
    assert per_token == pytest.approx(6 * model.matmul_params, rel=1e-4)  # + 12 L d of attention


def test_vision_tower_by_hand():
    vision = {"depth": 2, "hidden_size": 4, "intermediate_size": 8, "num_heads": 2, "out_hidden_size": 8,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
              "fullatt_block_indexes": [1], "in_chans": 3}
    model = FlopModel.from_hf({**TINY, "architectures": ["Qwen2_5_VLForConditionalGeneration"],
                               "image_token_id": 9, "vision_config": vision})
    # blocks: qkv 4 x 12 + proj 4 x 4 + gate|up 4 x 16 + down 8 x 4 = 160 each, two; patch embedding 4 x 1176.
    assert model.vision_patch_params == 2 * 160 + 4 * 1176
    assert model.vision_merger_params == 16 * 16 + 16 * 8
    # 32 patches: windows of (56 / 14)^2 = 16 patches in block 0, the whole image in block 1.
    expected = 2 * model.vision_patch_params * 32 + 2 * model.vision_merger_params * 32 / 4 + 4 * 4 * (16 + 32) * 32
    assert model.images([32]) == expected


def test_mfu_against_the_device_table():
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    # Not the SXM part's peak for the PCIe and NVL parts, nor any for a chip the table does not name.
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA H100 NVL") == 835.0
    assert peak_tflops("NVIDIA H200 NVL") == 835.0 and peak_tflops("NVIDIA GH200 480GB") is None
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("NVIDIA A100 80GB PCIe") == 312.0
    assert peak_tflops("NVIDIA H200", configured=500.0) == 500.0
    assert peak_tflops("cpu") is None
    assert throughput(989e12 * 2, 4.0, 989.0) == pytest.approx({"tflops": 494.5, "mfu": 0.5})
    assert throughput(1e12, 1.0, None) == {"tflops": 1.0}


def test_step_metrics_by_hand():
    """Two GPUs: 12e12 update + 4e12 reference FLOPs over 2 + 2 s, 8e12 rollout FLOPs over 1 s, a 10 s step."""
    totals = {"update": 12e12, "reference": 4e12, "rollout": 8e12, "trained_tokens": 4e3, "sampled_tokens": 8e3}
    seconds = {"time/update": 2.0, "time/reference": 2.0, "time/rollout": 1.0, "time/step": 10.0}
    metrics = flop_metrics(totals, seconds, gpus=2, peak=4.0)
    assert metrics == pytest.approx({
        "flops_per_token/update": 3e9, "flops_per_token/reference": 1e9, "flops_per_token/rollout": 1e9,
        "tflops/update": 2.0, "mfu/update": 0.5, "tflops/rollout": 4.0, "mfu/rollout": 1.0,
        "tflops/step": 1.2, "mfu/step": 0.3})
