"""Pure compile: node view, pod CIDR routes, bpf map state and kernel state."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from sluice.compile.bpfstate import RouteSpec, bpf_state
from sluice.compile.devices import HOST_DEVICE, TUNNEL_DEVICE, tunnel_mac
from sluice.compile.endpoints import local_endpoints
from sluice.compile.kernelstate import (
    DeviceKind,
    ForwardingEntry,
    KernelRoute,
    Neighbor,
    kernel_state,
)
from sluice.compile.podroutes import PodCidrPlace, pod_cidr_routes
from sluice.compile.topology import Dataplane, RoutingMode, UnknownNodeError, node_view
from sluice.datapath.routing import RouteKind
from sluice.datastore import ClusterState
from tests.compile.helpers import CLUSTER, N1, N2, N3_V6_ONLY, node, record

VXLAN, NATIVE = RoutingMode.VXLAN, RoutingMode.NATIVE
NET = ip_network
IP = ip_address


def test_node_view_names_local_node_and_sorted_peers_with_cidrs() -> None:
    idle = node("idle", ("198.18.0.99",), ())
    view = node_view(ClusterState([N2, idle, N1]), "n1")
    assert view.name == "n1"
    assert view.local.pod_cidrs == (NET("198.18.16.0/24"), NET("fd00:10:1::/64"))
    assert [p.name for p in view.peers] == ["n2"], "a node without pod CIDRs routes nothing"
    assert view.underlay_version == 4


def test_unknown_node_is_an_error() -> None:
    with pytest.raises(UnknownNodeError, match="'nope'"):
        node_view(CLUSTER, "nope")


def test_vxlan_routes_use_one_underlay_family_for_both_pod_families() -> None:
    routes = pod_cidr_routes(node_view(CLUSTER, "n1"), VXLAN)
    assert routes.problems == ()
    by_cidr = {r.cidr: r for r in routes.routes}
    assert by_cidr[NET("198.18.16.0/24")].place is PodCidrPlace.LOCAL
    remote6 = by_cidr[NET("fd00:10:2::/64")]
    assert (remote6.place, remote6.next_hop, remote6.node) == (PodCidrPlace.TUNNEL,
                                                               IP("198.18.0.12"), "n2")


def test_native_routes_use_a_gateway_of_the_pod_family() -> None:
    routes = {r.cidr: r for r in pod_cidr_routes(node_view(CLUSTER, "n1"), NATIVE).routes}
    assert routes[NET("198.18.17.0/24")].next_hop == IP("198.18.0.12")
    assert routes[NET("fd00:10:2::/64")].next_hop == IP("fd00:ff::12")
    assert routes[NET("fd00:10:2::/64")].place is PodCidrPlace.NATIVE


def test_ipv6_only_node_tunnels_over_ipv6() -> None:
    state = ClusterState([node("n1", ("fd00:ff::11",), ("fd00:10:1::/64",)), N3_V6_ONLY])
    view = node_view(state, "n1")
    assert view.underlay_version == 6
    (remote,) = [r for r in pod_cidr_routes(view, VXLAN).routes if r.is_remote]
    assert remote.next_hop == IP("fd00:ff::13")


def test_peer_without_a_usable_address_or_with_an_overlapping_cidr_is_reported() -> None:
    v4_only = node("n4", ("198.18.0.14",), ("fd00:10:4::/64",))
    clash = node("n5", ("198.18.0.15",), ("198.18.16.128/25",))
    routes = pod_cidr_routes(node_view(ClusterState([N1, v4_only, clash]), "n1"), NATIVE)
    assert {r.cidr for r in routes.routes if r.is_remote} == set()
    assert any("n4 has no InternalIP" in p and "fd00:10:4::/64" in p for p in routes.problems)
    assert any("198.18.16.128/25 of node n5 overlaps 198.18.16.0/24" in p
               for p in routes.problems)


def test_an_address_claimed_twice_goes_to_the_newest_record() -> None:
    old = record("old", "198.18.16.2", None, created_at="2026-01-01T00:00:00Z")
    new = record("new", "198.18.16.2", "fd00:10:1::2", created_at="2026-01-02T00:00:00Z")
    result = local_endpoints([old, new])
    owners = {e.key: e.addresses for e in result.endpoints}
    assert owners["new-eth0"] == (IP("198.18.16.2"), IP("fd00:10:1::2"))
    assert owners["old-eth0"] == ()
    assert len(result.problems) == 1 and "old-eth0" in result.problems[0]


def test_bpf_state_has_an_entry_per_pod_address_and_a_route_per_pod_cidr() -> None:
    pods = local_endpoints([record("a", "198.18.16.2", "fd00:10:1::2", host_if="sla", ifindex=7),
                            record("b", "198.18.16.3", None, host_if="slb", ifindex=8)])
    state = bpf_state(node_view(CLUSTER, "n1"), pods, VXLAN, "eth0")
    assert set(state.endpoints) == {IP("198.18.16.2"), IP("fd00:10:1::2"), IP("198.18.16.3")}
    assert state.endpoints[IP("fd00:10:1::2")].host_ifindex == 7
    assert state.endpoint_devices == frozenset({"sla", "slb"})
    assert state.routes[NET("198.18.16.0/24")] == RouteSpec(RouteKind.LOCAL_PODS)
    tunnel = state.routes[NET("fd00:10:2::/64")]
    assert tunnel == RouteSpec(RouteKind.REMOTE_TUNNEL, IP("198.18.0.12")) and tunnel.via_tunnel
    assert state.network_devices == frozenset({TUNNEL_DEVICE, "eth0"})
    assert state.host_device == HOST_DEVICE


def test_bpf_state_in_native_mode_listens_on_the_uplink_and_the_service_tunnel() -> None:
    state = bpf_state(node_view(CLUSTER, "n1"), local_endpoints([]), NATIVE, "eth0")
    assert state.network_devices == frozenset({"eth0", TUNNEL_DEVICE})
    assert state.routes[NET("198.18.17.0/24")] == RouteSpec(RouteKind.REMOTE_NATIVE,
                                                             IP("198.18.0.12"))


def test_kernel_state_bpf_mode_routes_pod_cidrs_to_the_host_device_without_per_pod_routes() -> None:
    pods = local_endpoints([record("a", "198.18.16.2", "fd00:10:1::2")])
    vxlan = kernel_state(node_view(CLUSTER, "n1"), pods, VXLAN, Dataplane.BPF, "eth0")
    assert [d.kind for d in vxlan.devices] == [DeviceKind.DUMMY, DeviceKind.VXLAN_METADATA]
    assert vxlan.routes == frozenset(KernelRoute(NET(c), HOST_DEVICE) for c in (
        "198.18.16.0/24", "fd00:10:1::/64", "198.18.17.0/24", "fd00:10:2::/64"))
    assert vxlan.neighbors == frozenset() and vxlan.forwarding == frozenset()
    native = kernel_state(node_view(CLUSTER, "n1"), pods, NATIVE, Dataplane.BPF, "eth0")
    assert [d.kind for d in native.devices] == [DeviceKind.DUMMY, DeviceKind.VXLAN_METADATA]
    assert KernelRoute(NET("fd00:10:2::/64"), "eth0", IP("fd00:ff::12")) in native.routes


def test_kernel_state_iptables_mode_has_per_pod_routes_and_neighbours() -> None:
    pods = local_endpoints([record("a", "198.18.16.2", "fd00:10:1::2", host_if="sla")])
    state = kernel_state(node_view(CLUSTER, "n1"), pods, NATIVE, Dataplane.IPTABLES, "eth0")
    assert state.devices == ()
    assert state.routes == frozenset({
        KernelRoute(NET("198.18.16.2/32"), "sla"), KernelRoute(NET("fd00:10:1::2/128"), "sla"),
        KernelRoute(NET("198.18.17.0/24"), "eth0", IP("198.18.0.12")),
        KernelRoute(NET("fd00:10:2::/64"), "eth0", IP("fd00:ff::12")),
    })
    assert Neighbor(IP("198.18.16.2"), "02:00:00:00:00:02", "sla") in state.neighbors


def test_kernel_state_iptables_vxlan_programs_peers_by_their_stable_tunnel_mac() -> None:
    state = kernel_state(node_view(CLUSTER, "n1"), local_endpoints([]), VXLAN,
                         Dataplane.IPTABLES, "eth0")
    (device,) = state.devices
    assert (device.kind, device.mac, device.local) == (DeviceKind.VXLAN, tunnel_mac("n1"),
                                                       IP("198.18.0.11"))
    peer_mac = tunnel_mac("n2")
    assert KernelRoute(NET("fd00:10:2::/64"), TUNNEL_DEVICE, IP("fd00:10:2::"),
                       onlink=True) in state.routes
    assert state.neighbors == frozenset({Neighbor(IP("198.18.17.0"), peer_mac, TUNNEL_DEVICE),
                                         Neighbor(IP("fd00:10:2::"), peer_mac, TUNNEL_DEVICE)})
    assert state.forwarding == frozenset({ForwardingEntry(peer_mac, IP("198.18.0.12"),
                                                          TUNNEL_DEVICE)})


def test_tunnel_macs_are_stable_distinct_and_locally_administered() -> None:
    assert tunnel_mac("n1") == tunnel_mac("n1") != tunnel_mac("n2")
    first_octet = int(tunnel_mac("n1").split(":")[0], 16)
    assert first_octet & 0x02 and not first_octet & 0x01
