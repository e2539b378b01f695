"""Training progress on rank 0: a tqdm bar on a terminal, a log line every so often in a log file.

On a terminal, log records (the eval lines, checkpoints) are printed above the bar through tqdm, so a
line never lands on the bar's. When stderr is a file or a pipe (a batch job's log), a carriage-return
bar would glue every log line onto a redrawn bar, so the progress is logged instead, at most every
`interval_s` seconds:

    progress: step 120/621 (19%), 11,400 samples/s, loss 0.2650
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress(contextlib.AbstractContextManager):
    def __init__(self, total: int | None, initial: int, *, interactive: bool | None = None,
                 interval_s: float = 30.0) -> None:
        self.total, self.step, self.interval_s = total, initial, interval_s
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.rate: float | None = None
        self.loss: float | None = None
        self._bar = None
        self._redirect: contextlib.AbstractContextManager | None = None
        self._last_line = time.monotonic()

    def __enter__(self) -> "Progress":
        if self.interactive:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                             mininterval=1.0)
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._redirect.__exit__(None, None, None)
            self._bar.close()
            self._bar = None

    def stats(self, samples_per_second: float, loss: float) -> None:
        """The figures shown from now on (the trainer updates them every log_every steps)."""
        self.rate, self.loss = samples_per_second, loss
        if self._bar is not None:
            self._bar.set_postfix(step=self.step, samples_s=f"{samples_per_second:,.0f}", loss=f"{loss:.4f}")

    def advance(self) -> None:
        """One step trained."""
        self.step += 1
        if self._bar is not None:
            self._bar.update(1)
        elif time.monotonic() - self._last_line >= self.interval_s:
            self._last_line = time.monotonic()
            log.info("progress: %s", self.line())

    def line(self) -> str:
        parts = [f"step {self.step}" if self.total is None else
                 f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"]
        if self.rate is not None:
            parts.append(f"{self.rate:,.0f} samples/s, loss {self.loss:.4f}")
        return ", ".join(parts)


__all__ = ["Progress"]
