"""One-shot device check (`make gpu-check`): everything a GPU has to show, in one run of under 8 minutes, with
only the packages of a bare device image (torch, transformers, safetensors, tokenizers, pytest; no flash-attn,
no network, nothing installed).

  1. tests  `pytest -m gpu tests/test_gpu.py`: logits vs transformers (fp32, bf16), packed == padded,
            KV-cached decode == full forward, greedy == transformers generate, CUDA graphs == eager, a bf16
            SPARK step;
  2. sampler a Qwen2.5-1.5B-shaped model with random weights, bf16, 64 prompts of 256 tokens, 256 new tokens
            each (no stop token): tokens/s of our sampler eager and with CUDA graphs (`compile`), and of
            transformers `generate` with its static cache (not compiled), on the same weights; and the share of
            the HBM bound (weights + the KV cache read once per decode step, at the device's bandwidth);
  3. step   one trainer step on the same model (FSDP2 on one GPU, bf16, activation checkpointing, policy-only
            GRPO with the KL reference): update tokens/s, MFU (spark.flops), peak memory next to spark.plan's;
  4. vision Qwen2.5-VL-7B's vision tower (random weights, bf16) over four ~1 MP images (20,736 patches): peak
            memory of a forward and backward with and without activation checkpointing, next to spark.plan's
            vision activations;
  5. head   the update's log-prob head (spark.models.logprobs) at Qwen2.5-7B's shape, 16k tokens: seconds of a
            forward and backward with the GEMMs in fp32 and in bf16, and the mean |log-prob difference|.
`--cpu` runs the same on CPU with tiny shapes (the slow test suite does, so the script is known to work before a
device is spent on it). Prints a short table; the last line is one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark.config import TrainConfig, load_config  # noqa: E402
from spark.flops import FlopModel, peak_tflops, shared_prompts, step_flops, throughput  # noqa: E402
from spark.models import load_model  # noqa: E402
from spark.models.attention import describe_attention  # noqa: E402
from spark.models.checkpoint import read_config  # noqa: E402
from spark.models.logprobs import token_logprobs  # noqa: E402
from spark.models.qwen2_vl import VisionConfig, VisionTransformer  # noqa: E402
from spark.plan import GB, plan_for, vision_activation_bytes  # noqa: E402
from spark.sampler import SamplingParams, generate  # noqa: E402
from spark.tiny import make_tiny_checkpoint  # noqa: E402
from spark.trainer import Trainer  # noqa: E402

# Qwen2.5-1.5B's shape (tied embeddings), and a tiny one for --cpu.
SHAPES = {"gpu": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
                      vocab_size=151936, tie=True),
          "cpu": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=512, tie=True)}
WORKLOAD = {"gpu": dict(rows=64, prompt=256, new=256), "cpu": dict(rows=8, prompt=16, new=16)}
# Qwen2.5-VL-7B's vision tower, four images of 72 x 72 patches (1008 x 1008 pixels); a tiny one for --cpu.
VISION = {"gpu": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584),
          "cpu": dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=(1, 3))}
IMAGES = {"gpu": [[1, 72, 72]] * 4, "cpu": [[1, 8, 8]] * 2}
HEAD = {"gpu": dict(tokens=16384, hidden=3584, vocab=152064), "cpu": dict(tokens=64, hidden=64, vocab=1000)}
HBM_GB_S = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}  # datasheet bandwidths (SXM), GB/s


def sig(x: float) -> float:
    """Four significant figures, for the report."""
    return float(f"{x:.4g}")


def section(report: dict, name: str, fn, *args) -> None:
    """Run one part of the check; a failure is recorded in the report and the check goes on."""
    started = time.perf_counter()
    try:
        report[name] = fn(*args)
    except Exception as error:  # noqa: BLE001 - a one-shot check reports every failure it can
        traceback.print_exc()
        report[name] = {"error": f"{type(error).__name__}: {error}"}
    report[name]["seconds"] = round(time.perf_counter() - started, 1)


def run_tests(out: Path) -> dict:
    junit = out / "gpu_tests.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests/test_gpu.py",
                           f"--junitxml={junit}", "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    print(proc.stdout[-3000:])
    outcomes = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcomes[case.get("name")] = "passed" if problem is None else problem.tag
    counts = {kind: sum(v == kind for v in outcomes.values()) for kind in ("passed", "failure", "error", "skipped")}
    return {**counts, "failed": sorted(k for k, v in outcomes.items() if v in ("failure", "error"))}


def hbm_bound_seconds(model, rows: int, prompt: int, new: int, bandwidth_gb_s: float) -> float:
    """Each decode step reads every weight once and the KV cache so far: the time HBM needs for that."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    kv_read = rows * kv_per_token * sum(prompt + step for step in range(new))
    return (new * weights + kv_read) / (bandwidth_gb_s * 1e9)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_sampler(checkpoint: Path, device: str, dtype: torch.dtype, work: dict) -> dict:
    rows, prompt, new = work["rows"], work["prompt"], work["new"]
    model = load_model(checkpoint, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (rows, prompt), generator=g)
    ours = {}
    for name, compile_ in (("eager", False), ("cuda_graphs", True)):
        if compile_ and device == "cpu":
            continue  # CUDA graphs need a GPU; the tests cover compile == eager there
        params = SamplingParams(max_new_tokens=new, temperature=1.0, compile=compile_)
        generate(model, prompts.tolist(), params, seed=0)  # warm-up (and compilation)
        seconds = timed(lambda p=params: generate(model, prompts.tolist(), p, seed=1))
        ours[name] = rows * new / seconds
    hf = Qwen2ForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new,
                              min_new_tokens=new, pad_token_id=0, eos_token_id=None, cache_implementation="static",
                              disable_compile=True)
    ids = prompts.to(device)
    with torch.inference_mode():
        hf.generate(ids, generation_config=config)
        seconds = timed(lambda: hf.generate(ids, generation_config=config))
    result = {f"ours_{k}_tok_s": sig(v) for k, v in ours.items()}
    result["hf_static_tok_s"] = sig(rows * new / seconds)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    bandwidth = next((bw for key, bw in HBM_GB_S.items() if key in name), None)
    if bandwidth:
        bound = rows * new / hbm_bound_seconds(hf, rows, prompt, new, bandwidth)
        result["hbm_bound_tok_s"] = sig(bound)
        result.update({f"ours_{k}_of_bound": sig(v / bound) for k, v in ours.items()})
    return result


def run_trainer_step(checkpoint: Path, device: str, work: dict, out: Path) -> dict:
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in zip(range(8), range(3, 11))))
    overrides = [f"model.path={json.dumps(str(checkpoint))}", "model.mixed_precision=true",
                 "model.activation_checkpointing=true", f"data.train_files=[{json.dumps(str(data))}]",
                 "data.prompts_per_step=8", "data.max_prompt_tokens=512", "rollout.n=8",
                 f"rollout.max_new_tokens={work['new']}", "rollout.batch_size=64", "loss.micro_batch_tokens=8192",
                 "spark.mode=\"policy-only\"", f"run.out_dir={json.dumps(str(out / 'run'))}", "run.max_steps=1",
                 "run.save_every=0", "run.sample_every=0"]
    config = load_config(TrainConfig, None, overrides)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(config)
    trained: list = []
    update = trainer.update
    trainer.update = lambda experiences, timer=None: (trained.extend(experiences), update(experiences, timer))[1]
    metrics = trainer.train_step()
    model = FlopModel.of(trainer.rollouts.chat.model)
    flops = step_flops(model, updated=shared_prompts(trained),
                       generated=shared_prompts(trained),
                       reference=trainer.reference is not None)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_tflops(name)
    seconds = metrics["time/update"] + metrics.get("time/reference", 0.0)
    tokens = sum(len(e.prompt_ids) + len(e.response_ids) for e in trained)
    train = throughput(flops["update"] + flops["reference"], seconds, peak)
    rollout = throughput(flops["rollout"], metrics["time/rollout"], peak)
    memory = torch.cuda.get_device_properties(0).total_memory / GB if device == "cuda" else 80.0
    plan = plan_for(config, read_config(checkpoint), 1, memory)
    result = {"update_tok_s": sig(tokens / seconds), "update_tflops": sig(train["tflops"]),
              "rollout_tflops": sig(rollout["tflops"]), "loss": metrics.get("loss"),
              "time_rollout_s": sig(metrics["time/rollout"]), "time_update_s": sig(seconds),
              "plan_total_gb": sig(plan.total / GB), "plan_fits": plan.fits}
    if "mfu" in train:
        result.update(update_mfu=sig(train["mfu"]), rollout_mfu=sig(rollout["mfu"]))
    if device == "cuda":
        result["peak_allocated_gb"] = sig(torch.cuda.max_memory_allocated() / GB)
    return result


def peak_bytes(fn) -> int:
    """Peak device memory `fn` allocates above what was allocated before it (0 on CPU: no allocator stats)."""
    if not torch.cuda.is_available():
        fn()
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def run_vision(device: str, dtype: torch.dtype, kind: str) -> dict:
    config = VisionConfig(**VISION[kind])
    with torch.device(device):
        tower = VisionTransformer(config).to(dtype)
    grids = torch.tensor(IMAGES[kind])
    patches = int(grids.prod(-1).sum())
    pixels = torch.randn(patches, config.in_channels * config.temporal_patch_size * config.patch_size**2,
                         device=device, dtype=dtype)
    result = {"patches": patches}
    for checkpointing in (False, True):
        def step(checkpointing=checkpointing):
            tower(pixels, grids, checkpointing).float().square().mean().backward()
            tower.zero_grad(set_to_none=True)
        step()  # warm-up
        name = "checkpointed" if checkpointing else "plain"
        result[f"{name}_peak_gb"] = sig(peak_bytes(step) / GB)
        result[f"{name}_plan_gb"] = sig(vision_activation_bytes(config, patches, 2, checkpointing) / GB)
        result[f"{name}_s"] = sig(timed(step))
    return result


def run_logprob_head(device: str, kind: str) -> dict:
    shape = HEAD[kind]
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(shape["tokens"], shape["hidden"], generator=g) / 4).to(device, torch.bfloat16)
    weight = (torch.randn(shape["vocab"], shape["hidden"], generator=g) / 60).to(device)
    targets = torch.randint(0, shape["vocab"], (shape["tokens"],), generator=g).to(device)
    result, logps = {}, {}
    for name, head in (("fp32", weight), ("bf16", weight.to(torch.bfloat16))):
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()

        def step(h=h, w=w, name=name):
            logp, _ = token_logprobs(h, w, targets, chunk_size=1024, with_entropy=True)
            logp.sum().backward()
            logps[name] = logp.detach().float()
        step()  # warm-up
        result[f"{name}_s"] = sig(timed(step))
    result["mean_abs_logp_diff"] = sig(float((logps["bf16"] - logps["fp32"]).abs().mean()))
    return result


def table(report: dict) -> str:
    lines = [f"device: {report['device']}  torch {report['torch']}  {report['attention']}"]
    tests = report["tests"]
    lines.append(f"tests: {tests.get('passed', 0)} passed, {tests.get('failure', 0) + tests.get('error', 0)} failed, "
                 f"{tests.get('skipped', 0)} skipped" + (f" ({', '.join(tests['failed'])})" if tests.get("failed") else ""))
    for name in ("sampler", "trainer_step", "vision", "logprob_head"):
        lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in report[name].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on CPU: proves the script, not the device")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json (default: a temp folder)")
    args = parser.parse_args()
    kind = "cpu" if args.cpu else "gpu"
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --cpu to check the script itself)")
    dtype = torch.bfloat16
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "torch": torch.__version__, "attention": describe_attention(torch.device(device), dtype)}
        section(report, "tests", run_tests, out)
        checkpoint = make_tiny_checkpoint(Path(tmp) / "model", dtype=dtype, device=device, **SHAPES[kind])
        section(report, "sampler", run_sampler, checkpoint, device, dtype, WORKLOAD[kind])
        if device == "cuda":
            torch.cuda.empty_cache()
        section(report, "trainer_step", run_trainer_step, checkpoint, device, WORKLOAD[kind], Path(tmp))
        section(report, "vision", run_vision, device, dtype, kind)
        section(report, "logprob_head", run_logprob_head, device, kind)
        report["minutes"] = round((time.perf_counter() - started) / 60, 2)
        print(table(report))
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
