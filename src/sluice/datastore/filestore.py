"""The embedded datastore: a directory of manifest files, polled for changes."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sluice.datastore.changes import Change, ResourceKey
from sluice.datastore.errors import DatastoreError, ObjectNotFoundError, refusal_message
from sluice.datastore.following import FollowsChangeLog
from sluice.datastore.history import DEFAULT_HISTORY, ChangeLog
from sluice.datastore.manifestdir import ManifestDirectory
from sluice.datastore.serialize import to_yaml
from sluice.datastore.state import ClusterState
from sluice.datastore.urls import parse_file_url
from sluice.model import KINDS, ManifestProblem, Resource, parse_text

DEFAULT_POLL_INTERVAL = 0.2
SCAN_COST_FACTOR = 4
"""Watches poll no more often than every SCAN_COST_FACTOR times the last scan took, so
that polling a large directory stays within a fifth of one CPU."""
FILE_MODE = 0o644


def object_file_name(key: ResourceKey) -> str:
    """The file `apply` writes an object to: `<kind>.<namespace>.<name>.yaml`, or
    `<kind>.<name>.yaml` for cluster-scoped kinds."""
    scope = (key.namespace,) if key.namespace else ()
    return ".".join((key.kind.lower(), *scope, key.name)) + ".yaml"


class FileDatastore(FollowsChangeLog):
    """Objects defined by the `*.yaml`, `*.yml` and `*.json` files of one directory.

    Any file names work (hidden files are skipped; subdirectories are not read). Each
    file is taken whole or not at all: while a file has a problem, the objects of its
    last good content stay and the problem is logged and listed by `problems()`. A
    removed file removes its objects. An object defined in two files is a problem; the
    file that provided it first keeps it.

    Changes are found by polling: on every call, and while a watch runs every
    `poll_interval` seconds (or, if a scan of the directory is slow, every four times
    the time it took; a scan stats every file, about 5 us each). Revisions live in
    memory: the initial read is revision 1 and every batch of changes found later is
    the next revision; the last `history` batches (and no more than 20,000 changes) are
    kept for watches to resume from.

    `apply` writes each object to its own file (see `object_file_name`), atomically
    (temporary file, then rename); it refuses objects defined in a file it did not
    write. `delete` removes those per-object files and refuses to touch any other.
    Files are not fsync'ed: a reader never sees half a file, but a machine crash may
    lose the latest writes.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        poll_interval: float | None = None,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        directory, url_poll = _resolve(location)
        poll = poll_interval if poll_interval is not None else url_poll
        self.poll_interval = DEFAULT_POLL_INTERVAL if poll is None else poll
        if not self.poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {self.poll_interval}")
        if not directory.is_dir():
            raise DatastoreError(f"datastore directory {directory} does not exist")
        self.directory = directory
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._manifests = ManifestDirectory(str(directory))
        self._scan_seconds = 0.0
        initial = self._manifests.scan(1)
        self._state = ClusterState(
            (change.resource for change in initial if change.resource is not None), revision=1
        )
        self._log = ChangeLog(1, history)
        self._scanned_at = time.monotonic()

    def __repr__(self) -> str:
        return f"FileDatastore({str(self.directory)!r})"

    @property
    def revision(self) -> int:
        """The last committed revision, without reading the directory."""
        with self._lock:
            return self._log.current

    def refresh(self) -> int:
        """Read the directory now; returns the revision after any changes found."""
        with self._lock:
            self._ensure_open()
            return self._refresh()

    def snapshot(self) -> ClusterState:
        with self._lock:
            self._ensure_open()
            self._refresh()
            return self._state

    def problems(self) -> tuple[ManifestProblem, ...]:
        with self._lock:
            return self._manifests.problems()

    def watch(
        self,
        since_revision: int,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Iterator[list[Change]]:
        with self._lock:
            self._ensure_open()
            self._refresh()
            self._log.check(since_revision)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._follow(since_revision, stop, deadline)

    def _batches_since(self, cursor: int) -> list[list[Change]]:
        if time.monotonic() - self._scanned_at >= self._poll_period():
            self._refresh()
        return self._log.since(cursor)

    def _wait_time(self, deadline: float | None) -> float:
        now = time.monotonic()
        wait = max(self._scanned_at + self._poll_period() - now, 0.001)
        if deadline is not None:
            wait = min(wait, deadline - now)
        return wait

    def apply(self, resources: Sequence[Resource]) -> int:
        with self._lock:
            self._ensure_open()
            self._refresh()
            writes = self._plan_writes(resources)
            _write_atomically(self.directory, writes)
            return self._refresh()

    def delete(self, keys: Sequence[ResourceKey]) -> int:
        with self._lock:
            self._ensure_open()
            self._refresh()
            paths = self._plan_deletes(keys)
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return self._refresh()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify_all()

    def _ensure_open(self) -> None:
        if self._closed:
            raise DatastoreError(f"{self!r} is closed")

    def _poll_period(self) -> float:
        return max(self.poll_interval, SCAN_COST_FACTOR * self._scan_seconds)

    def _refresh(self) -> int:
        began = time.monotonic()
        changes = self._manifests.scan(self._log.current + 1)
        self._scanned_at = time.monotonic()
        self._scan_seconds = self._scanned_at - began
        if changes:
            self._log.commit(changes)
            self._state = self._state.with_changes(changes)
            self._changed.notify_all()
        return self._log.current

    def _plan_writes(self, resources: Sequence[Resource]) -> dict[str, bytes]:
        """The text to write to each file, once every resource is found acceptable."""
        writes: dict[str, bytes] = {}
        refusals: list[str] = []
        seen: set[ResourceKey] = set()
        for resource in resources:
            if not _is_known_resource(resource):
                refusals.append(f"{resource!r}: not a resource of a known kind")
                continue
            key = ResourceKey.of(resource)
            path = self._manifests.file_path(object_file_name(key))
            if key in seen:
                refusals.append(f"{key}: given more than once")
                continue
            seen.add(key)
            refusal = self._write_refusal(key, path)
            if refusal is not None:
                refusals.append(f"{key}: {refusal}")
                continue
            if self._state.get(key) == resource:
                continue
            text = to_yaml(resource)
            result = parse_text(text, path)
            if result.problems:
                problems = "; ".join(problem.message for problem in result.problems)
                refusals.append(f"{key}: does not serialize to a valid manifest: {problems}")
                continue
            data = text.encode("utf-8")
            writes[path] = data
            self._manifests.expect(path, data, {key: result.resources[0]})
        if refusals:
            raise DatastoreError(refusal_message("apply", refusals))
        return writes

    def _write_refusal(self, key: ResourceKey, path: str) -> str | None:
        owner = self._manifests.owner(key)
        if owner is not None and owner != path:
            return (
                f"defined in {owner}, a file this datastore did not write; "
                "edit that file, or remove the object from it first"
            )
        others = self._manifests.good_keys(path) - {key}
        if others:
            listed = ", ".join(str(other) for other in sorted(others))
            return f"{path} also holds {listed}; it is not a file this datastore wrote"
        return None

    def _plan_deletes(self, keys: Sequence[ResourceKey]) -> list[str]:
        paths: list[str] = []
        missing: list[str] = []
        refusals: list[str] = []
        seen: set[ResourceKey] = set()
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            owner = self._manifests.owner(key)
            if owner is None:
                missing.append(f"{key}: no such object")
                continue
            path = self._manifests.file_path(object_file_name(key))
            elsewhere = [file for file in self._manifests.definers(key) if file != path]
            if owner != path or elsewhere:
                files = ", ".join(elsewhere or [owner])
                refusals.append(
                    f"{key}: defined in {files}, a file this datastore did not write; "
                    "remove it from there"
                )
            elif self._manifests.good_keys(path) - {key}:
                refusals.append(f"{key}: {path} holds other objects too; edit it by hand")
            else:
                paths.append(path)
        if refusals:
            raise DatastoreError(refusal_message("delete", missing + refusals))
        if missing:
            raise ObjectNotFoundError(refusal_message("delete", missing))
        return paths


def _is_known_resource(candidate: object) -> bool:
    return isinstance(candidate, Resource) and KINDS.get(
        (candidate.API_VERSION, candidate.KIND)
    ) is type(candidate)


def _resolve(location: str | os.PathLike[str]) -> tuple[Path, float | None]:
    if isinstance(location, str) and "://" in location:
        parsed = parse_file_url(location)
        return parsed.directory.absolute(), parsed.poll_interval
    return Path(location).absolute(), None




def _write_atomically(directory: Path, writes: dict[str, bytes]) -> None:
    """Write every file to a temporary name first, then rename them all into place."""
    staged: list[tuple[str, str]] = []
    try:
        for path, data in writes.items():
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=".sluice-", suffix=".tmp")
            staged.append((temporary, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), FILE_MODE)
    except OSError as err:
        for temporary, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise DatastoreError(f"apply failed, nothing was changed: {err}") from err
    for temporary, path in staged:
        os.replace(temporary, path)
