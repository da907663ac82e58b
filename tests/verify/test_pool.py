"""Tests of bounded time (spark.verify.limits, spark.verify.pool): adversarial answers rejected or timed out
and counted, stuck checks killed, and workers that die replaced, their check sent again once."""

from __future__ import annotations

import signal
import time

import pytest

from spark.verify import is_correct, pool, score_batch, verifier_stats
from tests.verify.helpers import boxed, stats_delta

pytestmark = pytest.mark.usefixtures("warm_pool")


@pytest.mark.parametrize(
    ("answer", "counter", "timeout"),
    [
        ("10^{10^{10}}", "rejected", 1.0),
        ("2^{2^{2^{2^{2^{2}}}}}", "rejected", 1.0),
        ("(10^{5000})!", "rejected", 1.0),
        ("1" * 20_000, "rejected", 1.0),
        (r"\frac{1}{" * 60 + "2" + "}" * 60, "rejected", 1.0),
        ("(" * 5_000, "rejected", 1.0),
        # A 2.5-million-digit integer passes the size guards; its check takes far longer than 50 ms on any
        # machine, so its worker is killed.
        ("(996!)^{1000}", "timeouts", 0.05),
    ],
)
def test_adversarial_answers_are_bounded_and_counted(answer: str, counter: str, timeout: float):
    before = verifier_stats()
    start = time.monotonic()
    assert not is_correct(boxed(answer), "3", timeout=timeout)
    assert time.monotonic() - start < 3.0  # a guard against hangs, not a timing claim
    delta = stats_delta(before)
    assert delta["checked"] == 1 and delta[counter] == 1


def test_unbalanced_box_scores_zero():
    before = verifier_stats()
    assert score_batch([r"\boxed{\frac{1}{2}", r"\boxed{1}}}}"], [r"\frac12", "1"]) == [0.0, 1.0]
    assert stats_delta(before)["checked"] == 2


def test_stuck_checks_are_killed_counted_and_replaced():
    # (n!)^1000 passes the size guards but takes far over 50 ms: each worker is killed.
    responses = [boxed(f"({n}!)^{{1000}}") for n in (997, 998, 999)]
    before = verifier_stats()
    assert score_batch(responses, ["3"] * 3, timeout=0.05) == [0.0, 0.0, 0.0]
    delta = stats_delta(before)
    assert delta["timeouts"] == 3 and delta["sympy"] == 3
    assert score_batch([boxed(r"\frac{\cos t}{\sin t}")], [r"\cot t"]) == [1.0]  # replaced workers serve again


def test_a_worker_that_died_while_idle_is_replaced():
    assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")
    for worker in pool._pool.workers:
        worker.process.kill()
        worker.process.wait()
    assert score_batch([boxed(r"\sqrt{18}")] * 2, [r"3\sqrt2"] * 2) == [1.0, 1.0]


class KillAfterSend:
    """A worker's input that kills the worker as soon as a check has been sent to it: death mid-check."""

    def __init__(self, process):
        self.process, self.stdin = process, process.stdin

    def write(self, text: str) -> int:
        return self.stdin.write(text)

    def flush(self) -> None:
        # Stopped before the check reaches it, the worker cannot answer before it dies, however loaded the machine.
        self.process.send_signal(signal.SIGSTOP)
        self.stdin.flush()
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.stdin.close()


def test_a_worker_killed_mid_check_is_replaced_and_the_check_sent_again():
    pool.configure(1)  # one worker, ready: the batch's first check goes to it, whatever the timing
    try:
        assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")
        (worker,) = pool._pool.workers
        worker.process.stdin = KillAfterSend(worker.process)
        before = verifier_stats()
        assert score_batch([boxed(r"\sqrt{18}"), boxed(r"\sqrt{12}"), boxed(r"\sqrt{20}")],
                           [r"3\sqrt2", r"2\sqrt3", r"3\sqrt2"]) == [1.0, 1.0, 0.0]
        delta = stats_delta(before)
        assert delta["retried"] == 1 and delta["crashed"] == 0 and delta["sympy"] == 3
    finally:
        pool.configure(2)


def test_shutdown_stops_every_worker():
    assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")
    processes = [worker.process for worker in pool._pool.workers]
    pool.shutdown()
    assert all(process.poll() is not None for process in processes)
    assert is_correct(boxed(r"\sqrt{8}"), r"2\sqrt2")  # a new pool starts on demand
