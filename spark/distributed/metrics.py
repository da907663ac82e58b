"""Run metrics: one JSON line per step in `metrics.jsonl`, the same scalars in TensorBoard, and a
console line (`console_line`). Only rank 0 writes.

metrics.jsonl is the record of a run; a run resumed from a checkpoint older than its last logged step drops
the records (and sample completions) of the steps it runs again, and rebuilds its TensorBoard events from
what is kept, so that no step appears twice in either."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from spark.errors import DataError

# The console line's groups of (metric, label): a group is shown when one of its metrics is in the step's.
CONSOLE_GROUPS = (
    ("reward", (("reward/policy", "policy"), ("reward/pointwise", "pointwise"), ("reward/pairwise", "pairwise"),
                ("reward/reflection", "reflection"))),
    ("held-out", (("eval/policy_acc", "policy_acc"), ("eval/judge_acc", "judge_acc"))),
    ("", (("kl", "kl"), ("entropy", "entropy"), ("grad_norm", "grad_norm"), ("response_len/mean", "response_len"),
          ("tokens_per_s", "tokens/s"))),
)
NOT_SCALARS = ("step", "minutes")  # fields of a metrics.jsonl record that are not a metric


def duration(seconds: float) -> str:
    """42 -> '42s', 155 -> '2m35s', 11220 -> '3h07m'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def console_line(step: int, total_steps: int, metrics: dict[str, float], eta_s: float | None) -> str:
    """'step 5/30 | reward policy=0.438 | held-out policy_acc=0.41 | kl=0.01 ... | 6.2 s/step, ETA 2m35s'; the
    held-out accuracies only at the steps that computed them, the time once a step was timed."""
    parts = [f"step {step}/{total_steps}"]
    for title, keys in CONSOLE_GROUPS:
        shown = " ".join(f"{label}={metrics[key]:.3g}" for key, label in keys if key in metrics)
        if shown:
            parts.append(f"{title} {shown}" if title else shown)
    if "time/step" in metrics:
        parts.append(f"{metrics['time/step']:.3g} s/step" + (f", ETA {duration(eta_s)}" if eta_s is not None else ""))
    return " | ".join(parts)


def read_jsonl_steps(path: Path) -> list[dict]:
    """The records of a metrics or samples JSONL file. Its last line may be cut short (the run was killed while
    writing it) and is then left out; any other line that does not parse is a DataError."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise DataError(path, number, None, f"not valid JSON ({e.msg})") from None
    return records


def keep_before(path: Path, next_step: int) -> list[dict]:
    """Rewrite a metrics or samples JSONL file with only its records of steps before `next_step`; returns them."""
    kept = [record for record in read_jsonl_steps(path) if record["step"] < next_step]
    if path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        tmp.replace(path)
    return kept


class MetricsLogger:
    """`next_step`: the first step this run logs; records of it and later steps already in out_dir are dropped
    (0 for a run that starts from scratch)."""

    def __init__(self, out_dir: str | Path, next_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.start = time.time()
        self.timed_from: tuple[int, float] | None = None  # (the step before the first timed one, its end time)
        if not enabled:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        records = keep_before(out_dir / "metrics.jsonl", next_step)
        samples = keep_before(out_dir / "samples.jsonl", next_step)
        for events in (out_dir / "tensorboard").glob("events.out.tfevents.*"):
            events.unlink()
        self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        for record in records:
            self.write_scalars(record["step"], {k: v for k, v in record.items() if k not in NOT_SCALARS})
        for step, rows in groupby(samples, key=lambda row: row["step"]):
            self.write_samples(step, list(rows))
        self.jsonl = open(out_dir / "metrics.jsonl", "a")  # closed in close()
        self.samples = open(out_dir / "samples.jsonl", "a")

    def log(self, step: int, metrics: dict[str, float], total_steps: int) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {"step": step, "minutes": round((now - self.start) / 60, 3), **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        self.write_scalars(step, metrics)
        eta = None
        if "time/step" in metrics:  # a training step (step 0 only evaluates)
            if self.timed_from is None:
                self.timed_from = (step - 1, now - metrics["time/step"])
            first, started = self.timed_from
            # Wall time, so that evaluations and checkpoints count too.
            eta = (now - started) / (step - first) * (total_steps - step)
        print(console_line(step, total_steps, metrics, eta), flush=True)

    def write_scalars(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Sample completions (prompt, response, reward, task) as text."""
        if not self.enabled:
            return
        for row in rows:
            self.samples.write(json.dumps({"step": step, **row}) + "\n")
        self.samples.flush()
        self.write_samples(step, rows)

    def write_samples(self, step: int, rows: list[dict]) -> None:
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
