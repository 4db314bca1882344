"""An exclusive flock on a file, waited for with a deadline instead of forever."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

POLL = 0.05


class LockBusyError(TimeoutError):
    """Somebody else held the lock past the deadline."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on PATH (created if missing) for the body."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockBusyError(f"{path} stayed locked for {timeout:g}s") from None
                time.sleep(POLL)
        yield
    finally:
        os.close(fd)
