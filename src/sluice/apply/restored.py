"""What an iptables-restore writer last applied, per network namespace and family: a
resync whose generated text and live chains read back as they did right after that
restore needs no restore at all."""

from __future__ import annotations

import os
import threading
from typing import Generic, TypeVar

S = TypeVar("S")


def namespace_key(version: int) -> tuple[int, int, int]:
    """The calling thread's network namespace, and the address family."""
    info = os.stat("/proc/thread-self/ns/net")
    return info.st_dev, info.st_ino, version


class AppliedTexts(Generic[S]):
    """(generated text, snapshot read back after the restore) by namespace and family."""

    def __init__(self) -> None:
        self._applied: dict[tuple[int, int, int], tuple[str, S]] = {}
        self._lock = threading.Lock()

    def unchanged(self, version: int, text: str, live: S) -> bool:
        """Whether TEXT was the last restore here and the chains still read back as LIVE."""
        with self._lock:
            return self._applied.get(namespace_key(version)) == (text, live)

    def remember(self, version: int, text: str, after: S) -> None:
        with self._lock:
            self._applied[namespace_key(version)] = (text, after)

    def forget(self, version: int) -> None:
        with self._lock:
            self._applied.pop(namespace_key(version), None)

    def clear(self) -> None:
        """Forget everything: what a new process knows."""
        with self._lock:
            self._applied.clear()
