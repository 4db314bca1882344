"""apply.bpfmaps against real pinned maps: only what differs is written, counters stay."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.apply.bpfmaps import sync_endpoints, sync_routes
from sluice.apply.errors import ApplyError
from sluice.apply.nodeobject import NodeObject
from sluice.compile.bpfstate import EndpointSpec, RouteSpec
from sluice.datapath.routing import RouteKey, RouteKind

pytestmark = pytest.mark.root

IP = ipaddress.ip_address
NET = ipaddress.ip_network
TUNNEL = 7

ROUTES = {
    NET("198.18.16.0/24"): RouteSpec(RouteKind.LOCAL_PODS),
    NET("198.18.17.0/24"): RouteSpec(RouteKind.REMOTE_TUNNEL, IP("198.18.0.12")),
    NET("fd00:10:1::/64"): RouteSpec(RouteKind.LOCAL_PODS),
    NET("fd00:10:2::/64"): RouteSpec(RouteKind.REMOTE_TUNNEL, IP("198.18.0.12")),
}


def endpoint(ifindex: int, mac: str = "02:00:00:00:00:02") -> EndpointSpec:
    return EndpointSpec(f"sl{ifindex}", ifindex, mac, "02:00:00:00:00:01")


@pytest.fixture
def node(pin_dir: str) -> Iterator[NodeObject]:
    loaded = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        yield loaded
    finally:
        loaded.close()


class WriteSpy:
    """Records the keys each update_batch / delete_batch call of a map is given."""

    def __init__(self, bpf_map: Any) -> None:
        self.written: list[str] = []
        self.deleted: list[str] = []
        update, delete = bpf_map.update_batch, bpf_map.delete_batch

        def spy_update(entries: Any) -> int:
            pairs = list(entries)
            self.written += [_key(k) for k, _ in pairs]
            return int(update(pairs))

        def spy_delete(keys: Any) -> int:
            listed = list(keys)
            self.deleted += [_key(k) for k in listed]
            return int(delete(listed))

        bpf_map.update_batch = spy_update
        bpf_map.delete_batch = spy_delete


def _key(key: Any) -> str:
    return str(key.network()) if isinstance(key, RouteKey) else str(key.to_ip())


def set_hits(node: NodeObject, cidr: str, hits: int) -> None:
    key = RouteKey.of(cidr)
    entry = node.routes.lookup(key)
    assert entry is not None
    entry.hits = hits
    node.routes.update(key, entry)


def hits(node: NodeObject) -> dict[str, int]:
    return {str(k.network()): int(v.hits) for k, v in node.routes.items()}


def test_routes_unchanged_entries_are_not_written_and_keep_their_hits(node: NodeObject) -> None:
    first = sync_routes(node.routes, ROUTES, TUNNEL)
    assert (first.added, first.changed, first.removed) == (4, 0, 0)
    entry = node.routes.lookup(RouteKey.of("198.18.17.0/24"))
    assert entry is not None and (entry.kind, entry.ifindex) == (RouteKind.REMOTE_TUNNEL, TUNNEL)
    assert entry.next_hop.to_ip() == IP("198.18.0.12")
    for cidr in ("198.18.16.0/24", "198.18.17.0/24", "fd00:10:2::/64"):
        set_hits(node, cidr, 40)

    spy = WriteSpy(node.routes)
    again = sync_routes(node.routes, ROUTES, TUNNEL)
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 0, 0, 4)
    assert spy.written == [] and spy.deleted == []
    assert hits(node)["198.18.17.0/24"] == 40

    changed = dict(ROUTES)
    changed[NET("198.18.17.0/24")] = RouteSpec(RouteKind.REMOTE_TUNNEL, IP("198.18.0.99"))
    del changed[NET("fd00:10:2::/64")]
    changed[NET("198.18.18.0/24")] = RouteSpec(RouteKind.REMOTE_NATIVE, IP("198.18.0.13"))
    result = sync_routes(node.routes, changed, TUNNEL)
    assert (result.added, result.changed, result.removed, result.unchanged) == (1, 1, 1, 2)
    assert sorted(spy.written) == ["198.18.17.0/24", "198.18.18.0/24"]
    assert spy.deleted == ["fd00:10:2::/64"]
    after = hits(node)
    assert after["198.18.16.0/24"] == 40, "an untouched route keeps its counter"
    assert after["198.18.17.0/24"] == 40, "a rewritten route carries its counter over"
    assert after["198.18.18.0/24"] == 0 and "fd00:10:2::/64" not in after


def test_tunnel_ifindex_change_rewrites_only_tunnel_routes(node: NodeObject) -> None:
    sync_routes(node.routes, ROUTES, TUNNEL)
    spy = WriteSpy(node.routes)
    result = sync_routes(node.routes, ROUTES, TUNNEL + 1)
    assert (result.changed, result.unchanged) == (2, 2)
    assert sorted(spy.written) == ["198.18.17.0/24", "fd00:10:2::/64"]


def test_endpoints_diff(node: NodeObject) -> None:
    desired = {IP("198.18.16.2"): endpoint(5), IP("fd00:10:1::2"): endpoint(5),
               IP("198.18.16.3"): endpoint(6)}
    assert sync_endpoints(node.endpoints, desired).added == 3
    spy = WriteSpy(node.endpoints)
    moved = dict(desired)
    moved[IP("198.18.16.3")] = endpoint(9, mac="02:00:00:00:00:09")
    del moved[IP("fd00:10:1::2")]
    result = sync_endpoints(node.endpoints, moved)
    assert (result.added, result.changed, result.removed, result.unchanged) == (0, 1, 1, 1)
    assert spy.written == ["198.18.16.3"] and spy.deleted == ["fd00:10:1::2"]
    entries = {str(k.to_ip()): v for k, v in node.endpoints.items()}
    assert set(entries) == {"198.18.16.2", "198.18.16.3"}
    assert entries["198.18.16.3"].ifindex == 9
    assert bytes(entries["198.18.16.3"].mac) == bytes.fromhex("020000000009")


def test_a_second_load_adopts_the_pinned_maps(pin_dir: str) -> None:
    """What an agent restart relies on: nothing is flushed, entries and counters stay."""
    first = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        sync_routes(first.routes, ROUTES, TUNNEL)
        sync_endpoints(first.endpoints, {IP("198.18.16.2"): endpoint(5)})
        set_hits(first, "198.18.17.0/24", 7)
    finally:
        first.close()
    second = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        assert hits(second)["198.18.17.0/24"] == 7
        assert [str(k.to_ip()) for k, _ in second.endpoints.items()] == ["198.18.16.2"]
        assert sync_routes(second.routes, ROUTES, TUNNEL).unchanged == 4
        assert hits(second)["198.18.17.0/24"] == 7
    finally:
        second.close()


def test_a_tunnel_route_without_a_tunnel_device_writes_nothing(node: NodeObject) -> None:
    with pytest.raises(ApplyError, match="no tunnel device"):
        sync_routes(node.routes, ROUTES, None)
    assert list(node.routes.items()) == []
