"""The device check (benchmarks/gpu_check.py) on CPU, so that a lent GPU is not spent on a broken script: a failing,
crashing or hanging section is recorded and the others still report; the helpers the device alone would reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spark.models.qwen2 import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_sections as sections  # noqa: E402


def run_check(out: Path, *args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """The command as a user runs it (PYTHONPATH=. python benchmarks/gpu_check.py --cpu ...) and its report."""
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--out", str(out), "--work",
                           str(out / "work"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, json.loads((out / "gpu_check.json").read_text())


def summary_lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    lines = [line.split(maxsplit=2) for line in proc.stdout.splitlines() if line.startswith("gpu_check: ")]
    return {words[1]: words[2] for words in lines if words[1] in {s.name for s in gpu_check.SECTIONS}}


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path):
    proc, report = run_check(tmp_path, "--only", "preflight,vision,head,plan", "--fail", "vision", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a section failed
    sections_ = report["sections"]
    assert list(sections_) == ["preflight", "vision", "head", "plan"]
    assert list(summary_lines(proc)) == list(sections_)  # one line per section, as each ends
    failed = sections_["vision"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: forced failure (--fail raise)"
    assert "inject_failure" in failed["traceback"] and "forced failure" in failed["log_tail"]
    assert sections_["preflight"]["status"] == "ok" and sections_["preflight"]["result"]["cuda"] is False
    assert sections_["preflight"]["result"]["compile_probe"]["skipped"].startswith("needs CUDA")
    head = sections_["head"]
    assert head["status"] == "ok" and 0 < head["result"]["mean_abs_logp_diff"] < 1e-2
    planned = sections_["plan"]["result"]
    assert planned["train"]["fits"] and planned["vision"]["plain"]["plan_gb"] > planned["vision"]["checkpointed"][
        "plan_gb"] > 0
    assert all(s["seconds"] < s["limit_s"] for s in sections_.values())


@pytest.mark.slow
def test_a_crash_and_a_hang_end_their_sections_only(tmp_path):
    """A segfault and a section past its time limit (its stacks dumped into the log), then a rerun of just the
    failed sections into the same report."""
    proc, report = run_check(tmp_path, "--only", "preflight,head,plan", "--fail", "preflight:hang,head:crash",
                             "--section-limit", "20", timeout=300)
    assert proc.returncode == 1
    hung, crashed = report["sections"]["preflight"], report["sections"]["head"]
    assert hung["status"] == "timeout" and "inject_failure" in hung["log_tail"], hung
    assert 20 <= hung["seconds"] < 20 + gpu_check.GRACE_S
    assert crashed["status"] == "failed" and crashed["error"] == "killed by SIGSEGV", crashed
    assert "Segmentation fault" in crashed["log_tail"]
    assert report["sections"]["plan"]["status"] == "ok"
    proc, report = run_check(tmp_path, "--only", "preflight,head")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [report["sections"][s]["status"] for s in ("preflight", "head", "plan")] == ["ok"] * 3
    assert [run["sections"] for run in report["runs"]] == [["preflight", "head", "plan"], ["preflight", "head"]]


@pytest.mark.slow
def test_every_section_runs_on_cpu(tmp_path):
    proc, report = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = {name: entry["result"] for name, entry in report["sections"].items()}
    assert {entry["status"] for entry in report["sections"].values()} == {"ok"}
    assert result["tests"]["skipped"] == 11 and result["tests"]["passed"] == 0  # no CUDA here: all skipped
    sampler = result["sampler"]
    assert all(sampler[part]["tok_s"] > 0 for part in ("eager", "transformers", "compiled"))
    assert sampler["compiled"]["recompiles"] == 0 and sampler["decode_read_gb"] > 0
    assert [result["train"][step]["update_tok_s"] > 0 for step in ("step1", "step2")] == [True, True]
    planned = result["plan"]["train"]["items"]
    for item, size in result["train"]["tensors_gb"].items():  # the resident tensors are as the plan counts them
        assert size == pytest.approx(planned[item]["plan_gb"], rel=0.05), item


def test_sections_and_their_runs_agree():
    assert [s.name for s in gpu_check.SECTIONS] == list(sections.RUNS)
    assert [s.name for s in gpu_check.selected("sampler,preflight", None)] == ["preflight", "sampler"]
    assert [s.name for s in gpu_check.selected(None, "tests,sampler")] == ["preflight", "train", "vision", "head",
                                                                           "plan", "offload"]
    with pytest.raises(SystemExit, match="unknown section smapler"):
        gpu_check.selected("smapler", None)
    assert gpu_check.failures("vision,head:hang") == {"vision": "raise", "head": "hang"}


def test_exit_reasons():
    assert gpu_check.exit_reason(None, 75.0, 60.0)[0] == "timeout"
    assert gpu_check.exit_reason(-11, 3.0, 60.0) == ("failed", "killed by SIGSEGV")
    assert gpu_check.exit_reason(1, 60.5, 60.0)[0] == "timeout"  # faulthandler's exit at the limit
    assert gpu_check.exit_reason(1, 3.0, 60.0) == ("failed", "exited with status 1")


def test_hbm_bound_reads_spark_model_config():
    """The decode bound's bytes from the 1.5B shape's config (transformers' Qwen2Config has no head_dim)."""
    cfg = ModelConfig.from_hf(sections.model_config("gpu"))
    weights = 3_000_000_000
    per_token = 28 * 2 * 2 * 128 * 2  # layers x (k, v) x kv heads x head_dim x bf16
    expected = 256 * weights + 64 * per_token * sum(256 + step for step in range(256))
    assert sections.decode_read_bytes(cfg, weights, rows=64, prompt=256, new=256) == expected


def test_test_outcomes_are_saved_as_they_come(tmp_path):
    """The tests section's recorder writes each outcome when it comes: a run killed at its time limit keeps them
    (the third test reads the file while the run is still going)."""
    ctx = sections.Context("tests", "cpu", torch.device("cpu"), tmp_path, tmp_path)
    (tmp_path / "test_sample.py").write_text(
        "import json, pytest\n"
        "def test_a():\n    pass\n"
        "def test_b():\n    pytest.skip('no device')\n"
        f"def test_c():\n    saved = json.load(open({str(ctx.path)!r}))['result']\n"
        "    assert saved['running'].endswith('test_c') and saved['passed'] == saved['skipped'] == 1\n"
        "    assert 0, 'seen'\n")
    pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                plugins=[sections.TestRecorder(ctx)])
    saved = json.loads(ctx.path.read_text())["result"]
    assert [saved[k] for k in ("passed", "failed", "error", "skipped")] == [1, 1, 0, 1]
    assert saved["tests"]["test_sample.py::test_b"]["reason"].endswith("no device")
    assert "AssertionError: seen" in saved["tests"]["test_sample.py::test_c"]["error"]


def test_a_failing_part_is_recorded_and_the_section_goes_on(tmp_path, monkeypatch):
    """A part that fails (a compile without a C compiler, say) costs only its own figures."""
    def without_cuda():
        raise sections.Skip("needs CUDA")

    def section(ctx):
        ctx.part("cuda_graphs", lambda: 1 / 0)
        ctx.part("eager", lambda: {"tok_s": 1.0})
        ctx.part("probe", without_cuda)

    monkeypatch.setitem(sections.RUNS, "sampler", section)
    ctx = sections.Context("sampler", "cpu", torch.device("cpu"), tmp_path, tmp_path)
    sections.run(ctx, fail=None)
    record = json.loads(ctx.path.read_text())
    assert record["status"] == "partial" and record["failed_parts"] == ["cuda_graphs"]
    assert record["result"]["cuda_graphs"]["error"] == "ZeroDivisionError: division by zero"
    assert record["result"]["eager"]["tok_s"] == 1.0 and record["result"]["probe"]["skipped"] == "needs CUDA"
    sampler = next(s for s in gpu_check.SECTIONS if s.name == "sampler")
    line = gpu_check.summary_line(sampler, {**record, "seconds": 1.0})
    assert "eager.tok_s=1.0" in line and "[cuda_graphs: ZeroDivisionError: division by zero]" in line
