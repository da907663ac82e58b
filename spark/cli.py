"""What the command lines (train.py, evaluate.py, tts.py, `python -m spark.plan`) share.

A mistake in what a program was given (`spark.errors.UserError`: a bad config, flag or data row, a missing or
broken checkpoint) is printed as one line, `error: ...`, and the program exits with status 2, without a
traceback; `--debug` or SPARK_DEBUG=1 shows the traceback. A run that cannot go on (`spark.errors.RunStopped`:
its updates diverged) is printed the same way and exits with status 3. Any other exception is a bug and keeps its
traceback.
Ctrl-C outside a training step (where `spark.distributed.preemption` handles it) ends the program with one line and status
130.

Under torchrun every rank finds a mistake in the config or the data alike, so the line is printed once: by the
first rank to find it (the process group's store counts), or by rank 0 before there is a process group.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable

import torch.distributed as dist

from spark.errors import RunStopped, SettingError, UserError

DEBUG_FLAG, DEBUG_ENV = "--debug", "SPARK_DEBUG"
USER_ERROR, RUN_STOPPED, INTERRUPTED = 2, 3, 130
REPORTED_KEY = "spark/user_error_reported"


class UsageError(UserError):
    """A bad flag or argument."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageErrors (one line, printed once under torchrun), with --debug listed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true",
                          help=f"show the traceback of a mistake in the input (or set {DEBUG_ENV}=1)")

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


def flag_error(prog: str, error: SettingError) -> UsageError:
    """A setting made from a flag and out of its range, named as the flag (`max_new_tokens` -> --max-new-tokens)."""
    return UsageError(f"{prog}: --{error.name.replace('_', '-')} {error.value} {error.rule}")


def run_command(main: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run `main(argv)` (without --debug); the exit status: 0, USER_ERROR after a UserError, RUN_STOPPED after a
    RunStopped, INTERRUPTED after Ctrl-C."""
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    had_group = dist.is_initialized()  # one that main did not make (a test calling main) is not main's to end
    try:
        main([arg for arg in argv if arg != DEBUG_FLAG])
    except UserError as e:
        if debug:
            raise
        status, line = USER_ERROR, f"error: {e}"
    except RunStopped as e:
        if debug:
            raise
        status, line = RUN_STOPPED, f"stopped: {e}"
    except KeyboardInterrupt:
        if debug:
            raise
        status, line = INTERRUPTED, "interrupted"
    else:
        return 0
    if first_to_report():
        print(line, file=sys.stderr, flush=True)
    if not had_group:
        leave_process_group()
    return status


def first_to_report() -> bool:
    """Whether this process prints the line: the first rank to ask the process group's store, or without a group
    of several, rank 0."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        try:
            return dist.distributed_c10d._get_default_store().add(REPORTED_KEY, 1) == 1
        except RuntimeError:  # the store went with a peer: better twice than not at all
            return True
    return os.environ.get("RANK", "0") == "0"


def leave_process_group() -> None:
    """Destroy the process group of a program that ends early, without waiting for its peers: a gloo group still
    held at interpreter exit can abort the process (spark.distributed.groups.close_distributed)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
