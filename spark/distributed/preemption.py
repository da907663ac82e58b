"""Stop requests: SIGTERM (what SLURM and Kubernetes send before killing a job), SIGUSR1 (SLURM's
`--signal=USR1@<seconds>`) and SIGINT (Ctrl-C) ask the run to stop at the end of the current step, after a
checkpoint.

The handler only records that a signal came: the step in progress and the checkpoint save run to the end,
and a second SIGTERM or SIGUSR1 during the save changes nothing, so the checkpoint is never torn by one. A
second Ctrl-C is a person who does not want to wait: it aborts at once (KeyboardInterrupt), and the last
checkpoint is intact since checkpoints are published whole (spark.distributed.checkpointing). torchrun's agent forwards the
Ctrl-C it gets to ranks that got it from the terminal too, so a second SIGINT within SAME_PRESS_S of the first
is the same press. Ranks agree on stopping at the step's end (the trainer reduces `requested` over ranks), since
a scheduler may signal them at slightly different times.
"""

from __future__ import annotations

import os
import signal
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
SAME_PRESS_S = 1.0


class StopSignals:
    """While installed, SIGNALS set `received` (the first signal's name) instead of ending the process; a second
    Ctrl-C raises KeyboardInterrupt."""

    def __init__(self):
        self.received: str | None = None
        self.received_at = 0.0  # time.monotonic() of the first signal
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
        if again and signum == signal.SIGINT and time.monotonic() - self.received_at >= SAME_PRESS_S:
            self.restore()
            raise KeyboardInterrupt
        if not again:
            self.received, self.received_at = name, time.monotonic()
        # os.write, not print: a handler may run in the middle of another print to the same stream.
        if again:
            message = f"{name} received again: still finishing the checkpoint"
        else:
            message = f"{name} received: stopping after this step, with a checkpoint" + \
                      (" (Ctrl-C again aborts at once)" if signum == signal.SIGINT else "")
        os.write(2, f"[rank {os.environ.get('RANK', '0')}] {message}\n".encode())
