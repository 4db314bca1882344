"""The watch loop of datastores that keep their own ChangeLog (file, Kubernetes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from sluice.datastore.changes import Change
from sluice.datastore.interface import Datastore

WAIT_SLICE = 0.2


class FollowsChangeLog(Datastore):
    """A datastore whose watch follows a change log held under `_lock`; `_changed` (a
    condition on `_lock`) is notified on every commit and on close."""

    _lock: threading.RLock
    _changed: threading.Condition
    _closed: bool

    def _batches_since(self, cursor: int) -> list[list[Change]]:
        """The batches after CURSOR; called with `_lock` held."""
        raise NotImplementedError

    def _wait_time(self, deadline: float | None) -> float:
        """How long to wait for a commit before looking again; <= 0 ends the watch."""
        if deadline is None:
            return WAIT_SLICE
        return min(WAIT_SLICE, deadline - time.monotonic())

    def _follow(
        self, cursor: int, stop: threading.Event | None, deadline: float | None
    ) -> Iterator[list[Change]]:
        while True:
            with self._lock:
                if self._closed or (stop is not None and stop.is_set()):
                    return
                batches = self._batches_since(cursor)
                if not batches:
                    wait = self._wait_time(deadline)
                    if wait <= 0:
                        return
                    self._changed.wait(wait)
                    continue
            for batch in batches:
                yield batch
                cursor = batch[-1].revision
                if stop is not None and stop.is_set():
                    return
