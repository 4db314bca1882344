"""A bounded log of recent change batches, from which watches resume."""

from __future__ import annotations

from collections import deque

from sluice.datastore.changes import Change
from sluice.datastore.errors import ResyncRequired

DEFAULT_HISTORY = 1000
DEFAULT_HISTORY_CHANGES = 20_000
"""Changes kept in all (the newest batch is kept whatever its size). A change holds its
object: a count of batches alone let the file datastore of an agent that saw 10,000
Services written and deleted a few times keep every one of them."""


class ChangeLog:
    """The last `limit` batches, and no more than `max_changes` changes unless the newest
    batch alone has more; each batch committed at a revision higher than the one before.

    Not thread-safe: the datastore that owns it serializes access.
    """

    def __init__(self, revision: int, limit: int = DEFAULT_HISTORY,
                 max_changes: int = DEFAULT_HISTORY_CHANGES) -> None:
        if limit < 1:
            raise ValueError(f"a change log must keep at least 1 batch, got {limit}")
        self._batches: deque[tuple[int, list[Change]]] = deque()
        self._limit = limit
        self._max_changes = max_changes
        self._kept_changes = 0
        self._oldest = revision
        self._current = revision

    @property
    def current(self) -> int:
        return self._current

    @property
    def oldest(self) -> int:
        """The lowest revision a watch can still resume from."""
        return self._oldest

    def commit(self, batch: list[Change]) -> None:
        """Record `batch`, whose changes all carry the next revision."""
        revision = self._current + 1
        if any(change.revision != revision for change in batch):
            raise ValueError(f"every change of the batch must carry revision {revision}")
        self._batches.append((revision, batch))
        self._kept_changes += len(batch)
        self._current = revision
        while len(self._batches) > 1 and (len(self._batches) > self._limit
                                          or self._kept_changes > self._max_changes):
            dropped, changes = self._batches.popleft()
            self._kept_changes -= len(changes)
            self._oldest = dropped

    def check(self, since_revision: int) -> None:
        """Raise ResyncRequired unless a watch can resume from `since_revision`."""
        if not self._oldest <= since_revision <= self._current:
            raise ResyncRequired(since_revision, self._oldest, self._current)

    def since(self, since_revision: int) -> list[list[Change]]:
        """Every batch committed after `since_revision`, oldest first."""
        self.check(since_revision)
        newer: list[list[Change]] = []
        for revision, batch in reversed(self._batches):
            if revision <= since_revision:
                break
            newer.append(batch)
        newer.reverse()
        return newer
