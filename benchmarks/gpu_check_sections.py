"""The device check's sections, one function each (benchmarks/gpu_check.py describes them and runs each in a
process of its own):

    python benchmarks/gpu_check_sections.py SECTION --out DIR --work DIR --limit SECONDS [--cpu] [--fail MODE]

A section saves its results as they come (`Context.put`, DIR/sections/SECTION.json) and ends by recording its
status; parts of a section (`Context.part`) fail, or are skipped, on their own. Each section imports the parts of
spark it uses, so a module that breaks on an image fails only the sections that need it.
"""

from __future__ import annotations

import argparse
import ctypes.util
import faulthandler
import functools
import gc
import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from gpu_check import FAILURES, read_json, write_json
from torch._dynamo.utils import counters

GB = 2**30
# Qwen2.5-1.5B's shape in config.json's terms (tied embeddings), and a tiny one for --cpu.
MODEL = {"gpu": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                 "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": True},
         "cpu": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": True}}
SAMPLER = {"gpu": {"rows": 64, "prompt": 256, "new": 256}, "cpu": {"rows": 8, "prompt": 16, "new": 16}}
TRAIN = {"gpu": {"prompts": 8, "n": 8, "new": 256}, "cpu": {"prompts": 4, "n": 2, "new": 8}}
# Qwen2.5-VL-7B's vision tower, four images of 72 x 72 patches (1008 x 1008 pixels); a tiny one for --cpu.
VISION = {"gpu": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584},
          "cpu": {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "fullatt_block_indexes": (1, 3)}}
IMAGES = {"gpu": [[1, 72, 72]] * 4, "cpu": [[1, 8, 8]] * 2}
HEAD = {"gpu": {"tokens": 16384, "hidden": 3584, "vocab": 152064}, "cpu": {"tokens": 64, "hidden": 64, "vocab": 1000}}
# HBM bandwidths, GB/s (vendor datasheets), by CUDA device name (spark.distributed.flops.by_device_name).
HBM_GB_S = {"H100": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H200": 4800.0, "H200 NVL": 4800.0,
            "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100-SXM4-40GB": 1555.0, "A100-PCIE-40GB": 1555.0}
# Packages the project or torch.compile can use, beyond torch and transformers (import names).
OPTIONAL_PACKAGES = ("triton", "flash_attn", "safetensors", "tokenizers", "einops", "sympy", "PIL", "numpy",
                     "pytest", "tensorboard", "pyarrow", "tomli")
GPU_TEST_FILES = ("tests/test_gpu.py",)  # the files that hold the gpu-marked tests


class Skip(Exception):
    """A section or part that cannot run here: reported as skipped, with this reason."""


@dataclass
class Context:
    """What a section runs with, and its record: `put` saves the results at once, so a section killed at its
    time limit keeps what it had measured."""

    name: str
    kind: str  # "gpu" | "cpu": which shapes
    device: torch.device
    out: Path  # the report folder
    work: Path  # scratch: only the report folder comes back from a device
    record: dict = field(default_factory=lambda: {"result": {}})
    failed_parts: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.out / "sections" / f"{self.name}.json"

    def put(self, **values) -> None:
        self.record["result"].update(values)
        write_json(self.path, self.record)

    def part(self, name: str, fn: Callable[[], dict]) -> dict:
        """fn's figures under `name`; its failure is recorded there instead, and the section goes on."""
        started = time.perf_counter()
        try:
            figures = fn()
        except Skip as reason:
            figures = {"skipped": str(reason)}
        except Exception as error:  # noqa: BLE001 - a one-shot check records every failure it can
            traceback.print_exc()
            figures = failure(error)
            self.failed_parts.append(name)
        self.put(**{name: {**figures, "seconds": round(time.perf_counter() - started, 1)}})
        return figures

    def finish(self, status: str, **details) -> None:
        self.record.update(status=status, **details)
        write_json(self.path, self.record)


def failure(error: BaseException) -> dict:
    return {"error": f"{type(error).__name__}: {error}"[:2000],
            "traceback": "".join(traceback.format_exception(error))[-3000:]}


# ---- measuring --------------------------------------------------------------------------------------------

def sig(x: float) -> float:
    """Four significant figures, for the report."""
    return float(f"{x:.4g}")


def gb(n: float) -> float:
    return sig(n / GB)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def free_memory(device: torch.device) -> None:
    """Drop what earlier parts left (reference cycles included) and hand cached blocks back, so that the next
    peak is this part's own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def with_memory(device: torch.device, fn: Callable[[], object]) -> tuple[object, dict]:
    """fn() and, on CUDA, its memory in GB: allocated before and after, peak allocated and reserved (the
    allocator's cache, fragmentation included: what runs out) during. No figures on CPU."""
    if device.type != "cuda":
        return fn(), {}
    free_memory(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    value = fn()
    torch.cuda.synchronize()
    return value, {"allocated_before_gb": gb(before), "peak_allocated_gb": gb(torch.cuda.max_memory_allocated()),
                   "peak_reserved_gb": gb(torch.cuda.max_memory_reserved()),
                   "allocated_after_gb": gb(torch.cuda.memory_allocated())}


class Collected(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def cudagraph_skip_reasons() -> Iterator[list[str]]:
    """Inductor's reasons for compiling a graph without CUDA graphs (it counts them in `cudagraph_skips`; the
    messages go to a logger that prints nothing by default)."""
    logger = logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs")
    handler = Collected()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


# ---- shared set-up ----------------------------------------------------------------------------------------

def checkpoint_path(ctx: Context) -> Path:
    return ctx.work / f"qwen2-{ctx.kind}"


def ensure_checkpoint(ctx: Context) -> Path:
    """The random Qwen2 checkpoint of the run's shape (bf16), built once in the work folder, on the device (a GPU
    draws the 1.5B in seconds), and reused by the sections and by reruns."""
    from spark.models.tiny import make_tiny_checkpoint

    path = checkpoint_path(ctx)
    if not (path / ".complete").exists():
        shutil.rmtree(path, ignore_errors=True)
        shape = MODEL[ctx.kind]
        make_tiny_checkpoint(path, hidden_size=shape["hidden_size"], num_layers=shape["num_hidden_layers"],
                             num_heads=shape["num_attention_heads"], num_kv_heads=shape["num_key_value_heads"],
                             intermediate_size=shape["intermediate_size"], vocab_size=shape["vocab_size"],
                             tie=shape["tie_word_embeddings"], dtype=torch.bfloat16, device=ctx.device.type)
        (path / ".complete").touch()
    return path


def train_config(kind: str, checkpoint: Path, work: Path):
    """The train section's run: built field by field (no TOML: Python 3.10 may lack tomllib)."""
    from spark.config import TrainConfig
    from spark.plan import with_setting

    shape = TRAIN[kind]
    settings = {"model.path": str(checkpoint), "model.mixed_precision": True, "model.activation_checkpointing": True,
                "data.train_files": [str(work / "train.jsonl")], "data.prompts_per_step": shape["prompts"],
                "data.max_prompt_tokens": 512, "rollout.n": shape["n"], "rollout.max_new_tokens": shape["new"],
                "rollout.batch_size": shape["prompts"] * shape["n"], "loss.micro_batch_tokens": 8192,
                "spark.mode": "policy-only", "run.out_dir": str(work / "run"), "run.max_steps": 2,
                "run.save_every": 0, "run.sample_every": 0}
    config = TrainConfig()
    for key, value in settings.items():
        config = with_setting(config, key, value)
    return config


def model_config(kind: str) -> dict:
    """The checkpoint's config.json as spark.plan reads it."""
    return {"architectures": ["Qwen2ForCausalLM"], **MODEL[kind]}


# ---- preflight --------------------------------------------------------------------------------------------

def nvidia_smi(query: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout else None


def gpu_facts() -> dict:
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "count": torch.cuda.device_count(), "memory_gb": gb(props.total_memory),
            "capability": f"{props.major}.{props.minor}", "driver": nvidia_smi("driver_version")}


def package_versions() -> tuple[dict[str, str], dict[str, str]]:
    """({package: version} of the optional packages that import, {package: why not} of the others)."""
    found, missing = {}, {}
    for name in OPTIONAL_PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a broken build fails in other ways than a missing module
            missing[name] = f"{type(error).__name__}: {error}"[:200]
        else:
            found[name] = str(getattr(module, "__version__", "installed"))
    return found, missing


def triton_toolchain() -> dict:
    """What triton needs to build its launcher at the first compile: a C compiler (CC, or cc / gcc / clang on
    PATH), Python's headers, a libcuda.so it can find."""
    include = sysconfig.get_paths()["include"]
    compilers = [os.environ.get("CC")] + [shutil.which(name) for name in ("cc", "gcc", "clang")]
    return {"c_compiler": next((c for c in compilers if c), None),
            "python_headers": os.path.exists(os.path.join(include, "Python.h")), "python_include": include,
            "libcuda": ctypes.util.find_library("cuda"), "TRITON_LIBCUDA_PATH": os.environ.get("TRITON_LIBCUDA_PATH")}


def probe(x: torch.Tensor) -> torch.Tensor:
    return (x * 2).relu() + 1


def compile_probe(device: torch.device) -> dict:
    """torch.compile with CUDA graphs on a small function: whether triton builds and runs here, and how long the
    first compile takes."""
    if device.type != "cuda":
        raise Skip("needs CUDA (rollout.compile on CPU: tests/generation/test_sampler.py)")
    compiled = torch.compile(probe, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(4096, device=device)
    skips = counters["inductor"]["cudagraph_skips"]
    started = time.perf_counter()
    for _ in range(3):  # compile, record the graph, replay it
        y = compiled(x)
    torch.cuda.synchronize()
    return {"compile_s": sig(time.perf_counter() - started), "correct": bool(torch.equal(y, probe(x))),
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips}


def attention(device: torch.device) -> dict:
    from spark.models.attention import attention_backend, describe_attention

    return {"backend": attention_backend(device, torch.bfloat16), "line": describe_attention(device, torch.bfloat16)}


def preflight(ctx: Context) -> None:
    import transformers

    ctx.put(python=platform.python_version(), torch=torch.__version__, cuda_runtime=torch.version.cuda,
            transformers=transformers.__version__, cuda=torch.cuda.is_available(), gpu=gpu_facts())
    found, missing = package_versions()
    ctx.put(packages=found, missing_packages=missing, toolchain=triton_toolchain(), compute_dtype="bfloat16")
    ctx.part("attention", lambda: attention(ctx.device))
    ctx.part("compile_probe", lambda: compile_probe(ctx.device))


# ---- tests ------------------------------------------------------------------------------------------------

class TestRecorder:
    """A pytest plugin that saves each test's outcome as it comes: a run cut short keeps the outcomes before the
    cut and names the test it was in (`running`)."""

    def __init__(self, ctx: Context):
        self.ctx, self.tests = ctx, {}

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        self.ctx.put(running=nodeid)

    def pytest_runtest_logreport(self, report) -> None:
        if report.passed and report.when != "call":
            return
        entry = {"outcome": "error" if report.failed and report.when != "call" else report.outcome,
                 "seconds": round(report.duration, 2)}
        if report.failed:
            entry["error"] = report.longreprtext[-2000:]
        if report.skipped:
            entry["reason"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        self.tests[report.nodeid] = entry
        outcomes = [t["outcome"] for t in self.tests.values()]
        self.ctx.put(tests=self.tests, **{o: outcomes.count(o) for o in ("passed", "failed", "error", "skipped")})


def tests(ctx: Context) -> None:
    import pytest

    ctx.put(passed=0, failed=0, error=0, skipped=0)
    code = pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", "-p", "no:faulthandler", *GPU_TEST_FILES],
                       plugins=[TestRecorder(ctx)])
    ctx.put(running=None, exit_code=int(code))


# ---- train ------------------------------------------------------------------------------------------------

def write_train_rows(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in zip(range(8), range(3, 11))))


def step_figures(metrics: dict) -> dict:
    update_s = metrics["time/update"] + metrics.get("time/reference", 0.0)
    rates = {key.replace("/", "_"): sig(value) for key, value in metrics.items()
             if key.split("/")[0] in ("mfu", "tflops")}
    return {"seconds": sig(metrics["time/step"]), "rollout_s": sig(metrics["time/rollout"]), "update_s": sig(update_s),
            "update_tok_s": sig(metrics["trained_tokens"] / update_s), "loss": metrics.get("loss"), **rates}


def local_bytes(tensors) -> int:
    """Bytes this rank holds of the tensors (a DTensor: its shard)."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors)


def resident_tensors(trainer) -> dict[str, float]:
    """The tensors of spark.plan's resident items, in GB, by their sizes (not the allocator's figures)."""
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"sampler weights": gb(local_bytes(trainer.rollouts.chat.model.parameters())),
            "parameter shards": gb(local_bytes(trainer.policy.parameters())),
            "AdamW state": gb(local_bytes(state)),
            "reference shards": gb(local_bytes(trainer.reference.parameters())) if trainer.reference else 0.0}


def train(ctx: Context) -> None:
    from spark.trainer import Trainer

    config = train_config(ctx.kind, ensure_checkpoint(ctx), ctx.work)
    write_train_rows(Path(config.data.train_files[0]))
    shutil.rmtree(config.run.out_dir, ignore_errors=True)  # an earlier check's run would be resumed
    trainer = Trainer(config)
    # The first step creates AdamW's state; the second is the steady state.
    for step in (1, 2):
        metrics, memory = with_memory(ctx.device, trainer.train_step)
        trainer.step += 1
        ctx.put(**{f"step{step}": {**step_figures(metrics), **memory}})
    ctx.put(tensors_gb=resident_tensors(trainer))


# ---- vision -----------------------------------------------------------------------------------------------

def vision_pass(tower, pixels: torch.Tensor, grids: torch.Tensor, checkpointing: bool) -> dict:
    """One forward + backward: its seconds, and on CUDA its memory beyond the weights and their gradients (made
    by a warm-up pass and kept, as training keeps them): what autograd holds after the forward (spark.plan's
    vision activations) and the peak through the backward."""
    def forward() -> torch.Tensor:
        return tower(pixels, grids, checkpointing).float().square().mean()

    forward().backward()  # warm-up: kernels chosen, gradients allocated
    figures = {"pass_s": sig(timed(lambda: forward().backward(), pixels.device))}
    if pixels.device.type != "cuda":
        return figures
    free_memory(pixels.device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = forward()
    held = torch.cuda.memory_allocated() - before
    loss.backward()
    torch.cuda.synchronize()
    return {**figures, "held_gb": gb(held), "peak_gb": gb(torch.cuda.max_memory_allocated() - before),
            "peak_reserved_gb": gb(torch.cuda.max_memory_reserved())}


def vision(ctx: Context) -> None:
    from spark.models.qwen2_vl import VisionConfig, VisionTransformer

    config = VisionConfig(**VISION[ctx.kind])
    with torch.device(ctx.device):
        tower = VisionTransformer(config).to(torch.bfloat16)
    grids = torch.tensor(IMAGES[ctx.kind])
    patches = int(grids.prod(-1).sum())
    pixels = torch.randn(patches, config.in_channels * config.temporal_patch_size * config.patch_size**2,
                         device=ctx.device, dtype=torch.bfloat16)
    ctx.put(patches=patches)
    for name, checkpointing in (("checkpointed", True), ("plain", False)):
        ctx.part(name, lambda checkpointing=checkpointing: vision_pass(tower, pixels, grids, checkpointing))


# ---- head -------------------------------------------------------------------------------------------------

def head_pass(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, logps: list) -> dict:
    """Seconds of the head's forward + backward (after a warm-up); its log-probs are appended to `logps`."""
    from spark.models.logprobs import token_logprobs

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

    def step() -> None:
        logp, _ = token_logprobs(h, w, targets, chunk_size=1024, with_entropy=True)
        logp.sum().backward()
        logps.append(logp.detach().float())

    step()
    return {"pass_s": sig(timed(step, hidden.device))}


def head(ctx: Context) -> None:
    shape = HEAD[ctx.kind]
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(shape["tokens"], shape["hidden"], generator=g) / 4).to(ctx.device, torch.bfloat16)
    weight = (torch.randn(shape["vocab"], shape["hidden"], generator=g) / 60).to(ctx.device)
    targets = torch.randint(0, shape["vocab"], (shape["tokens"],), generator=g).to(ctx.device)
    logps: dict[str, list] = {"fp32": [], "bf16": []}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ctx.part(name, lambda name=name, dtype=dtype: head_pass(hidden, weight.to(dtype), targets, logps[name]))
    if logps["fp32"] and logps["bf16"]:
        ctx.put(mean_abs_logp_diff=sig(float((logps["bf16"][-1] - logps["fp32"][-1]).abs().mean())))


# ---- plan -------------------------------------------------------------------------------------------------

def train_plan_vs_measured(plan, measured: dict) -> dict:
    """The plan's items next to the train section's tensors, and its totals next to step 2's memory."""
    step = measured.get("step2", {})
    tensors = measured.get("tensors_gb", {})
    transient = step["peak_allocated_gb"] - step["allocated_before_gb"] if "peak_allocated_gb" in step else None
    return {"fits": plan.fits,
            "items": {name: {"plan_gb": gb(size), "measured_gb": tensors.get(name)} for name, size in plan.items.items()},
            "resident": {"plan_gb": gb(plan.resident), "allocated_gb": step.get("allocated_after_gb")},
            "transient": {"plan_gb": gb(max(plan.rollout, plan.update)),
                          "allocated_gb": sig(transient) if transient is not None else None},
            "total": {"plan_gb": gb(plan.total), "peak_allocated_gb": step.get("peak_allocated_gb"),
                      "peak_reserved_gb": step.get("peak_reserved_gb")}}


def vision_plan_vs_measured(kind: str, measured: dict) -> dict:
    """spark.plan's vision activations next to what the vision section measured autograd holding."""
    from spark.models.qwen2_vl import VisionConfig
    from spark.plan import vision_activation_bytes

    config = VisionConfig(**VISION[kind])
    patches = int(torch.tensor(IMAGES[kind]).prod(-1).sum())
    return {name: {"plan_gb": gb(vision_activation_bytes(config, patches, 2, name == "checkpointed")),
                   "held_gb": measured.get(name, {}).get("held_gb"), "peak_gb": measured.get(name, {}).get("peak_gb")}
            for name in ("checkpointed", "plain")}


def plan(ctx: Context) -> None:
    from spark.plan import plan_for

    sections = read_json(ctx.out / "gpu_check.json").get("sections", {})
    memory_gb = torch.cuda.get_device_properties(0).total_memory / GB if ctx.device.type == "cuda" else 80.0
    planned = plan_for(train_config(ctx.kind, checkpoint_path(ctx), ctx.work), model_config(ctx.kind), 1, memory_gb)
    ctx.put(gpu_memory_gb=sig(memory_gb),
            train=train_plan_vs_measured(planned, sections.get("train", {}).get("result", {})),
            vision=vision_plan_vs_measured(ctx.kind, sections.get("vision", {}).get("result", {})))


# ---- sampler ----------------------------------------------------------------------------------------------

def decode_read_bytes(cfg, weight_bytes: int, rows: int, prompt: int, new: int, element: int = 2) -> int:
    """What `new` KV-cached decode steps of `rows` rows after `prompt` tokens read from memory at the least: every
    weight once per step, and each row's keys and values so far. `cfg`: the model's spark ModelConfig."""
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * element
    return new * weight_bytes + rows * kv_per_token * sum(prompt + step for step in range(new))


def rate(tokens: int, seconds: float, bound: float | None) -> dict:
    return {"tok_s": sig(tokens / seconds), **({"of_hbm_bound": sig(tokens / seconds / bound)} if bound else {})}


def time_ours(model, prompts: list[list[int]], new: int, bound: float | None, compile_: bool) -> dict:
    """Our sampler: a first call (compiling the decode step and recording its CUDA graphs when `compile_`), then
    a timed one; with `compile_` the graphs compiled, recompiles in the timed call, and inductor's CUDA-graph
    skips with their reasons (compiled code that runs without graphs)."""
    from spark.generation.sampler import SamplingParams, generate

    params = SamplingParams(max_new_tokens=new, temperature=1.0, compile=compile_)
    device = model.lm_head.weight.device
    graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
    with cudagraph_skip_reasons() as reasons:
        first = timed(lambda: generate(model, prompts, params, seed=0), device)
        compiled = counters["stats"]["unique_graphs"]
        seconds = timed(lambda: generate(model, prompts, params, seed=1), device)
    figures = {"first_call_s": sig(first), **rate(len(prompts) * new, seconds, bound)}
    if compile_:
        figures.update(graphs=compiled - graphs, recompiles=counters["stats"]["unique_graphs"] - compiled,
                       cudagraph_skips=counters["inductor"]["cudagraph_skips"] - skips, skip_reasons=reasons[:3])
    return figures


def time_transformers(checkpoint: Path, prompts: list[list[int]], new: int, bound: float | None,
                      device: torch.device) -> dict:
    """transformers' generate with its static cache (not compiled), on the same weights, after a short warm-up."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).to(device).eval()
    settings = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0, eos_token_id=None,
                    cache_implementation="static", disable_compile=True)
    ids = torch.tensor(prompts, device=device)
    with torch.inference_mode():
        model.generate(ids, generation_config=GenerationConfig(**settings, max_new_tokens=8, min_new_tokens=8))
        config = GenerationConfig(**settings, max_new_tokens=new, min_new_tokens=new)
        seconds = timed(lambda: model.generate(ids, generation_config=config), device)
    return rate(len(prompts) * new, seconds, bound)


def sampler(ctx: Context) -> None:
    from spark.distributed.flops import by_device_name
    from spark.models import load_model

    work = SAMPLER[ctx.kind]
    checkpoint = ensure_checkpoint(ctx)
    model = load_model(checkpoint, device=ctx.device, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (work["rows"], work["prompt"]), generator=g).tolist()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    read = decode_read_bytes(model.config, weights, **work)
    bandwidth = by_device_name(HBM_GB_S, torch.cuda.get_device_name()) if ctx.device.type == "cuda" else None
    bound = work["rows"] * work["new"] * bandwidth * 1e9 / read if bandwidth else None
    ctx.put(**work, decode_read_gb=gb(read), hbm_gb_s=bandwidth, hbm_bound_tok_s=sig(bound) if bound else None)
    ctx.part("eager", lambda: time_ours(model, prompts, work["new"], bound, compile_=False))
    free_memory(ctx.device)
    ctx.part("transformers", lambda: time_transformers(checkpoint, prompts, work["new"], bound, ctx.device))
    free_memory(ctx.device)
    compiled = "cuda_graphs" if ctx.device.type == "cuda" else "compiled"  # CPU: inductor, no graphs
    ctx.part(compiled, lambda: time_ours(model, prompts, work["new"], bound, compile_=True))


# ---- offload ----------------------------------------------------------------------------------------------

# "all" first: its trainer starts the process group, with the host collectives that its shards need (the others
# run in that group too).
OFFLOADS = ("all", "optimizer", "none")


def offload_steps(ctx: Context, offload: str) -> dict:
    """The train section's run with model.offload = `offload`: two steps, the second's seconds and memory."""
    from spark.plan import with_setting
    from spark.trainer import Trainer

    if offload == "all" and ctx.device.type != "cuda":
        raise Skip("FSDP2's CPUOffloadPolicy needs an accelerator (a CPU build fails while sharding: pinned memory)")
    work = ctx.work / f"offload-{offload}"
    config = with_setting(train_config(ctx.kind, ensure_checkpoint(ctx), work), "model.offload", offload)
    write_train_rows(Path(config.data.train_files[0]))
    shutil.rmtree(config.run.out_dir, ignore_errors=True)
    trainer = Trainer(config)
    try:
        for _ in (1, 2):  # the first step creates AdamW's state; the second is the steady state
            metrics, memory = with_memory(ctx.device, trainer.train_step)
            trainer.step += 1
        figures = step_figures(metrics)
        figures["step_s"] = figures.pop("seconds")  # the part's own "seconds" include the trainer's start
        return {**figures, **memory, "resident_tensors_gb": resident_tensors(trainer)}
    finally:
        del trainer
        free_memory(ctx.device)


def offload(ctx: Context) -> None:
    """Each model.offload setting's step time and memory on the train section's run (step 2: AdamW's state
    exists). "allocated_before_gb" is what stays on the device between steps."""
    for setting in OFFLOADS:
        ctx.part(setting, functools.partial(offload_steps, ctx, setting))


# ---- running one section ----------------------------------------------------------------------------------

RUNS: dict[str, Callable[[Context], None]] = {"preflight": preflight, "tests": tests, "train": train,
                                              "vision": vision, "head": head, "plan": plan, "sampler": sampler,
                                              "offload": offload}


def inject_failure(mode: str) -> None:
    """--fail: fail the way a device can (tests of the check itself)."""
    if mode == "hang":
        time.sleep(24 * 3600)  # until the section's time limit
    if mode == "crash":
        faulthandler._sigsegv()
    raise RuntimeError(f"forced failure (--fail {mode})")


def run(ctx: Context, fail: str | None) -> None:
    """The section, its status recorded whatever happens short of the process dying."""
    try:
        if ctx.name != "preflight" and ctx.kind == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device (--cpu checks the script on CPU)")
        if fail:
            inject_failure(fail)
        RUNS[ctx.name](ctx)
    except Skip as reason:
        ctx.finish("skipped", reason=str(reason))
    except Exception as error:  # noqa: BLE001 - recorded in the report, the check goes on
        traceback.print_exc()
        ctx.finish("failed", **failure(error))
    else:
        ctx.finish("partial" if ctx.failed_parts else "ok", **({"failed_parts": ctx.failed_parts}
                                                              if ctx.failed_parts else {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", choices=sorted(RUNS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--limit", type=float, required=True, help="seconds, then the stacks are dumped and it exits")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--fail", choices=FAILURES)
    args = parser.parse_args(argv)
    faulthandler.dump_traceback_later(args.limit, exit=True)
    kind = "cpu" if args.cpu else "gpu"
    run(Context(args.section, kind, torch.device(kind if kind == "cpu" else "cuda"), args.out, args.work), args.fail)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no waiting on what a section leaves running (tensorboard's writer thread, NCCL's teardown)


if __name__ == "__main__":
    main()
