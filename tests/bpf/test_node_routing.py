"""Host routing under BPF_PROG_TEST_RUN: local delivery, tunnel and native routes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from sluice import netlink, netns
from sluice.datapath import endpoints as ep
from sluice.datapath import routing as rt
from sluice.datapath.addr import SlAddr
from sluice.loader import BpfObject, Map, test_run
from sluice.loader.testrun import skb_context
from tests.conftest import unique

pytestmark = pytest.mark.root

TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
POD_MAC, HOST_MAC = "02:00:00:00:00:0b", "02:00:00:00:00:0a"


@pytest.fixture
def node() -> Iterator[BpfObject]:
    with BpfObject.open("node") as obj:
        obj.load()
        yield obj


def endpoints(obj: BpfObject) -> Map[ep.EndpointKey, ep.EndpointInfo]:
    return obj.map(ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)


def routes(obj: BpfObject) -> Map[rt.RouteKey, rt.RouteEntry]:
    return obj.map(rt.MAP_NAME, rt.RouteKey, rt.RouteEntry)


def packet(src: str, dst: str) -> bytes:
    l3 = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    return bytes(Ether(src="02:00:00:00:00:01", dst=HOST_MAC) / l3 / TCP(dport=80, flags="S"))


@pytest.mark.parametrize(("src", "dst"), [("198.18.16.2", "198.18.16.3"),
                                          ("fd00:10:1::2", "fd00:10:1::3")],
                         ids=["ipv4", "ipv6"])
def test_local_pod_is_redirected_to_its_peer_with_macs_rewritten(
        node: BpfObject, src: str, dst: str) -> None:
    endpoints(node).update(SlAddr.of(dst), ep.EndpointInfo.pod(ifindex=42, mac=POD_MAC,
                                                               host_mac=HOST_MAC))
    result = test_run(node.program("from_endpoint"), packet(src, dst))
    assert result.retval == TC_REDIRECT
    frame = Ether(result.data)
    assert (frame.dst, frame.src) == (POD_MAC, HOST_MAC)
    assert result.data[12:] == packet(src, dst)[12:], "only the MACs may change"


def test_unknown_destination_goes_to_the_host_stack(node: BpfObject) -> None:
    assert test_run(node.program("from_endpoint"), packet("198.18.16.2", "8.8.8.8")).retval == TC_OK


def test_local_pod_cidr_without_endpoint_is_dropped(node: BpfObject) -> None:
    routes(node).update(rt.RouteKey.of("198.18.16.0/24"), rt.RouteEntry.of(rt.RouteKind.LOCAL_PODS))
    result = test_run(node.program("from_endpoint"), packet("198.18.16.2", "198.18.16.99"))
    assert result.retval == TC_SHOT


@pytest.mark.parametrize(("dst", "cidr", "next_hop"), [
    ("198.18.17.5", "198.18.17.0/24", "198.18.0.12"),
    ("fd00:10:2::5", "fd00:10:2::/64", "198.18.0.12"),
    ("fd00:10:2::5", "fd00:10:2::/64", "fd00:ff::12"),
], ids=["v4-over-v4", "v6-over-v4", "v6-over-v6"])
def test_remote_pod_cidr_goes_through_the_tunnel(node: BpfObject, dst: str, cidr: str,
                                                 next_hop: str) -> None:
    key = rt.RouteKey.of(cidr)
    routes(node).update(key, rt.RouteEntry.of(rt.RouteKind.REMOTE_TUNNEL, ifindex=7,
                                              next_hop=next_hop))
    src = "fd00:10:1::2" if ":" in dst else "198.18.16.2"
    result = test_run(node.program("from_endpoint"), packet(src, dst), repeat=3)
    assert result.retval == TC_REDIRECT
    entry = routes(node).lookup(key)
    assert entry is not None and entry.hits == 3


@pytest.fixture
def fib_node() -> Iterator[tuple[str, bytes]]:
    """A scratch node namespace: an uplink with routes to one remote pod CIDR per family,
    a pod veth, forwarding on. Yields the namespace and a ctx arriving from the pod."""
    ns = unique("sl-tfib")
    netns.create(ns)
    try:
        netlink.create_veth(ns, "up0", ns, "up1")
        netlink.create_veth(ns, "pod0", ns, "pod1")
        netlink.configure(ns, "up0", ["198.18.0.11/24", "fd00:ff::11/64"])
        netlink.configure(ns, "up1", [])
        netlink.configure(ns, "pod0", [])
        netlink.set_sysctl(ns, "net.ipv4.conf.all.forwarding", "1")
        netlink.set_sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        netlink.add_route(ns, "198.18.17.0/24", via="198.18.0.12")
        netlink.add_route(ns, "fd00:10:2::/64", via="fd00:ff::12")
        pod0 = netlink.ifindex(ns, "pod0")
        yield ns, skb_context(ingress_ifindex=pod0, ifindex=pod0)
    finally:
        netns.remove(ns)


def test_native_route_uses_the_fib_of_the_node(node: BpfObject,
                                               fib_node: tuple[str, bytes]) -> None:
    ns, from_pod = fib_node
    for cidr in ("198.18.17.0/24", "fd00:10:2::/64"):
        routes(node).update(rt.RouteKey.of(cidr), rt.RouteEntry.of(rt.RouteKind.REMOTE_NATIVE))
    prog = node.program("from_endpoint")
    with netns.entered(ns):
        to_v4 = test_run(prog, packet("198.18.16.2", "198.18.17.5"), ctx=from_pod)
        to_v6 = test_run(prog, packet("fd00:10:1::2", "fd00:10:2::5"), ctx=from_pod)
    assert to_v4.retval == TC_REDIRECT
    assert to_v6.retval == TC_REDIRECT


def test_native_route_without_a_fib_route_is_dropped(node: BpfObject,
                                                     fib_node: tuple[str, bytes]) -> None:
    ns, from_pod = fib_node
    routes(node).update(rt.RouteKey.of("198.18.40.0/24"),
                        rt.RouteEntry.of(rt.RouteKind.REMOTE_NATIVE))
    with netns.entered(ns):
        result = test_run(node.program("from_endpoint"), packet("198.18.16.2", "198.18.40.5"),
                          ctx=from_pod)
    assert result.retval == TC_SHOT


def test_from_network_delivers_only_to_local_endpoints(node: BpfObject) -> None:
    endpoints(node).update(SlAddr.of("198.18.16.3"),
                           ep.EndpointInfo.pod(ifindex=42, mac=POD_MAC, host_mac=HOST_MAC))
    prog = node.program("from_network")
    assert test_run(prog, packet("198.18.17.5", "198.18.16.3")).retval == TC_REDIRECT
    assert test_run(prog, packet("198.18.17.5", "198.18.0.11")).retval == TC_OK


def test_non_ip_passes_and_malformed_is_dropped(node: BpfObject) -> None:
    prog = node.program("from_endpoint")
    arp = bytes(Ether() / ARP(psrc="198.18.16.2", pdst="169.254.1.1"))
    assert test_run(prog, arp).retval == TC_OK
    bad = bytearray(packet("198.18.16.2", "198.18.16.3"))
    bad[14] = 0x43
    assert test_run(prog, bytes(bad)).retval == TC_SHOT


@pytest.mark.parametrize(("src", "dst"), [("198.18.0.11", "198.18.16.3"),
                                          ("fd00:ff::11", "fd00:10:1::3")],
                         ids=["ipv4", "ipv6"])
def test_from_host_delivers_host_traffic_to_local_pods(node: BpfObject, src: str,
                                                       dst: str) -> None:
    endpoints(node).update(SlAddr.of(dst), ep.EndpointInfo.pod(ifindex=42, mac=POD_MAC,
                                                               host_mac=HOST_MAC))
    result = test_run(node.program("from_host"), packet(src, dst))
    assert result.retval == TC_REDIRECT
    frame = Ether(result.data)
    assert (frame.dst, frame.src) == (POD_MAC, HOST_MAC)


def test_from_host_drops_what_no_pod_or_route_owns(node: BpfObject) -> None:
    prog = node.program("from_host")
    routes(node).update(rt.RouteKey.of("198.18.16.0/24"), rt.RouteEntry.of(rt.RouteKind.LOCAL_PODS))
    assert test_run(prog, packet("198.18.0.11", "198.18.16.99")).retval == TC_SHOT
    arp = bytes(Ether() / ARP(psrc="198.18.0.11", pdst="198.18.16.99"))
    assert test_run(prog, arp).retval == TC_SHOT
