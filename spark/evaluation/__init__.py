"""Evaluation: math benchmarks (accuracy, pass@n, self-judgment, test-time scaling) and reward benchmarks
with the model as its own judge. loaders: files -> items; inference: items -> records; scoring: records
-> numbers; runner: shards, resumable outputs, summary and table."""

from spark.evaluation.inference import EvalConfig
from spark.evaluation.loaders import Benchmark, FieldMap, parse_spec, split_specs
from spark.evaluation.runner import Shard, evaluate, evaluate_checkpoint

__all__ = ["Benchmark", "EvalConfig", "FieldMap", "Shard", "evaluate", "evaluate_checkpoint", "parse_spec",
           "split_specs"]
