"""The contract every datastore (file, etcd, Kubernetes API) fulfils."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from types import TracebackType

from sluice.datastore.changes import Change, ResourceKey
from sluice.datastore.state import ClusterState
from sluice.model import ManifestProblem, Resource


class Datastore(ABC):
    """Where cluster objects live: an initial snapshot, then a stream of changes.

    Revisions. A revision is an integer the datastore assigns to every committed batch
    of changes; each batch gets a higher revision than the one before, so a revision
    names one exact state. `snapshot().revision` is the revision of that state, and
    every Change carries the revision of the batch it belongs to. Revisions are only
    comparable within one datastore (for the file datastore: one process); a new
    process starts from a fresh snapshot.

    Ordering. `watch` delivers batches in revision order, each batch whole and at most
    once, starting after the revision given. Applying every batch in order with
    `ClusterState.with_changes` to the snapshot taken at that revision reproduces the
    datastore's state. Within a batch the revisions never decrease (a store that commits
    batches atomically gives every change of a batch the same revision); a watcher
    resumes from the revision of the last change of the last batch it handled.

    Invalid input. `apply` and `delete` check the whole request before changing
    anything: if any part is refused, nothing changes and a DatastoreError (or its
    subclass ObjectNotFoundError) names every refused object and why.

    Thread safety. Every method may be called from any thread; a watch can be consumed
    in one thread while another applies or deletes.
    """

    @abstractmethod
    def snapshot(self) -> ClusterState:
        """The current state of every object, and its revision."""

    @abstractmethod
    def watch(
        self,
        since_revision: int,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Iterator[list[Change]]:
        """The batches of changes committed after `since_revision`, as they happen.

        The iterator ends when `stop` is set, when `timeout` seconds have passed since
        the call, or when the datastore is closed; without `stop` or `timeout` it runs
        until `close()`. It never yields an empty batch. To resume after it ends or
        fails, call `watch` again with the last revision seen.

        Raises ResyncRequired, from this call or while iterating, when the datastore can
        no longer give every change after `since_revision` (the revision is older than
        the history it keeps, or newer than any it has committed). The caller then takes
        a fresh `snapshot()` and watches from its revision.
        """

    @abstractmethod
    def apply(self, resources: Sequence[Resource]) -> int:
        """Create each resource, or replace the object with the same key.

        Returns the revision at which the datastore reflects all of them (the current
        revision if none of them changed anything).
        """

    @abstractmethod
    def delete(self, keys: Sequence[ResourceKey]) -> int:
        """Delete the objects named by `keys`; returns the revision after the deletion.

        A key the datastore does not hold is refused with ObjectNotFoundError.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the datastore and end its watches. Closing twice is harmless."""

    def problems(self) -> tuple[ManifestProblem, ...]:
        """What the datastore currently cannot use (bad manifests, conflicts), for display.

        A datastore that validates on write has none.
        """
        return ()

    def __enter__(self) -> Datastore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
