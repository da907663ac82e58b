"""evaluate.py end to end: a tiny checkpoint on real GSM8K rows (1 and 2 ranks give the same summary), and a
tiny VL checkpoint on benchmarks in their hub Parquet schemas."""

import json
import os
import subprocess
import sys
from pathlib import Path

from spark.models.tiny import make_tiny_checkpoint, make_tiny_vl_checkpoint
from tests.data.test_hub_data import MATHVISTA, VLRB, mathvista_row, vlrb_row, write

ROOT = Path(__file__).resolve().parents[2]


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
    assert one["benchmarks"]["gsm8k"]["n"] == 20 and one["preset"] == "ours"
    rows = (tmp_path / "one" / "gsm8k.jsonl").read_text().splitlines()
    assert len(rows) == 20 and (tmp_path / "one" / "results.md").exists()


def test_evaluate_vl_benchmarks_in_hub_parquet(tmp_path):
    """A tiny Qwen2.5-VL over a MathVista-schema and a VL-RewardBench-schema Parquet, images embedded."""
    checkpoint = make_tiny_vl_checkpoint(tmp_path / "vl", seed=2)
    mathvista = write(tmp_path / "testmini-00000-of-00001.parquet", [
        mathvista_row("1", "multi_choice", "text", "5", choices=["3", "5", "7"]),
        mathvista_row("2", "free_form", "float", "1.5", precision=1.0)], MATHVISTA)
    vlrb = write(tmp_path / "vlrb.parquet", [vlrb_row(3, "mathverse_1", [1, 0]), vlrb_row(4, "povid_2", [0, 1])], VLRB)
    run([sys.executable, "evaluate.py", "--model", str(checkpoint), "--max-new-tokens", "4", "--out", str(tmp_path / "out"),
         "--bench", f"mathvista:{tmp_path}/testmini-*.parquet,vlrb:{vlrb},mathvista:{mathvista}:name=mv"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["benchmarks"]
    assert list(summary) == ["mathvista", "vlrb", "mv"]
    assert summary["mathvista"]["n"] == summary["mv"]["n"] == summary["vlrb"]["n"] == 2
    assert summary["mathvista"] == summary["mv"]
    records = [json.loads(line) for line in (tmp_path / "out" / "mathvista.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in records] == ["B", "1.5"]
    assert all(r["images"][0].startswith("<embedded image") for r in records)
