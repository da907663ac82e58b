"""FSDP2 units: the parts outside the blocks as units of their own."""

from __future__ import annotations

import json

import pytest

from tests.trainer_utils import torchrun


@pytest.mark.slow
@pytest.mark.parametrize("precision", [[], ["--mixed-precision"]], ids=["fp32", "bf16"])
def test_own_units_halve_the_largest_reduce_scatter(precision):
    """benchmarks/root_gradients.py on 2 ranks: with the embedding and the head in the root, the root's
    reduce-scatter takes both gradients (and the norm's) at once; as units of their own, one at a time."""
    result = json.loads(torchrun(2, "benchmarks/root_gradients.py", *precision).stdout.strip().splitlines()[-1])
    root, own = result["root"], result["own units"]
    head = result["own units"]["largest_root_part_bytes"] // 4  # elements of the [vocab, hidden] head
    per_element = 8 if not precision else 6  # the gradient and its flat fp32 copy
    assert own["largest_reduce_bytes"] == head * per_element
    assert root["largest_reduce_bytes"] == (2 * head + 64) * per_element  # embedding, head, final norm
