"""Masquerade in node.c under BPF_PROG_TEST_RUN, IPv4 and IPv6: SNAT to the node's address
on the uplink's egress (to_network), the reverse on its ingress (from_network).

Every translated packet is compared byte for byte with what a correct NAT makes of it.
Programs run inside a scratch namespace: the sockets the allocator must skip are that
namespace's, and nothing of the machine's own can influence a port choice.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from sluice import netns
from sluice.datapath import endpoints as ep
from sluice.datapath import events as ev
from sluice.datapath import masq
from sluice.datapath.addr import IPAddress, LpmKey, SlAddr
from sluice.loader import BpfObject, Map, test_run
from sluice.loader.testrun import TestRunResult
from tests.conftest import unique

pytestmark = pytest.mark.root

TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
HOST_MAC, PEER_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PORTS = (61000, 61999)
ECHO_ID = 0x4242
PROTOS = ("TCP", "UDP", "ICMP")


@dataclass(frozen=True)
class Family:
    name: str
    node: str
    pods: tuple[str, str]  # local pods
    remote_pod: str  # a pod of another node: non-masquerade
    outside: tuple[str, str]  # outside the cluster
    nonmasq: tuple[str, ...]


V4 = Family("ipv4", "198.18.0.11", ("198.18.16.2", "198.18.16.3"), "198.18.17.5",
            ("198.19.200.7", "198.19.200.8"), ("198.18.16.0/20", "198.18.0.0/24"))
V6 = Family("ipv6", "fd00:ff::11", ("fd00:10:1::2", "fd00:10:1::3"), "fd00:10:2::5",
            ("fd00:99::7", "fd00:99::8"), ("fd00:10::/32", "fd00:ff::/64"))
FAMILIES = pytest.mark.parametrize("fam", [V4, V6], ids=["ipv4", "ipv6"])


def l3(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst, hlim=63) if ":" in src else IP(src=src, dst=dst, ttl=63)


def l4(proto: str, sport: int, dport: int, *, v6: bool, reply: bool = False) -> Packet:
    if proto == "TCP":
        return TCP(sport=sport, dport=dport, flags="SA" if reply else "S", seq=7,
                   ack=8 if reply else 0)
    if proto == "UDP":
        return UDP(sport=sport, dport=dport) / Raw(b"pong" if reply else b"ping")
    ident = dport if reply else sport  # an echo's identifier plays the pod's port
    if v6:
        echo: Packet = ICMPv6EchoReply(id=ident, seq=1) if reply else \
            ICMPv6EchoRequest(id=ident, seq=1)
        return echo / Raw(b"echo")
    return ICMP(type=0 if reply else 8, id=ident, seq=1) / Raw(b"echo")


def frame(src: str, dst: str, payload: Packet) -> bytes:
    return bytes(Ether(src=HOST_MAC, dst=PEER_MAC) / l3(src, dst) / payload)


def ports_of(data: bytes) -> tuple[str, int, str, int]:
    """(source, source port, destination, destination port); ICMP echo: the identifier."""
    pkt = Ether(data)
    net, trans = pkt.payload, pkt.payload.payload
    if isinstance(trans, (TCP, UDP)):
        return net.src, trans.sport, net.dst, trans.dport
    return net.src, trans.id, net.dst, trans.id


def rewritten(original: bytes, *, src: str | None = None, sport: int | None = None,
              dst: str | None = None, dport: int | None = None) -> bytes:
    """ORIGINAL with the given fields changed and every checksum recomputed (from the IP
    header on). For ICMP echo, either port is the identifier."""
    pkt = Ether(original)
    net, trans = pkt.payload, pkt.payload.payload
    if src is not None:
        net.src = src
    if dst is not None:
        net.dst = dst
    if isinstance(trans, (TCP, UDP)):
        trans.sport = sport if sport is not None else trans.sport
        trans.dport = dport if dport is not None else trans.dport
        trans.chksum = None
    else:
        trans.id = sport if sport is not None else dport if dport is not None else trans.id
        if isinstance(trans, ICMP):
            trans.chksum = None
        else:
            trans.cksum = None
    if isinstance(net, IP):
        net.chksum = None
    return bytes(pkt)[14:]


PROTO_NUMBERS = {"TCP": 6, "UDP": 17}


def proto_number(proto: str, fam: Family) -> int:
    return PROTO_NUMBERS.get(proto, 58 if fam is V6 else 1)


class Node:
    """One loaded node.bpf.o, masquerading as FAM's node inside namespace NS."""

    def __init__(self, obj: BpfObject, ns: str) -> None:
        self.obj = obj
        self.ns = ns
        self.endpoints: Map[ep.EndpointKey, ep.EndpointInfo] = obj.map(
            ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
        self.config: Map[ctypes.c_uint32, masq.MasqConfig] = obj.map(
            masq.CONFIG_MAP, ctypes.c_uint32, masq.MasqConfig)
        self.nonmasq: Map[LpmKey, ctypes.c_uint32] = obj.map(
            masq.NONMASQ_MAP, LpmKey, ctypes.c_uint32)
        self.mappings: Map[masq.MasqKey, masq.MasqEntry] = obj.map(
            masq.MAPPINGS_MAP, masq.MasqKey, masq.MasqEntry)
        self.counters: Map[ctypes.c_uint32, ev.DatapathCounter] = obj.map(
            ev.COUNTERS_MAP, ctypes.c_uint32, ev.DatapathCounter)
        self._pods = 0

    def setup(self, *, ports: tuple[int, int] = PORTS, enabled: bool = True) -> None:
        self.config.update(ctypes.c_uint32(0), masq.MasqConfig.of(
            enabled=enabled, addr4=_ip(V4.node), addr6=_ip(V6.node), ports=ports))
        for fam in (V4, V6):
            for cidr in fam.nonmasq:
                self.nonmasq.update(LpmKey.of(cidr), ctypes.c_uint32(1))
            for address in fam.pods:
                self.pod(address)

    def pod(self, address: str) -> str:
        self._pods += 1
        mac = f"02:00:00:00:01:{self._pods:02x}"
        self.endpoints.update(SlAddr.of(address), ep.EndpointInfo.pod(
            ifindex=100 + self._pods, mac=mac, host_mac=HOST_MAC))
        return mac

    def pod_mac(self, address: str) -> bytes:
        info = self.endpoints.lookup(SlAddr.of(address))
        assert info is not None
        return bytes(info.mac)

    def run(self, program: str, data: bytes) -> TestRunResult:
        with netns.entered(self.ns):
            return test_run(self.obj.program(program), data)

    def nat_drops(self) -> int:
        index = ctypes.c_uint32(int(ev.Hook.TO_NETWORK) * 32 + int(ev.DropReason.NAT))
        per_cpu = self.counters.lookup_percpu(index) or []
        return sum(int(c.packets) for c in per_cpu)


def _ip(text: str) -> IPAddress:
    return SlAddr.of(text).to_ip()


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    ns = unique("sl-tmasq")
    netns.create(ns)
    try:
        yield ns
    finally:
        netns.remove(ns)


@pytest.fixture
def node(scratch_ns: str) -> Iterator[Node]:
    with ExitStack() as stack:
        obj = stack.enter_context(BpfObject.open("node"))
        obj.load()
        made = Node(obj, scratch_ns)
        made.setup()
        yield made


def send_out(node: Node, fam: Family, proto: str, *, pod: str, sport: int, peer: str,
             dport: int) -> tuple[bytes, TestRunResult]:
    request = frame(pod, peer, l4(proto, sport, dport, v6=fam is V6))
    return request, node.run("to_network", request)


@FAMILIES
@pytest.mark.parametrize("proto", PROTOS)
def test_outbound_gets_the_node_address_and_the_reply_the_pod_back(
        node: Node, fam: Family, proto: str) -> None:
    pod, peer = fam.pods[0], fam.outside[0]
    sport = ECHO_ID if proto == "ICMP" else 40000
    request, out = send_out(node, fam, proto, pod=pod, sport=sport, peer=peer, dport=443)
    assert out.retval == TC_OK
    src, node_port, dst, _ = ports_of(out.data)
    assert (_ip(src), _ip(dst)) == (_ip(fam.node), _ip(peer))
    assert PORTS[0] <= node_port <= PORTS[1]
    assert out.data[14:] == rewritten(request, src=fam.node, sport=node_port)

    number = proto_number(proto, fam)
    peer_port = 0 if proto == "ICMP" else 443
    out_entry = node.mappings.lookup(masq.MasqKey.of(
        masq.MasqDir.OUT, addr=pod, port=sport, peer=peer, peer_port=peer_port, proto=number))
    in_entry = node.mappings.lookup(masq.MasqKey.of(
        masq.MasqDir.IN, addr=fam.node, port=node_port, peer=peer, peer_port=peer_port,
        proto=number))
    assert out_entry is not None and in_entry is not None
    assert (_ip(str(out_entry.addr.to_ip())), socket.ntohs(out_entry.port)) == \
        (_ip(fam.node), node_port)
    assert (in_entry.addr.to_ip(), socket.ntohs(in_entry.port)) == (_ip(pod), sport)

    # The flow's next packet keeps its port.
    again = node.run("to_network", request)
    assert again.data == out.data

    reply = frame(peer, fam.node, l4(proto, 443, node_port, v6=fam is V6, reply=True))
    back = node.run("from_network", reply)
    assert back.retval == TC_REDIRECT, "the reply is delivered to the pod"
    assert Ether(back.data).dst == ":".join(f"{b:02x}" for b in node.pod_mac(pod))
    assert back.data[14:] == rewritten(reply, dst=pod, dport=sport)


@FAMILIES
@pytest.mark.parametrize("proto", ("TCP", "UDP"))
def test_a_non_masquerade_destination_keeps_the_pod_address(node: Node, fam: Family,
                                                             proto: str) -> None:
    for peer in (fam.remote_pod, fam.node):
        request, out = send_out(node, fam, proto, pod=fam.pods[0], sport=40000, peer=peer, dport=80)
        assert out.retval == TC_OK
        assert out.data == request
    assert not list(node.mappings.keys())


@FAMILIES
def test_host_traffic_is_not_masqueraded(node: Node, fam: Family) -> None:
    request, out = send_out(node, fam, "TCP", pod=fam.node, sport=40000,
                            peer=fam.outside[0], dport=80)
    assert (out.retval, out.data) == (TC_OK, request)


@FAMILIES
@pytest.mark.parametrize("proto", PROTOS)
def test_two_pods_with_one_source_port_to_one_peer_get_different_node_ports(
        node: Node, fam: Family, proto: str) -> None:
    peer, sport = fam.outside[0], 40000
    got = {}
    for pod in fam.pods:
        _, out = send_out(node, fam, proto, pod=pod, sport=sport, peer=peer, dport=443)
        assert out.retval == TC_OK
        got[pod] = ports_of(out.data)[1]
    assert len(set(got.values())) == 2
    for pod, node_port in got.items():
        reply = frame(peer, fam.node, l4(proto, 443, node_port, v6=fam is V6, reply=True))
        back = node.run("from_network", reply)
        assert back.retval == TC_REDIRECT
        assert ports_of(back.data)[2:] == (pod, sport)


@FAMILIES
@pytest.mark.parametrize("proto", ("TCP", "UDP"))
def test_a_port_a_host_socket_owns_is_skipped(scratch_ns: str, node: Node, fam: Family,
                                              proto: str) -> None:
    low = PORTS[0]
    node.setup(ports=(low, low + 1))
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if fam is V6 else socket.AF_INET
    with netns.entered(scratch_ns):
        owner = socket.socket(family, kind)
    with owner:
        owner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        owner.bind(("::" if fam is V6 else "0.0.0.0", low))
        if proto == "TCP":
            owner.listen()
        # A random first try: each of several peers must still get the free port.
        for peer_port in range(443, 451):
            _, out = send_out(node, fam, proto, pod=fam.pods[0], sport=40000,
                              peer=fam.outside[0], dport=peer_port)
            assert out.retval == TC_OK
            assert ports_of(out.data)[1] == low + 1
        # The same peer again from another pod: the one free port is that peer's already.
        drops = node.nat_drops()
        _, out = send_out(node, fam, proto, pod=fam.pods[1], sport=40000,
                          peer=fam.outside[0], dport=443)
        assert out.retval == TC_SHOT
        assert node.nat_drops() == drops + 1
    # The socket gone, its port is free again.
    _, out = send_out(node, fam, proto, pod=fam.pods[1], sport=40000,
                      peer=fam.outside[0], dport=443)
    assert out.retval == TC_OK and ports_of(out.data)[1] == low


@FAMILIES
@pytest.mark.parametrize("proto", PROTOS)
def test_a_packet_to_the_node_without_a_mapping_goes_to_the_stack_untouched(
        node: Node, fam: Family, proto: str) -> None:
    packet = frame(fam.outside[0], fam.node, l4(proto, 443, PORTS[0], v6=fam is V6,
                                                reply=True))
    back = node.run("from_network", packet)
    assert (back.retval, back.data) == (TC_OK, packet)


@FAMILIES
def test_answers_to_a_flow_an_outside_peer_opened_keep_the_pod_address(
        node: Node, fam: Family) -> None:
    pod, peer = fam.pods[0], fam.outside[1]
    inbound = frame(peer, pod, l4("TCP", 50000, 8080, v6=fam is V6))
    delivered = node.run("from_network", inbound)
    assert delivered.retval == TC_REDIRECT
    answer, out = send_out(node, fam, "TCP", pod=pod, sport=8080, peer=peer, dport=50000)
    assert (out.retval, out.data) == (TC_OK, answer)


@FAMILIES
def test_masquerade_off_leaves_everything(node: Node, fam: Family) -> None:
    node.setup(enabled=False)
    request, out = send_out(node, fam, "UDP", pod=fam.pods[0], sport=40000,
                            peer=fam.outside[0], dport=53)
    assert (out.retval, out.data) == (TC_OK, request)
    assert not list(node.mappings.keys())


@pytest.mark.parametrize(("name", "layout"), [
    (masq.CONFIG_MAP, (ctypes.c_uint32, masq.MasqConfig)),
    (masq.NONMASQ_MAP, (LpmKey, ctypes.c_uint32)),
    (masq.MAPPINGS_MAP, (masq.MasqKey, masq.MasqEntry)),
])
def test_masquerade_layouts_match_the_built_object(name: str, layout: tuple[type, type]) -> None:
    with BpfObject.open("node") as obj:
        obj.verify_map_layout(name, *layout)
