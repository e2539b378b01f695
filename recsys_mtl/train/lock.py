"""One training per output_dir at a time: rank 0 holds an exclusive lock on `<output_dir>/.lock`.

The lock is an OS file lock (flock), so the kernel drops it when its process ends in any way, SIGKILL
included: a crashed run never leaves a stale lock, and a run whose workers are still alive (say, a
launcher killed while its workers train on) stops a second run from writing the same checkpoints and
train log alongside them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from recsys_mtl.config.loader import ConfigError

LOCK_FILE = ".lock"


class OutputDirLock:
    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "OutputDirLock":
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only folder or file system, a file where the folder should be
            raise ConfigError(f"train.output_dir {self.path.parent}: cannot write there ({exc.strerror}: "
                              f"{exc.filename}); set train.output_dir to a folder this user can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"train.output_dir {self.path.parent} is in use by another training ({holder}): wait for it "
                "to end or stop it, or set train.output_dir to another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["OutputDirLock", "LOCK_FILE"]
