"""The one-shot device check runs end to end (on CPU, tiny shapes), so a lent GPU is not spent on a broken script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["tests"]["skipped"] == 10 and not report["tests"]["failed"]  # no CUDA here: all skipped
    assert report["sampler"]["ours_eager_tok_s"] > 0 and report["sampler"]["hf_static_tok_s"] > 0
    step = report["trainer_step"]
    assert "error" not in step and step["update_tok_s"] > 0 and step["plan_fits"]
    assert report["vision"]["patches"] == 128 and report["vision"]["checkpointed_plan_gb"] > 0
    assert 0 < report["logprob_head"]["mean_abs_logp_diff"] < 1e-2
