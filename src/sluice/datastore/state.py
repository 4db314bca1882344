"""ClusterState: an immutable, indexed snapshot of every object a datastore holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

from sluice.datastore.changes import Change, ChangeKind, ResourceKey
from sluice.model import (
    EndpointSlice,
    GlobalNetworkPolicy,
    HostEndpoint,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PrefilterDenyList,
    Resource,
    Service,
)

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

_Names = dict[str, Resource]
_Namespaces = dict[str, _Names]
_Index = dict[str, _Namespaces]

HISTORY = 256
"""How many states back `changes_since` can see (older history is dropped)."""


class _Delta:
    """The keys a state changed relative to the state it was made from (`previous`).

    Deltas, not states, are chained, so an old state is freed as soon as nobody holds it.
    """

    __slots__ = ("depth", "keys", "previous")

    def __init__(self, keys: frozenset[ResourceKey], previous: _Delta | None) -> None:
        self.keys = keys
        self.previous = previous
        self.depth: int = 0 if previous is None else previous.depth + 1
        if self.depth and self.depth % HISTORY == 0:
            oldest: _Delta | None = self
            for _ in range(HISTORY):
                oldest = oldest.previous if oldest is not None else None
            if oldest is not None:
                oldest.previous = None


class ClusterState:
    """Every object at one revision, indexed by kind, then namespace, then name.

    Never mutated: `with_changes` returns a new state that shares every per-namespace
    table the changes did not touch, so applying a batch costs in proportion to the
    namespaces it touches, not to the size of the cluster. Listing accessors return
    tuples sorted by (namespace, name) and cache them.
    """

    __slots__ = ("_delta", "_derived", "_index", "_listings", "_revision", "_size")

    def __init__(self, resources: Iterable[Resource] = (), revision: int = 0) -> None:
        index: _Index = {}
        for resource in resources:
            key = ResourceKey.of(resource)
            index.setdefault(key.kind, {}).setdefault(key.namespace, {})[key.name] = resource
        self._index = index
        self._revision = revision
        self._size = sum(len(names) for spaces in index.values() for names in spaces.values())
        self._listings: dict[tuple[str, str | None], tuple[Resource, ...]] = {}
        self._derived: dict[Callable[[ClusterState], Any], Any] = {}
        self._delta = _Delta(frozenset(), None)

    @classmethod
    def _from_index(cls, index: _Index, revision: int, size: int,
                    listings: dict[tuple[str, str | None], tuple[Resource, ...]],
                    delta: _Delta) -> ClusterState:
        state = cls.__new__(cls)
        state._index = index
        state._revision = revision
        state._size = size
        state._listings = listings
        state._derived = {}
        state._delta = delta
        return state

    @property
    def revision(self) -> int:
        """The datastore revision this state reflects (0 unless given)."""
        return self._revision

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: object) -> bool:
        return isinstance(key, ResourceKey) and self.get(key) is not None

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.all())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterState):
            return NotImplemented
        return self._revision == other._revision and self._index == other._index

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ClusterState(revision={self._revision}, objects={self._size})"

    def get(self, key: ResourceKey) -> Resource | None:
        return self._index.get(key.kind, {}).get(key.namespace, {}).get(key.name)

    def keys(self) -> list[ResourceKey]:
        return [ResourceKey.of(resource) for resource in self.all()]

    def kinds(self) -> list[str]:
        """The kinds that have at least one object, sorted."""
        return sorted(self._index)

    def all(self) -> tuple[Resource, ...]:
        """Every object, sorted by kind, namespace and name."""
        return tuple(resource for kind in self.kinds() for resource in self.of_kind_name(kind))

    def of_kind_name(self, kind: str, namespace: str | None = None) -> tuple[Resource, ...]:
        """The objects of `kind` (a `Resource.KIND`), in one namespace or in all of them."""
        cache_key = (kind, namespace)
        listing = self._listings.get(cache_key)
        if listing is None:
            spaces = self._index.get(kind, {})
            selected = sorted(spaces) if namespace is None else [namespace]
            listing = tuple(
                names[name]
                for space in selected
                for names in (spaces.get(space, {}),)
                for name in sorted(names)
            )
            self._listings[cache_key] = listing
        return listing

    def changes_since(self, earlier: ClusterState) -> frozenset[ResourceKey] | None:
        """The keys of every object that may differ between EARLIER and this state, when
        this state was made from EARLIER by `with_changes` (within the last HISTORY
        states); None when that is unknown, and the caller must compare everything."""
        target = earlier._delta
        delta: _Delta | None = self._delta
        keys: set[ResourceKey] = set()
        while delta is not None and delta is not target:
            keys.update(delta.keys)
            delta = delta.previous
        return frozenset(keys) if delta is not None else None

    def derived(self, compute: Callable[[ClusterState], T]) -> T:
        """`compute(self)`, worked out once per state (a state never changes): for
        indexes that compilers share, such as EndpointSlices by Service."""
        try:
            return cast(T, self._derived[compute])
        except KeyError:
            value = self._derived[compute] = compute(self)
            return value

    def of_kind(self, cls: type[R], namespace: str | None = None) -> tuple[R, ...]:
        """The objects of the model class `cls`, in one namespace or in all of them."""
        return cast("tuple[R, ...]", self.of_kind_name(cls.KIND, namespace))

    def namespaces(self) -> tuple[Namespace, ...]:
        return self.of_kind(Namespace)

    def nodes(self) -> tuple[Node, ...]:
        return self.of_kind(Node)

    def pods(self, namespace: str | None = None) -> tuple[Pod, ...]:
        return self.of_kind(Pod, namespace)

    def services(self, namespace: str | None = None) -> tuple[Service, ...]:
        return self.of_kind(Service, namespace)

    def endpoint_slices(self, namespace: str | None = None) -> tuple[EndpointSlice, ...]:
        return self.of_kind(EndpointSlice, namespace)

    def network_policies(self, namespace: str | None = None) -> tuple[NetworkPolicy, ...]:
        return self.of_kind(NetworkPolicy, namespace)

    def global_network_policies(self) -> tuple[GlobalNetworkPolicy, ...]:
        """Sorted by name; evaluation order is `GlobalNetworkPolicy.evaluation_key`."""
        return self.of_kind(GlobalNetworkPolicy)

    def host_endpoints(self) -> tuple[HostEndpoint, ...]:
        return self.of_kind(HostEndpoint)

    def prefilter_deny_lists(self) -> tuple[PrefilterDenyList, ...]:
        return self.of_kind(PrefilterDenyList)

    def with_changes(self, changes: Iterable[Change]) -> ClusterState:
        """A new state with `changes` applied in order; this state is left as it was.

        ADDED and MODIFIED set the object, DELETED removes it (a missing object is no
        error). The new revision is the highest of this state's and the changes'.
        """
        index: _Index = dict(self._index)
        copied: set[tuple[str, str | None]] = set()
        size, revision = self._size, self._revision
        keys: set[ResourceKey] = set()
        for change in changes:
            revision = max(revision, change.revision)
            key = change.key
            keys.add(key)
            names = _writable(index, key, copied)
            had = key.name in names
            if change.kind is ChangeKind.DELETED:
                if had:
                    del names[key.name]
                    size -= 1
            else:
                names[key.name] = cast(Resource, change.resource)
                size += 0 if had else 1
        for kind, namespace in copied:
            _prune(index, kind, namespace)
        touched = {kind for kind, _ in copied}
        # The listings of kinds no change touched are the same tuples.
        listings = {key: listing for key, listing in self._listings.items()
                    if key[0] not in touched}
        return ClusterState._from_index(index, revision, size, listings,
                                        _Delta(frozenset(keys), self._delta))


def _writable(index: _Index, key: ResourceKey, copied: set[tuple[str, str | None]]) -> _Names:
    """The name table for `key`, copied first if it may still be shared with another state."""
    if (key.kind, None) not in copied:
        index[key.kind] = dict(index.get(key.kind, {}))
        copied.add((key.kind, None))
    spaces = index[key.kind]
    if (key.kind, key.namespace) not in copied:
        spaces[key.namespace] = dict(spaces.get(key.namespace, {}))
        copied.add((key.kind, key.namespace))
    return spaces[key.namespace]


def _prune(index: _Index, kind: str, namespace: str | None) -> None:
    """Remove the tables a batch of deletions left empty."""
    spaces = index.get(kind)
    if spaces is None:
        return
    if namespace in spaces and not spaces[namespace]:
        del spaces[namespace]
    if not spaces:
        del index[kind]
