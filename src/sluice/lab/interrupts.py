"""Ctrl-C, SIGTERM and SIGHUP during commands that must clean up after themselves."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
Handler = Callable[[int, "FrameType | None"], None] | signal.Handlers


class Terminated(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived during `up`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """Turns SIGINT, SIGTERM and SIGHUP into Terminated, and remembers them.

    An exception raised by a signal handler can be lost: Python drops it when the handler
    runs inside a callback whose errors are ignored (fork hooks, finalizers). The signal
    is therefore also recorded, and `check()`, called after every step, raises it again.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        raise Terminated(signum)

    def check(self) -> None:
        if self.received is not None:
            raise Terminated(self.received)

    def raising(self) -> contextlib.AbstractContextManager[None]:
        return _handled_by(self._handle)


def ignoring_interrupts() -> contextlib.AbstractContextManager[None]:
    return _handled_by(signal.SIG_IGN)


@contextlib.contextmanager
def _handled_by(handler: Handler) -> Iterator[None]:
    """Interrupts go to HANDLER for the body; the previous handlers come back after it."""
    previous = {signum: signal.signal(signum, handler) for signum in INTERRUPTS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """Block interrupts for the body; any that arrived are delivered right after it.

    For code that forks (pyroute2's namespace creation): an exception raised by a signal
    handler inside Python's fork hooks would be printed and lost.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
