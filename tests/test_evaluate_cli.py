"""evaluate.py end to end on a tiny checkpoint and real GSM8K rows: 1 and 2 ranks give the same summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

from spark.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    subprocess.run(command, check=True, cwd=ROOT, env=env, timeout=300)


def test_evaluate_gsm8k_on_one_and_two_ranks(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", seed=5)
    args = ["evaluate.py", "--model", str(checkpoint), "--bench", "gsm8k", "--limit", "20", "--max-new-tokens", "12"]
    run([sys.executable, *args, "--out", str(tmp_path / "one")])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
         "--out", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one == two
    assert one["gsm8k"]["n"] == 20
    rows = (tmp_path / "one" / "gsm8k.jsonl").read_text().splitlines()
    assert len(rows) == 20 and (tmp_path / "one" / "results.md").exists()
