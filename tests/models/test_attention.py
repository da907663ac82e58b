"""Our calls into the GPU attention kernels, checked on CPU against references of their documented
semantics (tests/models/attention_references.py) substituted for the real functions."""

from __future__ import annotations

import pytest
import torch

from spark.models import Packing, load_model
from spark.models import attention as attn
from spark.models.attention import KVCache, TorchVarlen
from spark.models.qwen2 import Decoding
from spark.models.tiny import make_tiny_checkpoint, make_tiny_vl_checkpoint
from tests.models import attention_references as ref

LENGTHS = [5, 1, 9, 3]  # packed sequences, one of a single token
VARLEN_FORMS = {"is_causal": ref.varlen_attn_is_causal, "window_size": ref.varlen_attn_window,
                "enable_gqa": ref.varlen_attn_gqa}
BACKENDS = ["flash-attn"] + [f"torch-varlen:{form}" for form in VARLEN_FORMS]


@pytest.fixture
def backend(request, monkeypatch):
    """Route every attention call through the named backend, its kernels replaced by the references."""
    name = request.param
    monkeypatch.setattr(attn, "flash_attn_varlen_func", ref.flash_attn_varlen_func)
    monkeypatch.setattr(attn, "flash_attn_with_kvcache", ref.flash_attn_with_kvcache)
    if name.startswith("torch-varlen"):
        monkeypatch.setattr(attn, "torch_varlen", TorchVarlen.wrap(VARLEN_FORMS[name.split(":")[1]]))
    chosen = name.split(":")[0]
    monkeypatch.setattr(attn, "attention_backend", lambda device, dtype: chosen if dtype in attn.HALF else attn.SDPA)
    return name


def qkv(n: int, heads: int = 4, kv_heads: int = 2, dim: int = 8, dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, h, dim, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads)]


def test_backend_choice(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(attn, "flash_attn_varlen_func", ref.flash_attn_varlen_func)
    monkeypatch.setattr(attn, "torch_varlen", TorchVarlen.wrap(ref.varlen_attn_gqa))
    assert attn.attention_backend(cuda, torch.bfloat16) == "flash-attn"
    assert attn.attention_backend(cuda, torch.float32) == "sdpa"  # the flash kernels take fp16 / bf16 only
    assert attn.attention_backend(cpu, torch.bfloat16) == "sdpa"
    monkeypatch.setattr(attn, "flash_attn_varlen_func", None)
    assert attn.attention_backend(cuda, torch.float16) == "torch-varlen"
    assert attn.describe_attention(cuda, torch.bfloat16) == (
        "attention: torch-varlen (torch.nn.attention.varlen.varlen_attn: window_size form, enable_gqa, decode "
        "with seqused_k); compute dtype: bfloat16")
    monkeypatch.setattr(attn, "torch_varlen", None)
    assert attn.attention_backend(cuda, torch.bfloat16) == "sdpa"
    for device, dtype in ((cuda, torch.bfloat16), (cpu, torch.float32)):
        assert attn.describe_attention(device, dtype) == (
            f"attention: sdpa (packed sequences padded, one call per length bucket); compute dtype: {str(dtype)[6:]}")


def test_varlen_signature_forms():
    forms = {name: TorchVarlen.wrap(fn) for name, fn in VARLEN_FORMS.items()}
    assert [(f.is_causal_flag, f.gqa, f.seqused_k, f.decodes) for f in forms.values()] == [
        (True, False, False, False), (False, False, False, False), (False, True, True, True)]
    if attn.varlen_attn is not None:  # the installed torch's own signature is one of the three
        installed = TorchVarlen.wrap(attn.varlen_attn)
        assert (installed.is_causal_flag, installed.gqa) in [(True, False), (False, False), (False, True)]


# (lengths, continues): plain sequences; and two prompts, the first with two responses continuing it (one
# of a single token), the second with one.
PACKINGS = {"plain": (LENGTHS, None), "shared": ([4, 3, 1, 2, 5], [-1, 0, 0, -1, 3])}
CASES = [(name, causal) for name in PACKINGS for causal in (True, False) if causal or name == "plain"]


def reference_packed(q, k, v, packing: Packing, causal: bool) -> torch.Tensor:
    """fp32 reference: each sequence's queries against its keys (a continuation's prefix first)."""
    bounds = packing.cu_seqlens.tolist()
    continues = packing.continues or [-1] * (len(bounds) - 1)
    outs = []
    for s, prefix in enumerate(continues):
        rows = list(range(bounds[prefix], bounds[prefix + 1])) if prefix >= 0 else []
        keys = rows + list(range(bounds[s], bounds[s + 1]))
        outs.append(ref.attend(q[bounds[s]:bounds[s + 1]], k[keys], v[keys], causal))
    return torch.cat(outs)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("packed, causal", CASES)
def test_packed_attention_against_reference(backend, packed, causal):
    lengths, continues = PACKINGS[packed]
    q, k, v = qkv(sum(lengths))
    packing = Packing.from_lengths(lengths, continues=continues)
    out = attn.packed_attention(q, k, v, packing, causal=causal)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert (out.float() - reference_packed(q, k, v, packing, causal)).abs().max() < 2e-2


# Lengths that fall in several buckets of padded_plan (queries 1, 2, 3-4, 5-8, 9-16; keys likewise): two prompts,
# the first continued by four responses of 1 to 9 tokens, the second by one, and a plain sequence of 12.
BUCKETED = ([6, 1, 3, 9, 2, 3, 4, 12], [-1, 0, 0, 0, 0, -1, 5, -1])


@pytest.mark.parametrize("causal", [True, False])
def test_padded_attention_in_buckets_matches_the_reference_with_gradients(causal):
    """The SDPA path (CPU, and accelerators without a flash kernel): sequences padded in length buckets, one SDPA
    call each, outputs back in stream order; values and gradients equal one sequence at a time."""
    lengths, continues = BUCKETED if causal else (LENGTHS, None)
    packing = Packing.from_lengths(lengths, continues=continues)
    plan = packing.padded(causal)
    assert len(plan.buckets) > 2 and packing.padded(causal) is plan  # several buckets, planned once
    padded = sum(b.mask.shape[0] * b.mask.shape[2] for b in plan.buckets)
    assert sum(lengths) <= padded <= 2 * sum(lengths)  # a pad at most doubles a sequence's queries
    q, k, v = (x.requires_grad_() for x in qkv(sum(lengths), dtype=torch.float32, seed=1))
    out = attn.packed_attention(q, k, v, packing, causal=causal)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected = reference_packed(q, k, v, packing, causal)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    assert (out - expected).abs().max() < 1e-5
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad - expected_grad).abs().max() < 1e-5


def run_cache(prompt_lens: list[int], steps: int, seed: int = 2) -> tuple[list[torch.Tensor], KVCache]:
    """A ragged prefill then `steps` decode steps of one layer through cached_attention, as the sampler
    calls it; returns each call's output and the cache."""
    B, T, heads, kv_heads, dim = len(prompt_lens), max(prompt_lens), 4, 2, 8
    cache = KVCache(1, B, T + steps, kv_heads, dim, device="cpu", dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    new = lambda t, h: torch.randn(B, t, h, dim, generator=g).to(torch.bfloat16)
    cache_lens = torch.zeros(B, dtype=torch.long)
    outs = []
    with torch.inference_mode():
        for step in range(steps + 1):
            t = T if step == 0 else 1
            decoding = Decoding(cache, cache_lens, T + step)
            outs.append(attn.cached_attention(new(t, heads), new(t, kv_heads), new(t, kv_heads), cache, 0, cache_lens,
                                              decoding.kv_len, decoding.key_mask))
            cache_lens = torch.tensor(prompt_lens) if step == 0 else cache_lens + 1
    return outs, cache


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_cached_attention_writes_and_reads_like_sdpa(backend, monkeypatch):
    """Prefill of right-padded prompts, then decode steps at each row's own fill level: the cache must hold
    the same keys and values, and the outputs agree, whichever kernel writes and reads it."""
    prompt_lens = [3, 7, 1]
    outs, cache = run_cache(prompt_lens, steps=3)
    monkeypatch.setattr(attn, "attention_backend", lambda device, dtype: attn.SDPA)
    expected_outs, expected = run_cache(prompt_lens, steps=3)
    # Row b's real positions: its prompt, then the decoded tokens (pads between are overwritten or masked).
    for b, n in enumerate(prompt_lens):
        for tensor, reference in ((cache.k, expected.k), (cache.v, expected.v)):
            assert torch.equal(tensor[0][b, :n + 3], reference[0][b, :n + 3]), f"row {b}"
    for step, (out, reference) in enumerate(zip(outs, expected_outs)):
        rows = [(b, slice(0, n)) for b, n in enumerate(prompt_lens)] if step == 0 else [(b, slice(0, 1)) for b in range(3)]
        for b, positions in rows:
            assert (out[b, positions].float() - reference[b, positions].float()).abs().max() < 2e-2, f"step {step}"


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("attn") / "tiny", num_heads=4, num_kv_heads=2, seed=5)
    return load_model(path, dtype=torch.bfloat16)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_model_packed_and_decode_through_the_kernels(backend, bf16_model, monkeypatch):
    """The whole decoder in bf16: packed forward and KV-cached decode through the backend's kernels, against
    the SDPA path on the same weights (relative error of the logits: bf16 rounding is ~1e-2, a misplaced
    key or a wrong mask is O(1))."""
    model = bf16_model
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(3, 300, (n,), generator=g) for n in LENGTHS]
    stream = torch.cat(sequences)[None]
    packing = Packing.from_lengths(LENGTHS)
    prompt_lens = torch.tensor([4, 9, 2])  # ragged prompts, right-padded, then one decoded token each
    prompts = [torch.randint(3, 300, (n + 1,), generator=g) for n in prompt_lens.tolist()]
    batch = torch.nn.utils.rnn.pad_sequence([p[:-1] for p in prompts], batch_first=True)
    nexts = torch.stack([p[-1] for p in prompts])

    def run():
        with torch.inference_mode():
            packed = model(stream, packing=packing)
            cache = KVCache(2, 3, 12, 2, model.config.head_dim, device="cpu", dtype=torch.bfloat16)
            model(batch, decoding=Decoding(cache, torch.zeros(3, dtype=torch.long), batch.shape[1]))
            decoded = model(nexts[:, None], prompt_lens[:, None], decoding=Decoding(cache, prompt_lens, 12))
        return packed, decoded

    packed, decoded = run()
    monkeypatch.setattr(attn, "attention_backend", lambda device, dtype: attn.SDPA)
    expected_packed, expected_decoded = run()
    assert relative_error(packed, expected_packed) < 2e-2
    assert relative_error(decoded, expected_decoded) < 2e-2
    with torch.no_grad():  # the decoded token's logits equal a full forward over prompt + token
        for b, prompt in enumerate(prompts):
            assert relative_error(decoded[b, 0], model(prompt[None])[0, -1]) < 2e-2


@pytest.mark.parametrize("backend", ["flash-attn", "torch-varlen:enable_gqa"], indirect=True)
def test_vl_packed_forward_is_one_kernel_call_per_block(backend, tmp_path, monkeypatch):
    """With a flash backend, a packed vision-language forward calls the kernel once per decoder layer and once per
    vision block, whatever the number of sequences, frames and windows (the SDPA path makes one call per length bucket)."""
    model = load_model(make_tiny_vl_checkpoint(tmp_path / "vl", vision_depth=3), dtype=torch.bfloat16)
    calls = []
    for name in ("flash_attn_varlen_func", "torch_varlen"):
        kernel = getattr(attn, name)
        monkeypatch.setattr(attn, name, lambda *args, kernel=kernel, **kwargs: calls.append(1) or kernel(*args, **kwargs))
    grids = torch.tensor([[1, 8, 8], [1, 4, 8]])  # two images of 16 and 8 merge units: several windows each
    image_tokens = (grids.prod(-1) // 4).tolist()
    text = [5, 6, 7]
    sequences = [text + [model.image_token_id] * image_tokens[0] + text, text * 3,
                 text + [model.image_token_id] * image_tokens[1]]
    config = model.visual.config
    pixels = torch.randn(int(grids.prod(-1).sum()), config.in_channels * config.temporal_patch_size
                         * config.patch_size**2).to(torch.bfloat16)
    with torch.inference_mode():
        model(torch.tensor([sum(sequences, [])]), packing=Packing.from_lengths([len(s) for s in sequences]),
              pixel_values=pixels, image_grid_thw=grids)
    assert len(calls) == model.config.num_hidden_layers + config.depth
