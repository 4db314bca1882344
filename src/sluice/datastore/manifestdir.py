"""A directory of manifest files, tracked file by file, turned into changes.

Each file is taken whole or not at all: a file whose current content has any problem
is reported, and the objects of its last good content stay. An object defined by more
than one file is reported too; the file that already provided it keeps it, else the
file whose name sorts first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from sluice.datastore.changes import Change, ChangeKind, ResourceKey
from sluice.datastore.fastparse import parse_faultless
from sluice.model import ManifestProblem, Resource, parse_text
from sluice.model.loader import MANIFEST_SUFFIXES

log = logging.getLogger("sluice.datastore")

RACY_NS = 100_000_000
"""A file modified this close to when it was last read is read again even if its stat
is unchanged: a second write within the file system's timestamp granularity (a few
milliseconds on Linux file systems) can leave size and times as they were."""

Definitions = dict[ResourceKey, Resource]


class FileStamp(NamedTuple):
    """What stat says of a file; any difference means it may have changed."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def stamp_of(stat: os.stat_result) -> FileStamp:
    return FileStamp(stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass
class TrackedFile:
    """What the store knows of one file: the content it last read and its last good objects."""

    stamp: FileStamp
    read_ns: int
    digest: bytes
    good: Definitions = field(default_factory=dict)
    problems: tuple[ManifestProblem, ...] = ()


@dataclass(frozen=True)
class Parsed:
    """A file's objects by key, or None with the problems that reject the file."""

    definitions: Definitions | None
    problems: tuple[ManifestProblem, ...] = ()


def is_manifest_name(name: str) -> bool:
    """Whether the store reads a file of this name: a visible *.yaml, *.yml or *.json."""
    return not name.startswith(".") and name.lower().endswith(MANIFEST_SUFFIXES)


def digest_of(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def parse_manifest(path: str, data: bytes) -> Parsed:
    """The objects of one file's content; `path` names the file in problems."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        message = f"not UTF-8 text: byte {err.start} cannot be decoded"
        return Parsed(None, (ManifestProblem(path, None, "", "", message),))
    faultless = parse_faultless(text, path)
    if faultless is not None:
        fast = {ResourceKey.of(resource): resource for resource in faultless}
        if len(fast) == len(faultless):
            return Parsed(fast)
    result = parse_text(text, path)
    definitions: Definitions = {}
    problems = list(result.problems)
    for resource in result.resources:
        key = ResourceKey.of(resource)
        if key in definitions:
            problems.append(
                ManifestProblem(path, None, resource.ref, "", "defined more than once in this file")
            )
        definitions[key] = resource
    if problems:
        return Parsed(None, tuple(problems))
    return Parsed(definitions)


def _read_bytes(path: str) -> bytes | ManifestProblem | None:
    """The file's content, the problem reading it, or None if it is gone."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        return ManifestProblem(path, None, "", "", f"cannot read: {err.strerror or err}")


class ManifestDirectory:
    """The objects a directory of manifests defines, kept up to date by `scan`.

    Not thread-safe: the datastore that owns it serializes access.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._files: dict[str, TrackedFile] = {}
        self._definers: dict[ResourceKey, list[str]] = {}
        self._owner: dict[ResourceKey, str] = {}
        self._current: Definitions = {}
        self._conflicts: dict[ResourceKey, tuple[str, tuple[str, ...]]] = {}
        self._listing_problem: ManifestProblem | None = None
        self._expected: dict[str, tuple[bytes, Definitions]] = {}

    def file_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    def owner(self, key: ResourceKey) -> str | None:
        """The file whose definition of `key` is in force."""
        return self._owner.get(key)

    def definers(self, key: ResourceKey) -> tuple[str, ...]:
        """Every file whose last good content defines `key`."""
        return tuple(self._definers.get(key, ()))

    def good_keys(self, path: str) -> frozenset[ResourceKey]:
        """The keys defined by the last good content of the file at `path`."""
        tracked = self._files.get(path)
        return frozenset() if tracked is None else frozenset(tracked.good)

    def problems(self) -> tuple[ManifestProblem, ...]:
        """Every rejected file's problems and every conflicting definition, by file."""
        problems: list[ManifestProblem] = []
        if self._listing_problem is not None:
            problems.append(self._listing_problem)
        for path in sorted(self._files):
            problems.extend(self._files[path].problems)
        for key, (winner, losers) in sorted(self._conflicts.items()):
            problems.extend(_conflict_problem(key, winner, loser) for loser in losers)
        return tuple(sorted(problems, key=lambda problem: problem.file))

    def scan(self, revision: int) -> list[Change]:
        """Read what changed on disk; the changes it makes, all at `revision`."""
        stamps = self._list()
        if stamps is None:
            return []
        touched: set[ResourceKey] = set()
        for path in sorted(self._files.keys() - stamps.keys()):
            log.info("%s was removed; its %d objects go with it", path, len(self._files[path].good))
            touched |= self._redefine(path, {})
            del self._files[path]
        for path, stamp in stamps.items():
            new = self._reread(path, stamp)
            if new is not None:
                touched |= self._redefine(path, new)
        self._expected.clear()
        return self._settle(touched, revision)

    def expect(self, path: str, data: bytes, definitions: Definitions) -> None:
        """Note what the next scan will find in `path` if it holds exactly `data`, so
        that a file the datastore itself writes is not parsed a second time."""
        self._expected[path] = (digest_of(data), definitions)

    def _list(self) -> dict[str, FileStamp] | None:
        try:
            stamps: dict[str, FileStamp] = {}
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if is_manifest_name(entry.name) and entry.is_file():
                        with contextlib.suppress(FileNotFoundError):
                            stamps[entry.path] = stamp_of(entry.stat())
        except OSError as err:
            message = f"cannot list the directory: {err.strerror or err}; keeping what was read"
            problem = ManifestProblem(self.path, None, "", "", message)
            if problem != self._listing_problem:
                log.warning("%s", problem)
            self._listing_problem = problem
            return None
        if self._listing_problem is not None:
            log.info("%s can be listed again", self.path)
            self._listing_problem = None
        return stamps

    def _reread(self, path: str, stamp: FileStamp) -> Definitions | None:
        """The file's new good definitions, or None if they are unchanged."""
        tracked = self._files.get(path)
        if (
            tracked is not None
            and tracked.stamp == stamp
            and tracked.read_ns - stamp.mtime_ns > RACY_NS
        ):
            return None
        read_ns = time.time_ns()
        data = _read_bytes(path)
        if data is None:
            return None
        content = b""
        parsed: Parsed | None = None
        if isinstance(data, ManifestProblem):
            parsed = Parsed(None, (data,))
        else:
            content = data
        digest = digest_of(content) if parsed is None else b""
        if (
            tracked is not None
            and digest == tracked.digest
            and (parsed is None or parsed.problems == tracked.problems)
        ):
            tracked.stamp, tracked.read_ns = stamp, read_ns
            return None
        if parsed is None:
            expected = self._expected.get(path)
            if expected is not None and expected[0] == digest:
                parsed = Parsed(expected[1])
            else:
                parsed = parse_manifest(path, content)
        if tracked is None:
            tracked = TrackedFile(stamp, read_ns, digest)
            self._files[path] = tracked
        tracked.stamp, tracked.read_ns, tracked.digest = stamp, read_ns, digest
        if parsed.definitions is None:
            _warn_rejected(path, parsed.problems, len(tracked.good))
            tracked.problems = parsed.problems
            return None
        if tracked.problems:
            log.info("%s is valid again", path)
        tracked.problems = ()
        return parsed.definitions

    def _redefine(self, path: str, new: Definitions) -> set[ResourceKey]:
        """Record `new` as the file's good content; the keys whose definitions changed."""
        tracked = self._files[path]
        old = tracked.good
        touched: set[ResourceKey] = set()
        for key in old.keys() - new.keys():
            definers = self._definers[key]
            definers.remove(path)
            if not definers:
                del self._definers[key]
            touched.add(key)
        for key in new.keys() - old.keys():
            self._definers.setdefault(key, []).append(path)
            touched.add(key)
        touched.update(key for key in new.keys() & old.keys() if new[key] != old[key])
        tracked.good = new
        return touched

    def _settle(self, touched: set[ResourceKey], revision: int) -> list[Change]:
        changes: list[Change] = []
        for key in sorted(touched):
            definers = self._definers.get(key, [])
            owner = self._owner.get(key)
            winner = owner if owner in definers else min(definers, default=None)
            self._note_conflict(key, winner, definers)
            previous = self._current.get(key)
            if winner is None:
                self._owner.pop(key, None)
                if previous is not None:
                    del self._current[key]
                    changes.append(Change(ChangeKind.DELETED, key, previous, revision))
                continue
            resource = self._files[winner].good[key]
            self._owner[key] = winner
            self._current[key] = resource
            if previous is None:
                changes.append(Change(ChangeKind.ADDED, key, resource, revision))
            elif previous != resource:
                changes.append(Change(ChangeKind.MODIFIED, key, resource, revision))
        return changes

    def _note_conflict(self, key: ResourceKey, winner: str | None, definers: list[str]) -> None:
        losers = tuple(sorted(path for path in definers if path != winner))
        if winner is None or not losers:
            self._conflicts.pop(key, None)
            return
        if self._conflicts.get(key) != (winner, losers):
            for loser in losers:
                log.warning("%s", _conflict_problem(key, winner, loser))
        self._conflicts[key] = (winner, losers)


def _conflict_problem(key: ResourceKey, winner: str, loser: str) -> ManifestProblem:
    message = f"also defined in {winner}, whose definition is in force; this one is ignored"
    return ManifestProblem(loser, None, str(key), "", message)


def _warn_rejected(path: str, problems: tuple[ManifestProblem, ...], kept: int) -> None:
    details = "".join(f"\n  {problem}" for problem in problems)
    log.warning(
        "%s is rejected; keeping its last good content (%d objects):%s", path, kept, details
    )
