"""Evaluating a model on benchmarks: data-parallel shards, resumable outputs, summary and table.

Outputs in OUT_DIR: NAME.jsonl (one record per row, with every generation, its extracted answer and
score), summary.json ({"preset": ..., "mean_accuracy": ..., "benchmarks": {NAME: {"accuracy": ..., "n": ...,
...}}}; mean_accuracy: the mean of the benchmarks' accuracies), results.md (the paper-style table) and
config.json (the settings; a resumed run must use the same ones).

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spark.data.rows import read_records
from spark.distributed.groups import all_gather_objects, init_distributed
from spark.errors import DataError, UserError
from spark.evaluation.inference import RUNS, EvalConfig
from spark.evaluation.loaders import Benchmark, parse_spec, split_specs
from spark.evaluation.scoring import markdown_table, mean_accuracy, summarize_judge, summarize_math
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
        if shard.rank == 0 and path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in new)
        done.update((record["index"], record) for record in new)
        if progress is not None:
            progress(f"{bench.name}: {len(done)}/{len(bench.items)}")
    return [done[i] for i in range(len(bench.items))]


def summarize(bench: Benchmark, records: list[dict], cfg: EvalConfig) -> dict:
    if bench.kind == "math":
        return summarize_math(records, tts_rounds=cfg.max_rounds if cfg.tts else None)
    return summarize_judge(records, math_subset=MATH_SUBSETS[bench.kind])


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
) -> dict[str, dict]:
    """{NAME: summary} for every benchmark; rank 0 writes the outputs when out_dir is given."""
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise UserError(f"benchmark names must be unique, got {names} (rename one with :name=N)")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        config = {"model": model_name} | {k: v for k, v in asdict(cfg).items() if k != "batch_size"}
        _check_config(out_dir, config)  # on every rank: one that stopped alone would leave the others waiting
        shard.gather(None)  # every rank has read config.json before rank 0 writes it
        if shard.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    summaries = {}
    for bench in benchmarks:
        records = evaluate_benchmark(model, bench, cfg, out_dir=out_dir, shard=shard, progress=progress)
        summaries[bench.name] = summarize(bench, records, cfg)
    if out_dir is not None and shard.rank == 0:
        record = {"preset": cfg.preset, "mean_accuracy": mean_accuracy(summaries), "benchmarks": summaries}
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
) -> dict[str, dict]:
    """Load the benchmarks and the checkpoint on this rank's device, evaluate, print the table (rank 0)."""
    from spark.generation.chat import load_chat_model

    created_group = not torch.distributed.is_initialized()
    world = init_distributed()
    shard = Shard(world.rank, world.size, all_gather_objects)
    try:
        benchmarks = [parse_spec(spec, data_dir, limit=limit) for spec in split_specs(bench_specs)]
        if dtype == "auto":
            dtype = "bfloat16" if world.device.type == "cuda" else "float32"
        model = load_chat_model(checkpoint, device=str(world.device), dtype=getattr(torch, dtype))
        log = (lambda message: print(message, flush=True)) if world.is_main else None
        summaries = evaluate(model, benchmarks, cfg, out_dir=out_dir, shard=shard,
                             model_name=Path(checkpoint).name, progress=log)
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
