"""The etcd datastore: cluster objects as keys of an etcd v3 cluster (3.4 or later).

Keys and values. Every object is one key,

    <prefix>/<Kind>/<namespace>/<name>     namespaced kinds (Pod, Service, NetworkPolicy, ...)
    <prefix>/<Kind>/_cluster/<name>        cluster-scoped kinds (Node, Namespace,
                                           GlobalNetworkPolicy, HostEndpoint, ...)

with the default prefix `/sluice/v1` (URL option `prefix`) and <Kind> the manifest's
`kind` (e.g. `/sluice/v1/Pod/default/web-1`, `/sluice/v1/Node/_cluster/node1`). The value
is the object's manifest as compact JSON, exactly what `sluice validate` accepts for one
object (apiVersion, kind, metadata, spec, status; defaults left out). Anything else may
be written under the prefix by other tools too (`etcdctl put`): a value that does not
parse or validate, or whose kind, namespace or name disagrees with its key, is listed by
`problems()` naming the key and the field, and the last good object of that key (as this
process saw it) stays in effect.

Revisions are etcd's: `snapshot()` reads every key under the prefix at one revision, and
`watch(since)` streams the events after it, one batch per etcd revision (a transaction's
events share one), resuming from the last revision seen when the connection breaks or
the member goes away (the next member of the URL is tried). When etcd has compacted the
revisions a watch needs, it raises ResyncRequired.

`apply` validates every object first and writes the changed ones in one transaction (one
revision; etcd's --max-txn-ops bounds how many). `delete` deletes every key in one
transaction that only succeeds when every key exists, else ObjectNotFoundError names the
missing ones and nothing is deleted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.datastore.changes import Change, ChangeKind, ResourceKey
from sluice.datastore.errors import (
    DatastoreError,
    ObjectNotFoundError,
    ResyncRequired,
    refusal_message,
)
from sluice.datastore.etcdclient import EtcdClient, Json, Member, b64, prefix_end, unb64
from sluice.datastore.fastparse import parse_faultless
from sluice.datastore.interface import Datastore
from sluice.datastore.serialize import to_manifest
from sluice.datastore.state import ClusterState
from sluice.datastore.urls import EtcdLocation, parse_etcd_url
from sluice.model import KINDS, ManifestProblem, Resource, parse_text

log = logging.getLogger("sluice.datastore")

CLUSTER_SCOPE = "_cluster"
WATCH_POLL = 0.25
RETRY_FIRST = 0.2
RETRY_LONGEST = 2.0


def object_key(prefix: str, key: ResourceKey) -> str:
    """The etcd key of the object `key` names."""
    return f"{prefix}/{key.kind}/{key.namespace or CLUSTER_SCOPE}/{key.name}"


def resource_key(prefix: str, etcd_key: str) -> ResourceKey | None:
    """The object an etcd key names; None if it does not follow the layout."""
    if not etcd_key.startswith(prefix + "/"):
        return None
    parts = etcd_key[len(prefix) + 1:].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    kind, namespace, name = parts
    return ResourceKey(kind, "" if namespace == CLUSTER_SCOPE else namespace, name)


def encode(resource: Resource) -> bytes:
    """The value stored for `resource`: its manifest as compact JSON."""
    return json.dumps(to_manifest(resource), separators=(",", ":")).encode()


def decode(prefix: str, etcd_key: str, value: bytes
           ) -> tuple[Resource | None, tuple[ManifestProblem, ...]]:
    """The object stored at `etcd_key`, or None with the problems naming key and field."""
    source = f"etcd key {etcd_key}"
    key = resource_key(prefix, etcd_key)
    if key is None:
        return None, (_problem(source, "", f"the key does not follow {prefix}/<Kind>/"
                               f"<namespace or {CLUSTER_SCOPE}>/<name>"),)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, (_problem(source, "", f"not UTF-8 text: byte {err.start} cannot be "
                               "decoded", str(key)),)
    json_format = text.lstrip().startswith("{")
    resources = parse_faultless(text, "value.json" if json_format else "value.yaml")
    if resources is None:
        result = parse_text(text, source, json_format=json_format)
        if result.problems:
            return None, result.problems
        resources = list(result.resources)
    if len(resources) != 1:
        return None, (_problem(source, "", f"expected one object, found {len(resources)}",
                               str(key)),)
    resource = resources[0]
    mismatch = _key_mismatch(key, ResourceKey.of(resource))
    if mismatch is not None:
        return None, (_problem(source, mismatch[0], mismatch[1], str(key)),)
    return resource, ()


def _key_mismatch(key: ResourceKey, found: ResourceKey) -> tuple[str, str] | None:
    if key.kind != found.kind:
        return "kind", f"the key says kind {key.kind}, the value {found.kind}"
    if key.namespace != found.namespace:
        scope = key.namespace or CLUSTER_SCOPE
        return "metadata.namespace", (f"the key says namespace {scope}, the value "
                                      f"{found.namespace or '(cluster-scoped)'}")
    if key.name != found.name:
        return "metadata.name", f"the key says name {key.name}, the value {found.name}"
    return None


def _problem(source: str, field: str, message: str, obj: str = "") -> ManifestProblem:
    return ManifestProblem(file=source, document=None, object=obj, field=field,
                           message=message)


@dataclass(frozen=True)
class _Entry:
    """What this process knows of one key: the revision it read, the last good object,
    and the problems of the value at that revision (none when it was good)."""

    revision: int
    resource: Resource | None
    problems: tuple[ManifestProblem, ...] = ()


class EtcdDatastore(Datastore):
    """Objects stored in etcd under one prefix; see the module docstring for the layout.

    Opening connects to nothing: requests connect when made (so an agent may start while
    etcd is still coming up), each on a connection of its own.
    """

    def __init__(self, location: EtcdLocation | str, *, netns: str | None = None) -> None:
        if isinstance(location, str):
            location = parse_etcd_url(location)
        self.location = location
        members = [Member(host, port) for host, port in location.endpoints]
        self._client = EtcdClient(members, location.timeout, netns or location.netns)
        self._prefix = location.prefix
        self._range = {"key": b64(self._prefix + "/"),
                       "range_end": b64(prefix_end((self._prefix + "/").encode()))}
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"EtcdDatastore(etcd://{self._client}?prefix={self._prefix})"

    def snapshot(self) -> ClusterState:
        self._ensure_open()
        answer = self._client.call("/v3/kv/range", dict(self._range), read_only=True)
        revision = _revision(answer)
        resources: list[Resource] = []
        present: set[str] = set()
        for kv in answer.get("kvs", []):
            key, mod_revision = _key_of(kv), int(kv["mod_revision"])
            present.add(key)
            resource, _good = self._accept(key, mod_revision, unb64(kv.get("value", "")))
            if resource is not None:
                resources.append(resource)
        with self._lock:
            for key in [k for k, e in self._entries.items()
                        if k not in present and e.revision <= revision]:
                del self._entries[key]
        return ClusterState(resources, revision)

    def problems(self) -> tuple[ManifestProblem, ...]:
        """The bad values seen by the last `snapshot()` and the watches since."""
        with self._lock:
            return tuple(problem for key in sorted(self._entries)
                         for problem in self._entries[key].problems)

    def current_revision(self) -> int:
        """etcd's current revision."""
        answer = self._client.call("/v3/kv/range", {**self._range, "count_only": True},
                                   read_only=True)
        return _revision(answer)

    def watch(
        self,
        since_revision: int,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Iterator[list[Change]]:
        self._ensure_open()
        current = self.current_revision()
        if since_revision > current:
            raise ResyncRequired(since_revision, 0, current)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._follow(since_revision, stop, deadline)

    def _follow(self, cursor: int, stop: threading.Event | None, deadline: float | None
                ) -> Iterator[list[Change]]:
        retry = RETRY_FIRST
        resumed = False
        while not self._ended(stop, deadline):
            try:
                if resumed:
                    current = self.current_revision()
                    if cursor > current:  # etcd lost its data: our revisions mean nothing
                        raise ResyncRequired(cursor, 0, current)
                for batch, revision in self._stream(cursor, stop, deadline):
                    cursor, retry = revision, RETRY_FIRST
                    if batch:
                        yield batch
                        if stop is not None and stop.is_set():
                            return
                return
            except ResyncRequired:
                raise
            except (OSError, DatastoreError) as err:
                log.info("etcd watch from revision %d broke (%s); resuming", cursor + 1, err)
            resumed = True
            wait = retry if deadline is None else min(retry, deadline - time.monotonic())
            if wait > 0 and (stop.wait(wait) if stop is not None else self._closed.wait(wait)):
                return
            retry = min(retry * 2, RETRY_LONGEST)

    def _stream(self, cursor: int, stop: threading.Event | None, deadline: float | None
                ) -> Iterator[tuple[list[Change], int]]:
        """(changes, revision) per etcd revision after `cursor` until the watch should
        end; raises OSError or DatastoreError when the stream breaks."""
        request = {"create_request": {**self._range, "start_revision": str(cursor + 1),
                                      "prev_kv": True}}
        with self._client.stream("/v3/watch", request) as reader:
            while True:
                message = reader.next_message()
                if message is None:
                    if self._ended(stop, deadline):
                        return
                    wait = WATCH_POLL if deadline is None else min(
                        WATCH_POLL, deadline - time.monotonic())
                    reader.receive(wait)
                    continue
                result = message.get("result")
                if not isinstance(result, dict):
                    raise DatastoreError(f"etcd watch error: {message.get('error', message)}")
                compacted = int(result.get("compact_revision", 0))
                if compacted > 0:
                    current = int(result.get("header", {}).get("revision", 0)) or compacted
                    raise ResyncRequired(cursor, compacted, max(current, cursor))
                if result.get("canceled"):
                    reason = result.get("cancel_reason") or "no reason given"
                    raise DatastoreError(f"etcd cancelled the watch: {reason}")
                yield from self._batches(result.get("events", []))

    def _batches(self, events: list[Json]) -> Iterator[tuple[list[Change], int]]:
        batch: list[Change] = []
        revision: int | None = None
        for event in events:
            kv = event["kv"]
            mod_revision = int(kv["mod_revision"])
            if revision is not None and mod_revision != revision:
                yield batch, revision
                batch = []
            revision = mod_revision
            change = self._change(event, kv, mod_revision)
            if change is not None:
                batch.append(change)
        if revision is not None:
            yield batch, revision

    def _change(self, event: Json, kv: Json, revision: int) -> Change | None:
        key = _key_of(kv)
        resource_id = resource_key(self._prefix, key)
        if event.get("type") == "DELETE":
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.revision <= revision:
                    del self._entries[key]
            previous = entry.resource if entry is not None else None
            if resource_id is None or (previous is None and entry is not None):
                return None  # never a good object here: nothing to remove
            return Change(ChangeKind.DELETED, resource_id, previous, revision)
        resource, good = self._accept(key, revision, unb64(kv.get("value", "")))
        if not good or resource is None or resource_id is None:
            return None
        kind = ChangeKind.ADDED if kv.get("version") == "1" else ChangeKind.MODIFIED
        return Change(kind, resource_id, resource, revision)

    def _accept(self, key: str, revision: int, value: bytes) -> tuple[Resource | None, bool]:
        """The object to use for `key` after its value at `revision` (the new one, or the
        last good one when the value is bad), and whether that value was good."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry.revision != revision:
            resource, problems = decode(self._prefix, key, value)
            if problems:
                last_good = entry.resource if entry is not None else None
                for problem in problems:
                    log.warning("datastore: %s", problem)
                entry = _Entry(revision, last_good, problems)
            else:
                entry = _Entry(revision, resource)
            with self._lock:
                stored = self._entries.get(key)
                if stored is None or stored.revision <= revision:
                    self._entries[key] = entry
        return entry.resource, not entry.problems

    def apply(self, resources: Sequence[Resource]) -> int:
        self._ensure_open()
        values = self._plan_writes(resources)
        answer = self._client.call("/v3/kv/range", dict(self._range), read_only=True)
        stored = {_key_of(kv): unb64(kv.get("value", "")) for kv in answer.get("kvs", [])}
        puts = [{"request_put": {"key": b64(key), "value": b64(value)}}
                for key, value in values.items() if stored.get(key) != value]
        if not puts:
            return _revision(answer)
        return _revision(self._client.call("/v3/kv/txn", {"success": puts}))

    def _plan_writes(self, resources: Sequence[Resource]) -> dict[str, bytes]:
        values: dict[str, bytes] = {}
        refusals: list[str] = []
        for resource in resources:
            if not _is_known_resource(resource):
                refusals.append(f"{resource!r}: not a resource of a known kind")
                continue
            key = ResourceKey.of(resource)
            etcd_key = object_key(self._prefix, key)
            if etcd_key in values:
                refusals.append(f"{key}: given more than once")
                continue
            value = encode(resource)
            _, problems = decode(self._prefix, etcd_key, value)
            if problems:
                shown = "; ".join(f"{p.field}: {p.message}" if p.field else p.message
                                  for p in problems)
                refusals.append(f"{key}: does not serialize to a valid manifest: {shown}")
                continue
            values[etcd_key] = value
        if refusals:
            raise DatastoreError(refusal_message("apply", refusals))
        return values

    def delete(self, keys: Sequence[ResourceKey]) -> int:
        self._ensure_open()
        unique = list(dict.fromkeys(keys))
        if not unique:
            return self.current_revision()
        etcd_keys = [b64(object_key(self._prefix, key)) for key in unique]
        answer = self._client.call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "VERSION", "result": "GREATER", "version": "0"}
                        for key in etcd_keys],
            "success": [{"request_delete_range": {"key": key}} for key in etcd_keys],
            "failure": [{"request_range": {"key": key, "count_only": True}}
                        for key in etcd_keys],
        })
        if answer.get("succeeded"):
            return _revision(answer)
        responses: list[Json] = answer.get("responses", [])
        missing = [f"{key}: no such object" for key, response in zip(unique, responses,
                                                                      strict=True)
                   if int(response.get("response_range", {}).get("count", 0)) == 0]
        if not missing:  # they came back meanwhile: report rather than retry
            raise DatastoreError("delete refused, nothing was changed: objects were being "
                                 "created and deleted concurrently; try again")
        raise ObjectNotFoundError(refusal_message("delete", missing))

    def close(self) -> None:
        self._closed.set()

    def _ensure_open(self) -> None:
        if self._closed.is_set():
            raise DatastoreError(f"{self!r} is closed")

    def _ended(self, stop: threading.Event | None, deadline: float | None) -> bool:
        return (self._closed.is_set() or (stop is not None and stop.is_set())
                or (deadline is not None and time.monotonic() >= deadline))


def _key_of(kv: Json) -> str:
    return unb64(kv["key"]).decode("utf-8", "replace")


def _revision(answer: Json) -> int:
    header: dict[str, Any] = answer.get("header", {})
    return int(header.get("revision", 0))


def _is_known_resource(candidate: object) -> bool:
    return isinstance(candidate, Resource) and KINDS.get(
        (candidate.API_VERSION, candidate.KIND)
    ) is type(candidate)
