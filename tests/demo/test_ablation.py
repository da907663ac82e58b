"""benchmarks/ablation.py end to end at toy size: every row trains from the same start and is measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from spark.demo import pipeline as demo

ROOT = Path(__file__).resolve().parents[2]


def load_ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aggregate_and_table():
    ablation = load_ablation()
    results = [dict.fromkeys(ablation.METRICS, 0.5), dict.fromkeys(ablation.METRICS, 0.7)]
    figures = ablation.aggregate(results)
    assert figures["tts_acc"] == [pytest.approx(0.6), pytest.approx(0.1414, abs=1e-4)]
    table = ablation.markdown({"spark-answer": figures}, seeds=2)
    assert "| spark-answer | 0.600 ± 0.141 |" in table and "| 0.6 ± 0.1 |" in table  # fixed / broke are counts


def test_toy_ablation_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs/tiny.toml
    setup = demo.DemoSetup(num_train=40, num_heldout=4, num_judge=4, num_probe=2, warmup_target=0.0,
                           warmup_check_every=1, warmup_batch=4)
    demo.prepare(tmp_path / "start", setup, demo.DemoModel(hidden_size=32, num_layers=1))
    data = tmp_path / "start" / "data"
    overrides = [f"model.path={json.dumps(str(tmp_path / 'start' / 'warmup'))}",
                 f"data.train_files=[{json.dumps(str(data / 'train.jsonl'))}]",
                 f"run.eval_files=[{json.dumps(str(data / 'heldout.jsonl'))}]",
                 f"run.judge_eval_files=[{json.dumps(str(data / 'judge.jsonl'))}]",
                 "data.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8", "run.eval_max_new_tokens=8"]
    out = tmp_path / "ablation"
    summary = load_ablation().main(["--steps", "1", "--seeds", "0", "1", "--rows", "policy-only", "spark-answer",
                                    "--out", str(out), *overrides])
    assert list(summary["rows"]) == ["policy-only", "spark-answer"]
    for figures in summary["rows"].values():
        assert all(0.0 <= mean <= 4 and spread >= 0 for mean, spread in figures.values())
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "ablation.md").read_text().count("\n") == 4
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["policy-only-s0", "policy-only-s1",
                                                                   "spark-answer-s0", "spark-answer-s1"]
