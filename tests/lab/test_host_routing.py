"""eBPF host routing end to end, wired by hand (no agent yet): two node namespaces on
an underlay, pods behind veths, the node program on every pod veth and on the tunnel
device or uplink. Real TCP and UDP between pods on one node and across nodes, over
VXLAN and over native routing, IPv4 and IPv6."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from sluice import netlink, netns
from sluice.datapath import endpoints as ep
from sluice.datapath import routing as rt
from sluice.datapath.addr import SlAddr
from sluice.loader import BpfObject, Direction, Link, attach_tcx
from tests.conftest import Side, tcp_connects, udp_delivered, unique

pytestmark = pytest.mark.root

POD_MTU = 1450
GATEWAY4, GATEWAY6 = "169.254.1.1", "fe80::1"


@dataclass
class Node:
    ns: str
    uplink: str
    ipv4: str
    ipv6: str
    pod_cidrs: tuple[str, str]
    obj: BpfObject | None = None
    links: list[Link] = field(default_factory=list)


@dataclass(frozen=True)
class Pod:
    node: Node
    side: Side
    host_if: str


def attach(node: Node, program: str, ifname: str) -> None:
    assert node.obj is not None
    ifindex = netlink.ifindex(node.ns, ifname)
    with netns.entered(node.ns):
        node.links.append(attach_tcx(node.obj.program(program), ifindex, Direction.INGRESS))


def add_pod(node: Node, name: str, ipv4: str, ipv6: str, host_if: str) -> Pod:
    pod_ns = unique(f"sl-tp{name}")
    netns.create(pod_ns)
    netlink.create_veth(node.ns, host_if, pod_ns, "eth0")
    netlink.configure(node.ns, host_if, [], mtu=POD_MTU)
    netlink.configure(pod_ns, "eth0", [f"{ipv4}/32", f"{ipv6}/128"], mtu=POD_MTU)
    host_mac = netlink.link_mac(node.ns, host_if)
    for gateway in (GATEWAY4, GATEWAY6):
        netlink.add_permanent_neighbor(pod_ns, "eth0", gateway, host_mac)
        netlink.add_default_route_onlink(pod_ns, "eth0", gateway)
    assert node.obj is not None
    info = ep.EndpointInfo.pod(ifindex=netlink.ifindex(node.ns, host_if),
                               mac=netlink.link_mac(pod_ns, "eth0"), host_mac=host_mac)
    endpoints = node.obj.map(ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
    for ip in (ipv4, ipv6):
        endpoints.update(SlAddr.of(ip), info)
    attach(node, "from_endpoint", host_if)
    return Pod(node, Side(pod_ns, "eth0", ipaddress.IPv4Address(ipv4),
                          ipaddress.IPv6Address(ipv6)), host_if)


def route_to(node: Node, peer: Node, mode: str) -> None:
    assert node.obj is not None
    routes = node.obj.map(rt.MAP_NAME, rt.RouteKey, rt.RouteEntry)
    for cidr in node.pod_cidrs:
        routes.update(rt.RouteKey.of(cidr), rt.RouteEntry.of(rt.RouteKind.LOCAL_PODS))
    for cidr, via in zip(peer.pod_cidrs, (peer.ipv4, peer.ipv6), strict=True):
        if mode == "vxlan":
            entry = rt.RouteEntry.of(rt.RouteKind.REMOTE_TUNNEL, next_hop=peer.ipv4,
                                     ifindex=netlink.ifindex(node.ns, "sl-vxlan"))
        else:
            netlink.add_route(node.ns, cidr, via=via)
            entry = rt.RouteEntry.of(rt.RouteKind.REMOTE_NATIVE)
        routes.update(rt.RouteKey.of(cidr), entry)


@pytest.fixture(params=["vxlan", "native"])
def cluster(request: pytest.FixtureRequest) -> Iterator[dict[str, Pod]]:
    mode: str = request.param
    n1 = Node(unique("sl-tn1"), "uplink0", "198.18.0.11", "fd00:ff::11",
              ("198.18.16.0/24", "fd00:10:1::/64"))
    n2 = Node(unique("sl-tn2"), "uplink1", "198.18.0.12", "fd00:ff::12",
              ("198.18.17.0/24", "fd00:10:2::/64"))
    pods: dict[str, Pod] = {}
    with ExitStack() as cleanup:
        for node in (n1, n2):
            netns.create(node.ns)
            cleanup.callback(netns.remove, node.ns)
            # Link-local addresses must be usable at once: IPv6 neighbour solicitations
            # for the underlay are sent from them.
            netlink.set_sysctl(node.ns, "net.ipv6.conf.default.accept_dad", "0")
            netlink.set_sysctl(node.ns, "net.ipv6.conf.all.accept_dad", "0")
        netlink.create_veth(n1.ns, n1.uplink, n2.ns, n2.uplink)
        for node in (n1, n2):
            netlink.configure(node.ns, node.uplink, [f"{node.ipv4}/24", f"{node.ipv6}/64"])
            netlink.set_sysctl(node.ns, "net.ipv4.conf.all.forwarding", "1")
            netlink.set_sysctl(node.ns, "net.ipv6.conf.all.forwarding", "1")
            node.obj = cleanup.enter_context(BpfObject.open("node"))
            node.obj.load()
            cleanup.callback(lambda n=node: [link.close() for link in n.links])
            if mode == "vxlan":
                netlink.create_vxlan(node.ns, "sl-vxlan")
                attach(node, "from_network", "sl-vxlan")
            else:
                attach(node, "from_network", node.uplink)
        route_to(n1, n2, mode)
        route_to(n2, n1, mode)
        for name, node, v4, v6, host_if in (
            ("a", n1, "198.18.16.2", "fd00:10:1::2", "slh-a"),
            ("b", n1, "198.18.16.3", "fd00:10:1::3", "slh-b"),
            ("c", n2, "198.18.17.2", "fd00:10:2::2", "slh-c"),
        ):
            pods[name] = add_pod(node, name, v4, v6, host_if)
            cleanup.callback(netns.remove, pods[name].side.ns)
        yield pods


PAIRS = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")]


@pytest.mark.parametrize("family", [4, 6])
def test_pods_reach_each_other(cluster: dict[str, Pod], family: int) -> None:
    for client, server in PAIRS:
        c, s = cluster[client].side, cluster[server].side
        assert udp_delivered(c, s, family, timeout=2.0), f"UDP {client}->{server} IPv{family}"
        assert tcp_connects(c, s, family, timeout=2.0), f"TCP {client}->{server} IPv{family}"

