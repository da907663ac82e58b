from __future__ import annotations

import pytest

from spark.data.rows import Sample
from spark.rl.rollout import Experience, overlong_penalty, varied


def test_overlong_penalty_grows_linearly_over_the_buffer():
    # max_new_tokens 100, buffer 20: free up to 80 tokens, then -penalty * (length - 80) / 20
    assert [overlong_penalty(n, 100, 20, 1.0) for n in (50, 80, 90, 100)] == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(95, 100, 20, 0.5) == pytest.approx(-0.5 * 15 / 20)
    assert overlong_penalty(100, 100, 0, 1.0) == 0.0  # buffer 0: off


def test_a_group_of_equal_rewards_is_not_varied():
    def group(*rewards):
        return [Experience(Sample("q", "1"), [1], [2], "r", reward, False) for reward in rewards]

    assert varied(group(1.0, 0.0, 1.0)) and not varied(group(1.0, 1.0)) and not varied(group(0.0, 0.0, 0.0))
