"""Ctrl-C and SIGTERM in a training: stop after the current step with a checkpoint, not wherever the signal lands.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives. Inside a finaliser (`__del__`,
a weakref callback) it is printed as "Exception ignored" and dropped, and the training goes on; inside
torch.distributed.checkpoint it comes back wrapped in a CheckpointException. So in a one-process run, while
the step loop runs, the first SIGINT or SIGTERM only sets `requested`: the trainer checks it after each step,
saves a checkpoint there and raises `Stopped` (a KeyboardInterrupt) itself. The handler then gives the signal
back, so a second one acts at once. SIGTERM is what a scheduler sends before it kills a job (Kubernetes, Slurm
preemption): the run stops in its grace period with its last step checkpointed and its MLflow run KILLED.

Under torchrun the ranks would have to agree on the step to stop at, so each worker stops at once instead:
the terminal's SIGINT already raises KeyboardInterrupt, and SIGTERM (what the launcher sends its workers when
it is stopped) raises `Stopped` in place of dying, so the tracked run is closed as KILLED with its queued
metrics. A resume starts from the last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Stopped(KeyboardInterrupt):
    """The training was stopped by a signal; `signum` says which (SIGINT for Ctrl-C, or SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    def __reduce__(self):  # DCP sends a rank's exception to rank 0 pickled
        return type(self), (self.signum,)


def stop_signal(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM for a `Stopped` by it, else SIGINT."""
    return getattr(exc, "signum", int(signal.SIGINT))


class StopSignals(contextlib.AbstractContextManager):
    """`graceful`: the first SIGINT/SIGTERM sets `requested` (and `signum`); else SIGTERM raises `Stopped` at once.

    Only installed on the main thread, and for each signal only where its default handler is in place (not
    under a test runner's or an embedding application's own).
    """

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self, graceful: bool = True) -> None:
        self.graceful = graceful
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum, default in self.DEFAULTS.items():
            if signal.getsignal(signum) is not default or (signum == signal.SIGINT and not self.graceful):
                continue
            self._previous[signum] = signal.signal(signum, self._handle if self.graceful else self._raise)
        return self

    def _handle(self, signum, frame) -> None:  # no I/O here: it runs between two bytecodes of anything
        self.requested, self.signum = True, int(signum)
        signal.signal(signum, self._previous[signum])

    def _raise(self, signum, frame) -> None:
        signal.signal(signum, self._previous[signum])
        raise Stopped(signum)

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


__all__ = ["Stopped", "StopSignals", "stop_signal"]
