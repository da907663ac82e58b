"""The worker processes that run the sympy checks, each under a deadline, and the verifier's counters.

The sympy part runs in a reusable pool of worker processes. A check that exceeds its timeout has its
worker killed and replaced; it scores 0 and is counted in `verifier_stats()`, never raised. A worker
that dies mid-check (killed from outside) is replaced and its check sent again, once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from spark.verify.equivalence import _compare


def _check(pred: str, gold: str) -> str:
    """The verdict of a worker process: "equal", "different" or "rejected" (would not finish)."""
    from spark.verify.sympy_check import TooLarge

    try:
        return "equal" if _compare(pred, gold, use_sympy=True) else "different"
    except TooLarge:
        return "rejected"
    except Exception:  # sympy raises many kinds of error on odd input; any of them means "not shown equal"
        return "different"


def _worker_main() -> None:
    """A worker process: answer each JSON [pred, gold] line on stdin with a verdict line on stdout."""
    # Ctrl-C and preemption notices (spark.preemption) are the parent's to handle; a worker ends when its input does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    _check("x+1", "1+x")  # import sympy and warm its caches before declaring readiness
    print("ready", flush=True)
    for line in sys.stdin:
        print(_check(*json.loads(line)), flush=True)


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    ready: bool = False


class _Pool:
    """Worker processes that run checks under a deadline; a worker past its deadline is killed and replaced.

    Workers are plain `python -c` subprocesses talking JSON lines over pipes: unlike multiprocessing's
    spawn or forkserver they never re-import the caller's main module (a trainer would drag torch into
    every worker), and unlike fork they are safe in a threaded caller. A deadline starts when a check is
    sent, so start-up time (importing sympy) is never charged to a check.
    """

    MAX_FAILED_STARTS = 3
    STARTUP_TIMEOUT = 120.0

    def __init__(self, size: int):
        self.failed_starts = 0
        self.workers = [self._start() for _ in range(size)]

    def _start(self) -> _Worker:
        repo_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-c", "from spark.verify.pool import _worker_main; _worker_main()"]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        return _Worker(process)

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.wait()
        with contextlib.suppress(OSError):  # input it will never read
            worker.process.stdin.close()
        worker.process.stdout.close()
        self.workers[self.workers.index(worker)] = self._start()

    def run(self, tasks: list[tuple[str, str]], timeout: float) -> list[str]:
        """The verdict of each (pred, gold) task, or "timeout" / "crashed" (its worker died twice on it)."""
        verdicts = [""] * len(tasks)
        queue = deque(range(len(tasks)))
        died_on: set[int] = set()  # tasks whose first worker died: sent once more
        running: dict[_Worker, tuple[int, float]] = {}  # worker -> (task index, deadline)
        while queue or running:
            for worker in self.workers:
                if queue and worker.ready and worker not in running:
                    i = queue.popleft()
                    try:
                        worker.process.stdin.write(json.dumps(tasks[i]) + "\n")
                        worker.process.stdin.flush()
                    except BrokenPipeError:  # the worker died while idle: the task waits for another
                        queue.appendleft(i)
                        self._replace(worker)
                        continue
                    running[worker] = (i, time.monotonic() + timeout)
            waiting = {w.process.stdout: w for w in self.workers if w in running or not w.ready}
            deadline = min((d for _, d in running.values()), default=time.monotonic() + self.STARTUP_TIMEOUT)
            readable = wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
            if not readable and not running:
                raise RuntimeError(f"spark.verify: no worker process started within {self.STARTUP_TIMEOUT:.0f} s")
            for stream in readable:
                worker = waiting[stream]
                message = stream.readline().strip()  # one whole line: a worker writes one line per task
                if message == "ready":
                    worker.ready, self.failed_starts = True, 0
                elif message:
                    verdicts[running.pop(worker)[0]] = message
                else:  # the worker died
                    if worker in running:
                        i = running.pop(worker)[0]
                        if i in died_on:
                            verdicts[i] = "crashed"
                        else:
                            died_on.add(i)
                            queue.append(i)
                            _stats["retried"] += 1
                    elif not worker.ready:
                        self.failed_starts += 1
                        if self.failed_starts >= self.MAX_FAILED_STARTS:
                            raise RuntimeError("spark.verify: worker processes keep dying at start-up")
                    self._replace(worker)
            now = time.monotonic()
            for worker, (i, deadline) in list(running.items()):
                if now >= deadline:
                    del running[worker]
                    verdicts[i] = "timeout"
                    self._replace(worker)
        return verdicts

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):  # a worker that already died
                worker.process.stdin.close()  # end of input: an idle worker exits
        for worker in self.workers:
            try:
                worker.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.process.stdout.close()


_pool: _Pool | None = None
_num_workers = min(4, os.cpu_count() or 1)
_lock = threading.Lock()
_stats: Counter[str] = Counter()
_STAT_KEYS = ("checked", "cheap", "sympy", "timeouts", "rejected", "crashed", "retried")
_FAILURES = {"timeout": "timeouts", "rejected": "rejected", "crashed": "crashed"}  # worker verdict -> counter


def _forget_pool_in_child() -> None:
    """A forked child must not talk to its parent's workers: it starts its own pool when it needs one."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def configure(num_workers: int) -> None:
    """Set the number of worker processes (default min(4, cpu count)); restarts the pool lazily."""
    global _num_workers
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    shutdown()
    _num_workers = num_workers


def shutdown() -> None:
    """Stop the worker processes (registered with atexit; the next check starts a new pool)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None


atexit.register(shutdown)


def verifier_stats() -> dict[str, int]:
    """Counters since import: rows checked, decided cheaply in the caller, sent to sympy workers,
    and how many of those timed out, were rejected as too large, or crashed their worker twice, and how
    many checks were sent again after their worker died."""
    return {key: _stats[key] for key in _STAT_KEYS}


def _batch_lock() -> threading.Lock:
    """The lock a batch holds while it is scored: batches from several threads share the pool and the
    counters. A function, not the name, because a forked child replaces the lock (`_forget_pool_in_child`)."""
    return _lock


def _run_checks(tasks: list[tuple[str, str]], timeout: float) -> list[str]:
    """The workers' verdicts on (pred, gold) tasks (see `_Pool.run`), counted; the pool starts on first use.
    The caller holds `_batch_lock()`."""
    global _pool
    _pool = _pool or _Pool(_num_workers)
    _stats["sympy"] += len(tasks)
    verdicts = _pool.run(tasks, timeout)
    for verdict in verdicts:
        if verdict in _FAILURES:
            _stats[_FAILURES[verdict]] += 1
    return verdicts
