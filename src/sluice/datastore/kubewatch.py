"""List and watch one kind, the way client-go's reflector does.

A list (paged) gives every object and a resourceVersion; a watch from that version gives
every change after it, with bookmarks that move the version on while nothing changes. A
watch that ends or breaks is resumed from the last version seen, so nothing is lost or
repeated. When the apiserver no longer has that version (HTTP 410 Gone, as a response or
as an ERROR event), the kind is listed again and the difference to what was known is
delivered as changes: ADDED for new objects, MODIFIED for changed ones, DELETED for those
that vanished, nothing for the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sluice.datastore.kubeapi import JSON, ApiError, ApiKind, KubeApi

log = logging.getLogger("sluice.datastore.kubernetes")

GONE = 410
LIST_PAGE = 500
WATCH_SECONDS = 300
"""Server-side watch timeout; the watch is then resumed, which spreads reconnects out."""
READ_SLACK = 30.0
"""A watch that stays silent this much longer than WATCH_SECONDS (bookmarks come about
every minute) is taken as broken."""
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
UNSERVED_RETRY_SECONDS = 30.0
"""How often a kind the apiserver does not serve (CRD not installed, no RBAC right) is
tried again."""
UNSERVED = (403, 404)

ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


@dataclass(frozen=True)
class RawEvent:
    """One object changing: ADDED, MODIFIED or DELETED (`obj` is the object as sent)."""

    type: str
    key: ObjectKey
    obj: JSON


class ReflectorSink(Protocol):
    """What a reflector reports to."""

    def deliver(self, kind: ApiKind, events: list[RawEvent]) -> None:
        """Changes to apply together, in order."""

    def synced(self, kind: ApiKind, problem: str | None) -> None:
        """The kind was listed (problem None), or cannot be served (why)."""


class Gone(Exception):  # noqa: N818 (HTTP 410 Gone)
    """The resourceVersion to watch from is no longer available."""

    def __str__(self) -> str:
        return "410 Gone"


def object_key(obj: JSON) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def resource_version(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Reflector:
    """Keeps one kind's objects flowing to the sink, in a thread, until stopped."""

    def __init__(
        self,
        api: KubeApi,
        kind: ApiKind,
        sink: ReflectorSink,
        stop: threading.Event,
        *,
        watch_seconds: int = WATCH_SECONDS,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.api = api
        self.kind = kind
        self._sink = sink
        self._stop = stop
        self._watch_seconds = watch_seconds
        self._sleep = sleep or stop.wait
        self._versions: dict[ObjectKey, str] = {}
        self.resource_version: str | None = None
        self.lists = 0
        self.watches = 0
        self.last_error: str | None = None
        self._listed_version: str | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"kube-{kind.plural}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                    failures = 0
                self._watch()
                failures = 0
            except Gone as err:
                log.info("%s: resourceVersion %s is gone; listing again",
                         self.kind.plural, self.resource_version)
                if self.resource_version == self._listed_version:  # gone right after a list
                    failures = self._pause(failures, err)
                self.resource_version = None
            except ApiError as err:
                if self._stop.is_set():
                    return
                if err.status in UNSERVED and self.resource_version is None:
                    log.warning("%s cannot be listed: %s", self.kind.plural, err)
                    self._sink.synced(self.kind, f"cannot list {self.kind.list_path}: {err}")
                    self._sleep(UNSERVED_RETRY_SECONDS)
                    continue
                failures = self._pause(failures, err)
            except Exception as err:  # the connection broke: resume from the last version
                if self._stop.is_set():
                    return
                failures = self._pause(failures, err)

    def _pause(self, failures: int, err: Exception) -> int:
        delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
        self.last_error = str(err) or type(err).__name__
        log.info("%s: %s; retrying in %.1fs from resourceVersion %s",
                 self.kind.plural, err, delay, self.resource_version or "(list)")
        self._sleep(delay)
        return failures + 1

    def _relist(self) -> None:
        items, version = self._list_all()
        self.lists += 1
        fresh = {object_key(obj): obj for obj in items}
        events: list[RawEvent] = []
        for key in sorted(self._versions.keys() - fresh.keys()):
            events.append(RawEvent("DELETED", key, _stub(key)))
        for key, obj in sorted(fresh.items()):
            known = self._versions.get(key)
            if known is None:
                events.append(RawEvent("ADDED", key, obj))
            elif known != resource_version(obj):
                events.append(RawEvent("MODIFIED", key, obj))
        self._versions = {key: resource_version(obj) for key, obj in fresh.items()}
        self.resource_version = self._listed_version = version
        if events:
            self._sink.deliver(self.kind, events)
        self._sink.synced(self.kind, None)

    def _list_all(self) -> tuple[list[JSON], str]:
        items: list[JSON] = []
        token = ""
        while True:
            query = {"limit": str(LIST_PAGE)}
            if token:
                query["continue"] = token
            try:
                page = self.api.request("GET", self.kind.list_path, query)
            except ApiError as err:
                if err.status == GONE and token:  # the paging snapshot expired: start over
                    items, token = [], ""
                    continue
                raise
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            metadata = page.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                return items, str(metadata.get("resourceVersion") or "")

    def _watch(self) -> None:
        query = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._watch_seconds),
            "resourceVersion": self.resource_version or "",
        }
        self.watches += 1
        try:
            events = self.api.stream(self.kind.list_path, query,
                                     self._watch_seconds + READ_SLACK)
            for event in events:
                if self._stop.is_set():
                    return
                self._handle(event)
        except ApiError as err:
            if err.status == GONE:
                raise Gone from None
            raise

    def _handle(self, event: JSON) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise ApiError(200, "BadWatchEvent", f"a {kind} event without an object")
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == GONE:
                raise Gone
            raise ApiError(code, str(obj.get("reason") or ""), str(obj.get("message") or ""))
        version = resource_version(obj)
        if kind == "BOOKMARK":
            self.resource_version = version or self.resource_version
            return
        key = object_key(obj)
        delivered = self._apply(str(kind), key, obj, version)
        self.resource_version = version or self.resource_version
        if delivered is not None:
            self._sink.deliver(self.kind, [delivered])

    def _apply(self, kind: str, key: ObjectKey, obj: JSON, version: str) -> RawEvent | None:
        """Record the event; what to deliver (None for a repeat or an unknown deletion)."""
        known = self._versions.get(key)
        if kind == "DELETED":
            if known is None:
                return None
            del self._versions[key]
            return RawEvent("DELETED", key, obj)
        if kind not in ("ADDED", "MODIFIED"):
            raise ApiError(200, "BadWatchEvent", f"unknown watch event type {kind!r}")
        if known == version:
            return None
        self._versions[key] = version
        return RawEvent("ADDED" if known is None else "MODIFIED", key, obj)


def _stub(key: ObjectKey) -> JSON:
    """What a deletion found by listing again says of the object: only its name."""
    namespace, name = key
    return {"metadata": {"namespace": namespace, "name": name} if namespace else {"name": name}}
