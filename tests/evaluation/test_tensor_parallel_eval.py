"""evaluate.py and tts.py with --tensor-parallel under torchrun: the ranks of a group hold the model's pieces and
run the same rows in step, and the outputs are those of one plain process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark.models.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(command, check=True, cwd=ROOT, env=env, timeout=300, capture_output=True, text=True).stdout


def torchrun(*args: str) -> str:
    return run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args)


def records(folder: Path) -> list[dict]:
    return sorted((json.loads(line) for line in (folder / "toy.jsonl").read_text().splitlines()),
                  key=lambda record: record["index"])


@pytest.mark.slow
def test_evaluate_and_tts_with_two_ranks_of_one_group_match_one_process(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", seed=5)
    toy = tmp_path / "toy.jsonl"
    toy.write_text("".join(json.dumps({"q": f"What is {i} + 1?", "a": str(i + 1)}) + "\n" for i in range(5)))
    args = ["evaluate.py", "--model", str(checkpoint), "--bench", f"file:{toy}:question=q,answer=a",
            "--max-new-tokens", "10", "--temperature", "1", "--judge"]
    run(sys.executable, *args, "--out", str(tmp_path / "one"))
    torchrun(*args, "--tensor-parallel", "2", "--out", str(tmp_path / "two"))
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(one) == 5 and one == two  # every row once (written by one rank), with the same sampled answers
    assert (json.loads((tmp_path / "one" / "summary.json").read_text())
            == json.loads((tmp_path / "two" / "summary.json").read_text()))

    question = ["tts.py", "--model", str(checkpoint), "--question", "What is 2 + 2?", "--gold", "4",
                "--max-new-tokens", "10", "--temperature", "1"]
    alone = run(sys.executable, *question)
    assert torchrun(*question, "--tensor-parallel", "2") == alone and "Preset: ours" in alone
