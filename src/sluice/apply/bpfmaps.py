"""Sync the node datapath's `endpoints` and `routes` maps to desired entries.

Read the map, write only entries that are missing or differ, delete entries that are not
desired. Never flush and refill: the datapath reads these maps while they are synced, and
an entry that did not change is not written at all, so a route keeps its `hits` counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sluice.apply.diff import Changes
from sluice.apply.errors import ApplyError
from sluice.compile.bpfstate import EndpointSpec, RouteSpec
from sluice.datapath.endpoints import EndpointInfo, EndpointKey
from sluice.datapath.routing import RouteEntry, RouteKey
from sluice.loader.maps import Map
from sluice.model.addresses import IPAddress, IPNetwork

K = TypeVar("K", bound=Any)
V = TypeVar("V", bound=Any)


def endpoint_entry(spec: EndpointSpec) -> EndpointInfo:
    return EndpointInfo.pod(ifindex=spec.host_ifindex, mac=spec.pod_mac, host_mac=spec.host_mac,
                            identity=spec.identity)


def route_entry(cidr: IPNetwork, spec: RouteSpec, tunnel_ifindex: int | None) -> RouteEntry:
    ifindex = 0
    if spec.via_tunnel and not tunnel_ifindex:
        raise ApplyError(f"route {cidr} goes through the tunnel, but there is no tunnel device")
    if spec.remote and tunnel_ifindex:
        ifindex = tunnel_ifindex
    return RouteEntry.of(spec.kind, ifindex=ifindex, next_hop=spec.next_hop)


def _route_fields(entry: RouteEntry) -> tuple[int, int, bytes]:
    """What the agent decides about a route; `hits` is the datapath's."""
    return entry.kind, entry.ifindex, bytes(entry.next_hop)


def sync_endpoints(endpoints: Map[EndpointKey, EndpointInfo],
                   desired: Mapping[IPAddress, EndpointSpec]) -> Changes:
    wanted = {bytes(key): (key, endpoint_entry(spec))
              for key, spec in ((EndpointKey.of(a), s) for a, s in desired.items())}
    return sync_map(endpoints, wanted, same=lambda old, new: bytes(old) == bytes(new))


def sync_routes(routes: Map[RouteKey, RouteEntry], desired: Mapping[IPNetwork, RouteSpec],
                tunnel_ifindex: int | None) -> Changes:
    wanted = {bytes(key): (key, route_entry(cidr, spec, tunnel_ifindex))
              for key, cidr, spec in ((RouteKey.of(c), c, s) for c, s in desired.items())}

    def carry_hits(old: RouteEntry, new: RouteEntry) -> RouteEntry:
        new.hits = old.hits
        return new

    return sync_map(routes, wanted,
                    same=lambda old, new: _route_fields(old) == _route_fields(new),
                    merge=carry_hits)


@dataclass
class MapPlan(Generic[K, V]):
    """What a sync writes and deletes; a caller may write now and delete later."""

    writes: list[tuple[K, V]]
    stale: list[K]
    changes: Changes


def plan_map(bpf_map: Map[K, V], wanted: Mapping[bytes, tuple[K, V]], *,
             same: Callable[[V, V], bool],
             merge: Callable[[V, V], V] | None = None) -> MapPlan[K, V]:
    """What makes BPF_MAP hold exactly WANTED (keyed by the key's bytes).

    SAME says whether an existing value already is what is wanted; MERGE builds the value
    to write over an existing one (to carry datapath-owned fields such as counters).
    """
    # Compared as bytes, decoded only where they differ: most of a large map is unchanged.
    actual = bpf_map.lookup_batch_raw()
    key_type: Any = bpf_map.key_type
    value_type: Any = bpf_map.value_type
    changes = Changes()
    writes: list[tuple[K, V]] = []
    for raw, (key, value) in wanted.items():
        current = actual.get(raw)
        if current is None:
            changes.added += 1
            writes.append((key, value))
            continue
        if current == bytes(value):  # identical bytes are the same entry by any measure
            changes.unchanged += 1
            continue
        old = value_type.from_buffer_copy(current)
        if same(old, value):
            changes.unchanged += 1
        else:
            changes.changed += 1
            writes.append((key, merge(old, value) if merge else value))
    stale = [key_type.from_buffer_copy(raw) for raw in actual if raw not in wanted]
    changes.removed = len(stale)
    return MapPlan(writes, stale, changes)


def sync_map(bpf_map: Map[K, V], wanted: Mapping[bytes, tuple[K, V]], *,
             same: Callable[[V, V], bool],
             merge: Callable[[V, V], V] | None = None) -> Changes:
    """Make BPF_MAP hold exactly WANTED: writes first, then deletes (see plan_map)."""
    plan = plan_map(bpf_map, wanted, same=same, merge=merge)
    bpf_map.update_batch(plan.writes)
    bpf_map.delete_batch(plan.stale)
    return plan.changes
