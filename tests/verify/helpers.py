"""Helpers shared by the verifier's tests (tests/verify)."""

from __future__ import annotations

from spark.verify import verifier_stats


def boxed(answer: str) -> str:
    return "Let me work through it.\nSo the final answer is $\\boxed{" + answer + "}$."


def stats_delta(before: dict[str, int]) -> dict[str, int]:
    return {key: value - before[key] for key, value in verifier_stats().items()}
