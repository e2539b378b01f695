"""Ctrl-C in a one-process training: stop after the current step with a checkpoint, not wherever the signal lands.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives. Inside a finaliser (`__del__`,
a weakref callback) it is printed as "Exception ignored" and dropped, and the training goes on; inside
torch.distributed.checkpoint it comes back wrapped in a CheckpointException. So while the step loop runs,
the first Ctrl-C only sets `requested`: the trainer checks it after each step, saves a checkpoint there and
raises KeyboardInterrupt itself. The handler then gives SIGINT back, so a second Ctrl-C interrupts at once.

Under torchrun the terminal's SIGINT reaches the launcher, which stops the workers; they keep the default.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class CtrlCStop(contextlib.AbstractContextManager):
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous = None

    def __enter__(self) -> "CtrlCStop":
        # only where Python's own handler is in place (not under a test runner's or an embedding app's)
        if (self.enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # no I/O here: it runs between two bytecodes of anything
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


__all__ = ["CtrlCStop"]
