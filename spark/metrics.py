"""Run metrics: one JSON line per step in `metrics.jsonl`, the same scalars in TensorBoard, and a
console line. Only rank 0 writes."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

CONSOLE_KEYS = ("reward/policy", "reward/pointwise", "reward/pairwise", "reward/reflection", "kl", "entropy",
                "grad_norm", "response_len/mean", "tokens_per_s", "time/step")


class MetricsLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.start = time.time()
        if enabled:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(out_dir / "metrics.jsonl", "a")  # closed in close()
            self.samples = open(out_dir / "samples.jsonl", "a")
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float], total_steps: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "minutes": round((time.time() - self.start) / 60, 3), **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        shown = "  ".join(f"{k.split('/')[-1] if k.startswith('reward') else k}={metrics[k]:.3g}"
                          for k in CONSOLE_KEYS if k in metrics)
        print(f"step {step}/{total_steps}  {shown}", flush=True)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Sample completions (prompt, response, reward, task) as text."""
        if not self.enabled:
            return
        for row in rows:
            self.samples.write(json.dumps({"step": step, **row}) + "\n")
        self.samples.flush()
        self.writer.add_text("samples", "\n\n---\n\n".join(
            f"**{r['task']}** (reward {r['reward']})\n\n{r['prompt']}\n\n→ {r['response']}" for r in rows), step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.samples.close()
            self.writer.close()


class PhaseTimer:
    """Seconds per phase of a step: `with timer("rollout"): ...` adds to `seconds["time/rollout"]`."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if torch.cuda.is_available():  # the GPU's queued work belongs to this phase
            torch.cuda.synchronize()
        self.seconds[f"time/{phase}"] += time.perf_counter() - started
