"""Evaluating a model on benchmarks: data-parallel shards, resumable outputs, summary and table.

Outputs in OUT_DIR: NAME.jsonl (one record per row, with every generation, its extracted answer and
score), summary.json ({"preset": ..., "mean_accuracy": ..., "benchmarks": {NAME: {"accuracy": ..., "n": ...,
...}}}; mean_accuracy: the mean of the benchmarks' accuracies), results.md (the paper-style table) and
config.json (the settings; a resumed run must use the same ones). With a calibration benchmark (`--calibrate`):
calibration/NAME.jsonl (its loop run at reject_above = 0), calibration.json (the threshold picked, the curve:
spark.evaluation.calibration) and calibration.png (spark.evaluation.curve); the evaluation then runs at that
threshold.

Data parallel (torchrun): of the rows not yet in NAME.jsonl, rank r takes every world_size-th one from
the r-th (on a fresh run: rows i with i % world_size == r); after every batch each rank's records are
gathered to all ranks and rank 0 appends them.
Every rank then summarises the same full set of records, so the numbers do not depend on the number
of ranks (for greedy decoding; sampled runs draw from per-call seeds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from spark.data.images import image_label
from spark.data.rows import read_records
from spark.distributed.groups import all_gather_objects, init_distributed
from spark.errors import DataError, UserError
from spark.evaluation.calibration import calibrate, paths
from spark.evaluation.curve import draw_curve
from spark.evaluation.inference import RUNS, EvalConfig
from spark.evaluation.loaders import Benchmark, parse_spec, split_specs
from spark.evaluation.scoring import (
    markdown_table,
    mean_accuracy,
    record_traces,
    summarize_judge,
    summarize_math,
)
from spark.evaluation.tts import format_rounds

# The subset reported as each reward benchmark's math column (VL-RB's reasoning group: MathVerse, MMMU-Pro).
MATH_SUBSETS = {"rb2": "Math", "vlrb": "reasoning"}


def _gather_one(obj: object) -> list[object]:
    return [obj]


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel ranks. gather(obj) returns every rank's obj, in rank
    order, to every rank (a collective: all ranks call it the same number of times)."""

    rank: int = 0
    world_size: int = 1
    gather: Callable[[object], list[object]] = _gather_one
    member: int = 0  # this process's place among those that run the shard in step (a tensor-parallel group)

    @property
    def writes(self) -> bool:
        """Whether this process writes the outputs: one process of all."""
        return self.rank == 0 and self.member == 0


def _done_records(path: Path | None, num_items: int) -> dict[int, dict]:
    """Records already in the output JSONL, by row index (rows past --limit are left out)."""
    if path is None or not path.exists():
        return {}
    done = {}
    for line, record in read_records(path):
        index = record.get("index")
        if not isinstance(index, int):
            raise DataError(path, line, "index", "expected the row index (an integer)")
        if index < num_items:
            done[index] = record
    return done


def evaluate_benchmark(
    model,
    bench: Benchmark,
    cfg: EvalConfig,
    *,
    out_dir: Path | None = None,
    shard: Shard = Shard(),
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Records of every row of `bench`, generating only those not already in OUT_DIR/NAME.jsonl."""
    path = out_dir / f"{bench.name}.jsonl" if out_dir is not None else None
    done = _done_records(path, len(bench.items))
    pending = [i for i in range(len(bench.items)) if i not in done]
    mine = pending[shard.rank :: shard.world_size]
    # Every rank runs the same number of steps (gather is collective), the longest shard's.
    steps = math.ceil(math.ceil(len(pending) / shard.world_size) / cfg.batch_size)
    for step in range(steps):
        rows = mine[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        records = RUNS[bench.kind](model, [bench.items[i] for i in rows], cfg) if rows else []
        finished = [{"bench": bench.name, "index": i} | record for i, record in zip(rows, records)]
        new = [record for part in shard.gather(finished) for record in part]
        if shard.writes and path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in new)
        done.update((record["index"], record) for record in new)
        if progress is not None:
            progress(f"{bench.name}: {len(done)}/{len(bench.items)}")
    return [done[i] for i in range(len(bench.items))]


def summarize(bench: Benchmark, records: list[dict], cfg: EvalConfig) -> dict:
    if bench.kind == "math":
        return summarize_math(records, tts_rounds=cfg.max_rounds if cfg.tts else None, reject_above=cfg.reject_above)
    return summarize_judge(records, math_subset=MATH_SUBSETS[bench.kind])


def problem_key(item) -> tuple[str, tuple[str, ...]]:
    """What makes two math rows the same problem: the question and its images."""
    return item.meta["question"], tuple(image_label(image) for image in item.images)


def check_apart(calibration: Benchmark, benchmarks: list[Benchmark]) -> None:
    """Refuse a calibration benchmark that is not math or shares a problem with an evaluated benchmark: a
    threshold picked on the evaluation's own problems would be fitted to them."""
    if calibration.kind != "math":
        raise UserError(f"--calibrate {calibration.name}: a {calibration.kind} benchmark; calibration needs math "
                        "problems")
    seen = {}
    for bench in benchmarks:
        for row, item in enumerate(bench.items):
            if bench.kind == "math":
                seen.setdefault(problem_key(item), (bench.name, row))
    for row, item in enumerate(calibration.items):
        if problem_key(item) in seen:
            name, other = seen[problem_key(item)]
            raise UserError(f"--calibrate {calibration.name}: row {row} ({item.meta['question'][:60]!r}) is also row "
                            f"{other} of benchmark {name}; calibration problems must be apart from the evaluation's")


def run_calibration(model, calibration: Benchmark, cfg: EvalConfig, *, out_dir: Path | None = None,
                    shard: Shard = Shard(), progress: Callable[[str], None] | None = None) -> dict:
    """The loop at reject_above = 0 on the calibration benchmark, and the threshold that maximises its accuracy
    there (spark.evaluation.calibration.calibrate; rank 0 writes calibration.json and calibration.png into
    out_dir)."""
    folder = out_dir / "calibration" if out_dir is not None else None
    if folder is not None and shard.writes:
        folder.mkdir(parents=True, exist_ok=True)
    records = evaluate_benchmark(model, calibration, replace(cfg, tts=True, reject_above=0.0), out_dir=folder,
                                 shard=shard, progress=progress)
    result = {"benchmark": calibration.name} | calibrate(paths([t for row in record_traces(records) for t in row]))
    if out_dir is not None and shard.writes:
        (out_dir / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
        draw_curve(result, out_dir / "calibration.png", f"TTS calibration on {calibration.name} ({result['n']} problems)")
    return result


def format_calibration(result: dict) -> str:
    return (f"calibration on {result['benchmark']} ({result['n']} problems): reject above {result['threshold']:.3f}, "
            f"accuracy with TTS {100 * result['accuracy']:.1f}% (without {100 * result['no_tts_accuracy']:.1f}%)")


def _check_config(out_dir: Path, config: dict) -> None:
    """Resuming mixes old and new records, so the settings must match those the old ones were made with."""
    path = out_dir / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != config:
            changed = ", ".join(f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in config.items()
                                if saved.get(key) != value)
            raise UserError(f"{out_dir} holds results made with other settings ({path}: {changed}); "
                            "use another --out or delete it")


def evaluate(
    model,
    benchmarks: list[Benchmark],
    cfg: EvalConfig,
    *,
    out_dir: str | Path | None = None,
    shard: Shard = Shard(),
    model_name: str = "model",
    progress: Callable[[str], None] | None = None,
    calibration: Benchmark | None = None,
) -> dict[str, dict]:
    """{NAME: summary} for every benchmark; rank 0 writes the outputs when out_dir is given. With a
    `calibration` benchmark (cfg.tts), the loop runs at the threshold picked on it (`run_calibration`), which
    the summaries' "calibration" entry reports."""
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise UserError(f"benchmark names must be unique, got {names} (rename one with :name=N)")
    if calibration is not None:
        check_apart(calibration, benchmarks)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        config = {"model": model_name} | {k: v for k, v in asdict(cfg).items() if k != "batch_size"}
        if calibration is not None:
            config["calibrate"] = calibration.name
        _check_config(out_dir, config)  # on every rank: one that stopped alone would leave the others waiting
        shard.gather(None)  # every rank has read config.json before rank 0 writes it
        if shard.writes:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    summaries = {}
    if calibration is not None:
        result = run_calibration(model, calibration, cfg, out_dir=out_dir, shard=shard, progress=progress)
        cfg = replace(cfg, reject_above=result["threshold"])
        if progress is not None:
            progress(format_calibration(result))
    for bench in benchmarks:
        records = evaluate_benchmark(model, bench, cfg, out_dir=out_dir, shard=shard, progress=progress)
        summaries[bench.name] = summarize(bench, records, cfg)
    if out_dir is not None and shard.writes:
        record = {"preset": cfg.preset, "mean_accuracy": mean_accuracy(summaries), "benchmarks": summaries}
        if calibration is not None:
            record["calibration"] = {k: v for k, v in result.items() if k != "curve"}
        (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
        (out_dir / "results.md").write_text(markdown_table(summaries, model_name) + "\n")
    return summaries


def evaluate_checkpoint(
    checkpoint: str,
    bench_specs: str,
    cfg: EvalConfig,
    *,
    data_dir: str | Path,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    dtype: str = "auto",
    calibrate: str | None = None,
    tensor_parallel: int = 1,
) -> dict[str, dict]:
    """Load the benchmarks and the checkpoint on this rank's device, evaluate, print the table (rank 0).
    `calibrate`: the spec of the benchmark whose problems pick the loop's threshold (`evaluate`).

    With `tensor_parallel` T > 1, each group of T ranks holds one model's pieces (spark.generation.tensor_parallel)
    and is one data-parallel shard: its ranks run the same rows in step."""
    from spark.generation.chat import load_chat_model
    from spark.generation.tensor_parallel import tensor_parallel_group

    created_group = not torch.distributed.is_initialized()
    world = init_distributed()
    try:
        group = tensor_parallel_group(tensor_parallel) if tensor_parallel > 1 else None
        shard = Shard(world.rank // tensor_parallel, world.size // tensor_parallel,
                      lambda obj: all_gather_objects(obj)[::tensor_parallel], world.rank % tensor_parallel)
        benchmarks = [parse_spec(spec, data_dir, limit=limit) for spec in split_specs(bench_specs)]
        calibration = parse_spec(calibrate, data_dir) if calibrate is not None else None
        if dtype == "auto":
            dtype = "bfloat16" if world.device.type == "cuda" else "float32"
        model = load_chat_model(checkpoint, device=str(world.device), dtype=getattr(torch, dtype),
                                tensor_parallel=group)
        log = (lambda message: print(message, flush=True)) if world.is_main else None
        summaries = evaluate(model, benchmarks, cfg, out_dir=out_dir, shard=shard,
                             model_name=Path(checkpoint).name, progress=log, calibration=calibration)
        if world.is_main:
            print(markdown_table(summaries, Path(checkpoint).name))
            for name, summary in summaries.items():
                if "tts" in summary:
                    print(f"\n{name}, test-time scaling by round:\n{format_rounds(summary['tts'])}")
            print(f"preset {cfg.preset}: mean of the benchmarks' accuracies {100 * mean_accuracy(summaries):.1f}")
        return summaries
    finally:
        if created_group:
            torch.distributed.destroy_process_group()
