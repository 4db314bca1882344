"""The Kubernetes datastore: the cluster as the apiserver holds it.

URLs: `kubernetes://` uses the in-cluster configuration (a pod's service account);
`kubernetes://?kubeconfig=PATH&context=NAME` a kubeconfig file (either option alone is
fine: no kubeconfig means $KUBECONFIG or ~/.kube/config, no context its current one).

Every model kind is listed and watched (see kubewatch.py): Nodes, Namespaces, Pods,
Services, EndpointSlices (discovery.k8s.io/v1), NetworkPolicies, and Sluice's own kinds as
custom resources of group sluice.io, version v1 (deploy/crds/). A kind the apiserver does
not serve (CRD not installed, RBAC refuses) is reported by `problems()`, held empty and
tried again every 30 s. The datastore opens once every kind has been listed.

Revisions are a counter of this process: the state after the first lists is revision 1,
every watch event (or the difference a relist finds) is the next. Objects are translated
into the model (kubetranslate.py); one that does not translate is reported by
`problems()` and skipped, or, if it translated before, its last good form is kept.

`apply` creates or replaces objects, `delete` deletes them, through the API: every
request is first sent as a server-side dry run, so that nothing is written unless the
apiserver accepts all of them; they then return once the watch has seen the writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from sluice.datastore.changes import Change, ChangeKind, ResourceKey
from sluice.datastore.errors import DatastoreError, ObjectNotFoundError, refusal_message
from sluice.datastore.following import WAIT_SLICE, FollowsChangeLog
from sluice.datastore.history import DEFAULT_HISTORY, ChangeLog
from sluice.datastore.kubeapi import JSON, ApiError, ApiKind, KubeApi
from sluice.datastore.kubetranslate import translate
from sluice.datastore.kubewatch import WATCH_SECONDS, RawEvent, Reflector, resource_version
from sluice.datastore.serialize import to_manifest
from sluice.datastore.state import ClusterState
from sluice.model import KINDS, RESOURCE_CLASSES, ManifestProblem, Resource

log = logging.getLogger("sluice.datastore.kubernetes")

SCHEME = "kubernetes"
URL_OPTIONS = ("kubeconfig", "context")
DEFAULT_SYNC_TIMEOUT = 60.0
DEFAULT_WRITE_TIMEOUT = 30.0
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation",
                   "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds")
"""Metadata the apiserver sets; never sent back in a create or replace."""


@dataclass(frozen=True)
class KubeLocation:
    """Where the apiserver is described: in-cluster (both None) or by a kubeconfig."""

    kubeconfig: str | None = None
    context: str | None = None

    @property
    def in_cluster(self) -> bool:
        return self.kubeconfig is None and self.context is None


def parse_kubernetes_url(url: str) -> KubeLocation:
    """`kubernetes://` or `kubernetes://?kubeconfig=PATH&context=NAME`; ValueError naming
    the URL and what is wrong with it."""
    if not isinstance(url, str) or not url.lower().startswith(f"{SCHEME}://"):
        raise ValueError(f"not a kubernetes datastore URL: {url!r} (expected kubernetes:// "
                         "or kubernetes://?kubeconfig=PATH&context=NAME)")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ValueError(f"invalid datastore URL {url!r}: {err}") from None
    if parts.netloc:
        raise ValueError(
            f"invalid datastore URL {url!r}: host {parts.netloc!r} is not allowed; the "
            "apiserver comes from the in-cluster config or a kubeconfig "
            "(kubernetes://?kubeconfig=PATH)")
    if parts.path not in ("", "/"):
        raise ValueError(f"invalid datastore URL {url!r}: path {parts.path!r} is not allowed; "
                         "options go in the query (kubernetes://?kubeconfig=PATH)")
    if parts.fragment:
        raise ValueError(f"invalid datastore URL {url!r}: a fragment (#...) is not allowed")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"invalid datastore URL {url!r}: malformed query "
                         f"{parts.query!r}") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in URL_OPTIONS:
            raise ValueError(f"invalid datastore URL {url!r}: unknown option {name!r}; "
                             f"kubernetes:// takes {', '.join(URL_OPTIONS)}")
        if name in options:
            raise ValueError(f"invalid datastore URL {url!r}: option {name!r} given twice")
        if not value or "\0" in value:
            raise ValueError(f"invalid datastore URL {url!r}: option {name!r} needs a value")
        options[name] = value
    return KubeLocation(options.get("kubeconfig"), options.get("context"))


def api_client_for(location: KubeLocation) -> kube_client.ApiClient:
    """An official-client ApiClient for `location`; DatastoreError if it cannot be set up."""
    try:
        if location.in_cluster:
            configuration = kube_client.Configuration()
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            return kube_client.ApiClient(configuration)
        api_client: kube_client.ApiClient = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=location.kubeconfig, context=location.context)
        return api_client
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError) as err:
        where = ("the in-cluster configuration (is this a pod with a service account?)"
                 if location.in_cluster else f"kubeconfig {location.kubeconfig or '(default)'}"
                 + (f" context {location.context}" if location.context else ""))
        raise DatastoreError(f"cannot configure the Kubernetes client from {where}: "
                             f"{err}") from None


def api_body(resource: Resource) -> JSON:
    """The object as a create or replace sends it: no server-set metadata."""
    body = to_manifest(resource)
    metadata = body.get("metadata") or {}
    body["metadata"] = {key: value for key, value in metadata.items()
                        if key not in SERVER_METADATA}
    return body


@dataclass(frozen=True)
class _Write:
    key: ResourceKey
    kind: ApiKind
    body: JSON | None  # None: a deletion


class KubernetesDatastore(FollowsChangeLog):
    """The objects of one Kubernetes cluster, listed and watched through its apiserver."""

    def __init__(
        self,
        api: KubeApi,
        *,
        history: int = DEFAULT_HISTORY,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self._api = api
        self._write_timeout = write_timeout
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._kinds = {cls.KIND: ApiKind(cls) for cls in RESOURCE_CLASSES}
        self._resources: dict[ResourceKey, Resource] = {}
        self._versions: dict[ResourceKey, str] = {}
        self._object_problems: dict[ResourceKey, tuple[ManifestProblem, ...]] = {}
        self._kind_problems: dict[str, ManifestProblem] = {}
        self._synced: set[str] = set()
        self._log: ChangeLog | None = None
        self._state = ClusterState()
        self._reflectors = {
            kind.kind: Reflector(api, kind, self, self._stop, watch_seconds=watch_seconds)
            for kind in self._kinds.values()
        }
        for reflector in self._reflectors.values():
            reflector.start()
        self._await_sync(sync_timeout, history)

    @classmethod
    def from_url(cls, url: str) -> KubernetesDatastore:
        """The datastore a `kubernetes://` URL names (see the module docstring)."""
        return cls(KubeApi(api_client_for(parse_kubernetes_url(url))))

    def __repr__(self) -> str:
        return f"KubernetesDatastore({self._api.host!r})"

    def _await_sync(self, timeout: float, history: int) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._synced) < len(self._kinds):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, WAIT_SLICE))
            missing = sorted(set(self._kinds) - self._synced)
            if not missing:
                self._state = ClusterState(self._resources.values(), revision=1)
                self._log = ChangeLog(1, history)
                return
        errors = sorted({reflector.last_error for name, reflector in self._reflectors.items()
                         if name in missing and reflector.last_error})
        self.close()
        raise DatastoreError(
            f"cannot list {', '.join(self._kinds[name].plural for name in missing)} from "
            f"{self._api.host} within {timeout:.0f}s: {'; '.join(errors) or 'no answer'}")

    # What the reflectors report (ReflectorSink).

    def synced(self, kind: ApiKind, problem: str | None) -> None:
        with self._lock:
            self._synced.add(kind.kind)
            if problem is None:
                self._kind_problems.pop(kind.kind, None)
            else:
                self._kind_problems[kind.kind] = ManifestProblem(
                    f"{self._api.host}{kind.list_path}", None, kind.kind, "", problem)
            self._changed.notify_all()

    def deliver(self, kind: ApiKind, events: list[RawEvent]) -> None:
        with self._lock:
            revision = 0 if self._log is None else self._log.current + 1
            changes = [change for event in events
                       if (change := self._take(kind, event, revision)) is not None]
            if changes and self._log is not None:
                self._log.commit(changes)
                self._state = self._state.with_changes(changes)
            self._changed.notify_all()

    def _take(self, kind: ApiKind, event: RawEvent, revision: int) -> Change | None:
        namespace, name = event.key
        key = ResourceKey(kind.kind, namespace, name)
        if event.type == "DELETED":
            self._versions.pop(key, None)
            self._object_problems.pop(key, None)
            gone = self._resources.pop(key, None)
            return None if gone is None else Change(ChangeKind.DELETED, key, gone, revision)
        self._versions[key] = resource_version(event.obj)
        translation = translate(kind.cls, event.obj, kind.object_path(namespace, name))
        resource = translation.resource
        if resource is None or ResourceKey.of(resource) != key:
            problems = translation.problems or (ManifestProblem(
                kind.object_path(namespace, name), None, str(key), "metadata.namespace",
                "a namespaced object without a namespace"),)
            if self._object_problems.get(key) != problems:
                kept = "its last good form is kept" if key in self._resources else "skipped"
                log.warning("%s does not translate (%s): %s", key, kept,
                            "; ".join(str(problem) for problem in problems))
            self._object_problems[key] = problems
            return None
        if self._object_problems.pop(key, None) is not None:
            log.info("%s translates again", key)
        previous = self._resources.get(key)
        self._resources[key] = resource
        if previous is None:
            return Change(ChangeKind.ADDED, key, resource, revision)
        return None if previous == resource else Change(ChangeKind.MODIFIED, key, resource,
                                                        revision)

    # The Datastore interface.

    def snapshot(self) -> ClusterState:
        with self._lock:
            self._ensure_open()
            return self._state

    def problems(self) -> tuple[ManifestProblem, ...]:
        with self._lock:
            found = [self._kind_problems[kind] for kind in sorted(self._kind_problems)]
            for key in sorted(self._object_problems):
                found.extend(self._object_problems[key])
            return tuple(found)

    def watch(
        self,
        since_revision: int,
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Iterator[list[Change]]:
        with self._lock:
            self._ensure_open()
            self._changelog().check(since_revision)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._follow(since_revision, stop, deadline)

    def _batches_since(self, cursor: int) -> list[list[Change]]:
        return self._changelog().since(cursor)

    def apply(self, resources: Sequence[Resource]) -> int:
        with self._write_lock:
            writes = self._plan_apply(resources)
            self._send(writes, "apply")
            return self._current_revision()

    def delete(self, keys: Sequence[ResourceKey]) -> int:
        with self._write_lock:
            writes = self._plan_delete(keys)
            self._send(writes, "delete")
            return self._current_revision()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._changed.notify_all()
        self._api.close()
        for reflector in self._reflectors.values():
            reflector.join(2.0)

    # Writing.

    def _plan_apply(self, resources: Sequence[Resource]) -> list[_Write]:
        writes: list[_Write] = []
        refusals: list[str] = []
        seen: set[ResourceKey] = set()
        with self._lock:
            self._ensure_open()
            for resource in resources:
                if not (isinstance(resource, Resource) and KINDS.get(
                        (resource.API_VERSION, resource.KIND)) is type(resource)):
                    refusals.append(f"{resource!r}: not a resource of a known kind")
                    continue
                key = ResourceKey.of(resource)
                if key in seen:
                    refusals.append(f"{key}: given more than once")
                    continue
                seen.add(key)
                body = api_body(resource)
                current = self._resources.get(key)
                if current is not None and api_body(current) == body:
                    continue
                writes.append(_Write(key, self._kinds[key.kind], body))
        if refusals:
            raise DatastoreError(refusal_message("apply", refusals))
        return writes

    def _plan_delete(self, keys: Sequence[ResourceKey]) -> list[_Write]:
        writes: list[_Write] = []
        missing: list[str] = []
        with self._lock:
            self._ensure_open()
            for key in dict.fromkeys(keys):
                kind = self._kinds.get(key.kind)
                if kind is None or key not in self._versions:
                    missing.append(f"{key}: no such object")
                    continue
                writes.append(_Write(key, kind, None))
        if missing:
            raise ObjectNotFoundError(refusal_message("delete", missing))
        return writes

    def _send(self, writes: list[_Write], action: str) -> None:
        """Dry-run every write, then make them; then wait until the watch has seen them."""
        refusals: list[str] = []
        statuses: set[int] = set()
        for write in writes:
            try:
                _request(self._api, write, dry_run=True)
            except ApiError as err:
                refusals.append(f"{write.key}: {err}")
                statuses.add(err.status)
        if refusals:
            not_found = action == "delete" and statuses == {404}
            raise (ObjectNotFoundError if not_found else DatastoreError)(
                refusal_message(action, refusals))
        written: list[tuple[ResourceKey, str]] = []
        for index, write in enumerate(writes):
            try:
                written.append((write.key, _request(self._api, write, dry_run=False)))
            except ApiError as err:
                done = ", ".join(str(write.key) for write in writes[:index]) or "none"
                raise DatastoreError(
                    f"{action} failed at {write.key}: {err}; written before it: {done}"
                ) from None
        self._await_seen(written)

    def _await_seen(self, written: list[tuple[ResourceKey, str]]) -> None:
        deadline = time.monotonic() + self._write_timeout
        with self._lock:
            while not all(self._reflects(key, version) for key, version in written):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    log.warning("the watch has not yet seen every write after %.0fs",
                                self._write_timeout)
                    return
                self._changed.wait(min(remaining, WAIT_SLICE))

    def _reflects(self, key: ResourceKey, version: str) -> bool:
        """Whether the cache holds `key` at `version` or later ("" : `key` is deleted)."""
        cached = self._versions.get(key)
        if not version:
            return cached is None
        if cached == version:
            return True
        seen = self._reflectors[key.kind].resource_version or ""
        return any(_at_least(candidate, version) for candidate in (cached or "", seen))

    def _current_revision(self) -> int:
        with self._lock:
            return self._changelog().current

    def _changelog(self) -> ChangeLog:
        if self._log is None:
            raise DatastoreError(f"{self!r} has not finished its first lists")
        return self._log

    def _ensure_open(self) -> None:
        if self._closed:
            raise DatastoreError(f"{self!r} is closed")


def _request(api: KubeApi, write: _Write, *, dry_run: bool) -> str:
    """Create, replace or delete; the resourceVersion written ("" for a deletion)."""
    query = {"dryRun": "All"} if dry_run else {}
    namespace, name = write.key.namespace, write.key.name
    if write.body is None:
        api.request("DELETE", write.kind.object_path(namespace, name), query)
        return ""
    attempts: list[Callable[[], JSON]] = [
        lambda: api.request("POST", write.kind.collection_path(namespace), query, write.body),
        lambda: api.request("PUT", write.kind.object_path(namespace, name), query, write.body),
    ]
    try:
        answer = attempts[0]()
    except ApiError as err:
        if err.status != 409:
            raise
        answer = attempts[1]()
    return resource_version(answer)


def _at_least(candidate: str, version: str) -> bool:
    """Whether resourceVersion `candidate` is `version` or later (both are etcd revisions
    in every apiserver; opaque versions only compare equal)."""
    if candidate.isdigit() and version.isdigit():
        return int(candidate) >= int(version)
    return candidate == version
