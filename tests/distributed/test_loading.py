"""A checkpoint loaded straight into FSDP2 shards (spark.models.load_model's `prepare`): the same weights as a
plain load, and no rank reads more than its own rows."""

from __future__ import annotations

import json

from spark.models.tiny import make_tiny_checkpoint, make_tiny_vl_checkpoint
from tests.trainer_utils import torchrun


def test_three_ranks_read_each_element_once_and_gather_the_plain_weights(tmp_path):
    """Three ranks cut every dim 0 unevenly (the vocabulary of 367 rows: 123, 122, 122), and the fused q/k/v and
    gate/up rows across their parts."""
    paths = [make_tiny_checkpoint(tmp_path / "tied", tie=True, max_shard_size="40KB"),
             make_tiny_checkpoint(tmp_path / "untied", tie=False, seed=1),
             make_tiny_vl_checkpoint(tmp_path / "vl", seed=2)]
    torchrun(3, "tests/distributed/dist_loading.py", str(tmp_path / "result.json"), *map(str, paths))
    results = json.loads((tmp_path / "result.json").read_text())
    assert len(results) == 6
    for name, result in results.items():
        assert result["equal"], name
        assert result["read_all_ranks"] == result["checkpoint_elements"], name
        assert result["largest_read"] <= result["largest_shard"] < result["largest_tensor"], name
