"""Preemption notices: SIGTERM (what SLURM and Kubernetes send before killing a job) and SIGUSR1 (SLURM's
`--signal=USR1@<seconds>`) ask the run to stop at the end of the current step, after a checkpoint.

The handler only records that a signal came: the step in progress and the checkpoint save run to the end,
and a second signal during the save changes nothing, so the checkpoint is never torn by one. Ranks agree
on stopping at the step's end (the trainer reduces `requested` over ranks), since a scheduler may signal
them at slightly different times.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While installed, SIGNALS set `received` (the first signal's name) instead of ending the process."""

    def __init__(self):
        self.received: str | None = None
        self.previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # Python delivers signals there only
            return
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        again = self.received is not None
        self.received = self.received or name
        # os.write, not print: a handler may run in the middle of another print to the same stream.
        message = f"{name} received again: still finishing the checkpoint" if again else \
            f"{name} received: stopping after this step, with a checkpoint"
        os.write(2, f"[rank {os.environ.get('RANK', '0')}] {message}\n".encode())
