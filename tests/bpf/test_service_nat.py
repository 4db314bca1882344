"""Per-packet service translation of node.c under BPF_PROG_TEST_RUN, IPv4 and IPv6.

Every translated packet is compared byte for byte with what a correct NAT produces
(scapy rebuilds the original with the new addresses and ports and fresh checksums), so
a wrong checksum, a stray byte or a wrong length fails as surely as a wrong address.
Tests whose reply leaves through the FIB (a client outside the cluster) run inside a
scratch namespace in which that client is on-link.
"""

from __future__ import annotations

import ipaddress
import socket
import statistics
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    _ICMPv6,
)
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit, SCTPChunkShutdownComplete
from scapy.packet import NoPayload, Packet, Raw

from sluice import netlink, netns
from sluice.datapath import endpoints as ep
from sluice.datapath import lb
from sluice.datapath import routing as rt
from sluice.datapath.addr import SlAddr
from sluice.datapath.conntrack import MAP_NAME as CT_MAP
from sluice.datapath.conntrack import CtEntry, CtFlags, CtKey, CtKind
from sluice.loader import BpfObject, Map, test_run
from sluice.loader.testrun import TestRunResult, skb_context
from tests.conftest import unique

pytestmark = pytest.mark.root

TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
CLIENT_MAC, HOST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:0a"
MAGLEV_TABLE_SIZE = 16381
PROTOS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Family:
    name: str
    client: str  # pod C on this node
    backend: str  # pod B on this node
    pods: tuple[str, str, str]  # three more local pods: backends for Maglev and affinity
    frontend: str  # a cluster IP
    outside: str  # a client outside the cluster, on the uplink's subnet
    stranger: str  # another outside client, off that subnet
    node: str  # this node's address: node-port frontends
    peer_node: str  # another node's address
    remote_pod: str  # a pod of the other node
    remote_cidr: str
    uplink_cidrs: tuple[str, str]  # the scratch node's uplink addresses (both families)


V4 = Family("ipv4", "198.18.16.2", "198.18.16.3",
            ("198.18.16.4", "198.18.16.5", "198.18.16.6"), "198.19.0.10",
            "198.18.0.250", "198.18.9.7", "198.18.0.11", "198.18.0.12", "198.18.17.5",
            "198.18.17.0/24", ("198.18.0.11/24", "fd00:ff::11/64"))
V6 = Family("ipv6", "fd00:10:1::2", "fd00:10:1::3",
            ("fd00:10:1::4", "fd00:10:1::5", "fd00:10:1::6"), "fd00:96::10",
            "fd00:ff::250", "fd00:fe::7", "fd00:ff::11", "fd00:ff::12", "fd00:10:2::5",
            "fd00:10:2::/64", ("198.18.0.11/24", "fd00:ff::11/64"))
FAMILIES = pytest.mark.parametrize("fam", [V4, V6], ids=["ipv4", "ipv6"])


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def pod_mac(index: int) -> str:
    return f"02:00:00:00:01:{index:02x}"


# --- packets ------------------------------------------------------------------------------


def l3(src: str, dst: str) -> Packet:
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=63)
    return IP(src=src, dst=dst, id=0x1234, ttl=63)


def l4(proto: str, sport: int, dport: int, *, reply: bool = False) -> Packet:
    if proto == "TCP":
        return TCP(sport=sport, dport=dport, flags="SA" if reply else "S", seq=1000,
                   ack=5001 if reply else 0, options=[("MSS", 1400)])
    if proto == "UDP":
        return UDP(sport=sport, dport=dport) / Raw(b"pong" if reply else b"ping")
    if reply:
        return SCTP(sport=sport, dport=dport, tag=0x1111) / SCTPChunkData(data=b"pong")
    return SCTP(sport=sport, dport=dport) / SCTPChunkInit(init_tag=0x1111, a_rwnd=65535,
                                                          n_out_streams=1, n_in_streams=1,
                                                          init_tsn=1)


def frame(src: str, dst: str, payload: Packet, *, src_mac: str = CLIENT_MAC) -> bytes:
    return bytes(Ether(src=src_mac, dst=HOST_MAC) / l3(src, dst) / payload)


def flow(data: bytes) -> tuple[Any, int, Any, int]:
    """(source, source port, destination, destination port) of a frame."""
    pkt = Ether(data)
    net, trans = pkt.payload, pkt.payload.payload
    while isinstance(trans, IPv6ExtHdrDestOpt):
        trans = trans.payload
    return ip(net.src), trans.sport, ip(net.dst), trans.dport


def rewritten(original: bytes, *, src: str | None = None, sport: int | None = None,
              dst: str | None = None, dport: int | None = None) -> bytes:
    """What a correct NAT makes of ORIGINAL (from the IP header on): the given fields
    changed and every checksum recomputed; an IPv4 UDP checksum of 0 stays 0."""
    pkt = Ether(original)
    net, trans = pkt.payload, pkt.payload.payload
    if src is not None:
        net.src = src
    if dst is not None:
        net.dst = dst
    if sport is not None:
        trans.sport = sport
    if dport is not None:
        trans.dport = dport
    if isinstance(net, IP):
        net.chksum = None
    if not (isinstance(net, IP) and isinstance(trans, UDP) and trans.chksum == 0):
        trans.chksum = None
    return bytes(pkt)[14:]


def checksum_layers(pkt: Packet) -> Iterator[tuple[Packet, str]]:
    """Layers whose checksum a receiver verifies: the packet's own IP/L4/ICMP headers and
    a quoted IPv4 header; not the L4 header inside an ICMP error (quoted, never checked)."""
    layer = pkt
    while not isinstance(layer, NoPayload):
        if type(layer) in (IP, IPerror, TCP, UDP, SCTP, ICMP):
            yield layer, "chksum"
        elif isinstance(layer, _ICMPv6) and any(f.name == "cksum" for f in layer.fields_desc):
            yield layer, "cksum"
        layer = layer.payload


def assert_checksums_valid(data: bytes) -> None:
    got, fresh = Ether(data), Ether(data)
    for layer, field in checksum_layers(fresh):
        if type(layer) is UDP and layer.chksum == 0 and isinstance(layer.underlayer, IP):
            continue  # IPv4 UDP without a checksum
        setattr(layer, field, None)
    rebuilt = Ether(bytes(fresh))
    pairs = list(zip(checksum_layers(got), checksum_layers(rebuilt), strict=True))
    assert pairs, "no checksummed layer found"
    for (layer, field), (good, _) in pairs:
        assert getattr(layer, field) == getattr(good, field), (
            f"{layer.name} checksum {getattr(layer, field):#x}, "
            f"should be {getattr(good, field):#x}")


# --- a node under test --------------------------------------------------------------------


class Node:
    """One loaded node.bpf.o with typed views of the maps the tests write."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.services: Map[lb.LbKey, lb.LbValue] = obj.map(lb.SERVICES_MAP, lb.LbKey, lb.LbValue)
        self.backends: Map[lb.BackendId, lb.LbBackend] = obj.map(
            lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend)
        self.maglev: Map[lb.LbMaglevKey, lb.MaglevSlot] = obj.map(
            lb.MAGLEV_MAP, lb.LbMaglevKey, lb.MaglevSlot)
        self.source_ranges: Map[lb.LbSourceKey, lb.SourceAllowed] = obj.map(
            lb.SOURCE_RANGES_MAP, lb.LbSourceKey, lb.SourceAllowed)
        self.endpoints: Map[ep.EndpointKey, ep.EndpointInfo] = obj.map(
            ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
        self.routes: Map[rt.RouteKey, rt.RouteEntry] = obj.map(
            rt.MAP_NAME, rt.RouteKey, rt.RouteEntry)
        self.conntrack: Map[CtKey, CtEntry] = obj.map(CT_MAP, CtKey, CtEntry)
        self._pods = 0

    def pod(self, address: str) -> str:
        """Make ADDRESS a local endpoint; returns the MAC packets to it get."""
        self._pods += 1
        mac = pod_mac(self._pods)
        self.endpoints.update(SlAddr.of(address), ep.EndpointInfo.pod(
            ifindex=100 + self._pods, mac=mac, host_mac=HOST_MAC))
        return mac

    def service(self, frontend: str, port: int, proto: str,
                backends: Sequence[tuple[int, str, int]], *, flags: int = 0,
                service_id: int = 1, affinity_timeout: int = 0, maglev_id: int = 0) -> None:
        for backend_id, address, backend_port in backends:
            self.backends.update(lb.BackendId(backend_id),
                                 lb.LbBackend.of(address, backend_port, proto))
        for slot, (backend_id, _, _) in enumerate(backends, start=1):
            self.services.update(lb.LbKey.of(frontend, port, proto, slot),
                                 lb.LbValue.slot(backend_id))
        self.services.update(lb.LbKey.of(frontend, port, proto),
                             lb.LbValue.service(service_id, len(backends), flags,
                                                affinity_timeout, maglev_id))

    def run(self, program: str, data: bytes, ctx: bytes | None = None) -> TestRunResult:
        return test_run(self.obj.program(program), data, ctx=ctx)

    def ct(self, src: str, sport: int, dst: str, dport: int, proto: str) -> CtEntry | None:
        return self.conntrack.lookup(CtKey.of(src, sport, dst, dport, proto))


@pytest.fixture
def make_node() -> Iterator[Callable[[], Node]]:
    with ExitStack() as stack:
        def make() -> Node:
            obj = stack.enter_context(BpfObject.open("node"))
            obj.load()
            return Node(obj)
        yield make


@pytest.fixture
def node(make_node: Callable[[], Node]) -> Node:
    return make_node()


@dataclass(frozen=True)
class FibNode:
    ns: str
    from_pod: bytes  # a test-run ctx: arriving on the pod veth of the scratch node


@pytest.fixture(scope="module")
def fib_node() -> Iterator[FibNode]:
    """A scratch node namespace whose uplink subnet holds the outside client, and a pod
    veth: a reply to that client leaves by FIB lookup (deliver_native) as a redirect."""
    ns = unique("sl-tsvc")
    netns.create(ns)
    try:
        netlink.create_veth(ns, "up0", ns, "up1")
        netlink.create_veth(ns, "pod0", ns, "pod1")
        netlink.configure(ns, "up0", list(V4.uplink_cidrs))
        netlink.configure(ns, "up1", [])
        netlink.configure(ns, "pod0", [])
        netlink.configure(ns, "pod1", [])
        netlink.set_sysctl(ns, "net.ipv4.conf.all.forwarding", "1")
        netlink.set_sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        pod0 = netlink.ifindex(ns, "pod0")
        yield FibNode(ns, skb_context(ingress_ifindex=pod0, ifindex=pod0))
    finally:
        netns.remove(ns)


def run_in(fib: FibNode, node: Node, program: str, data: bytes) -> TestRunResult:
    with netns.entered(fib.ns):
        return node.run(program, data, ctx=fib.from_pod)


def assert_delivered(result: TestRunResult, mac: str) -> None:
    assert result.retval == TC_REDIRECT, f"verdict {result.retval}, not a redirect"
    frame_ = Ether(result.data)
    assert (frame_.dst, frame_.src) == (mac, HOST_MAC)


def assert_leg(entry: CtEntry | None, kind: CtKind, nat: tuple[str, int]) -> None:
    assert entry is not None, "conntrack has no such leg"
    assert CtKind(entry.kind) is kind
    assert entry.nat == (ip(nat[0]), nat[1])


# --- 1. DNAT and reverse NAT ----------------------------------------------------------------


@FAMILIES
@pytest.mark.parametrize("proto", PROTOS)
def test_pod_to_cluster_ip_is_dnated_and_the_reply_comes_from_the_frontend(
        node: Node, fam: Family, proto: str) -> None:
    client_mac = node.pod(fam.client)
    backend_mac = node.pod(fam.backend)
    node.service(fam.frontend, 80, proto, [(1, fam.backend, 8080)])

    request = frame(fam.client, fam.frontend, l4(proto, 40000, 80))
    out = node.run("from_endpoint", request)
    assert_delivered(out, backend_mac)
    assert out.data[14:] == rewritten(request, dst=fam.backend, dport=8080)
    assert_checksums_valid(out.data)

    forward = node.ct(fam.client, 40000, fam.frontend, 80, proto)
    assert_leg(forward, CtKind.DNAT, (fam.backend, 8080))
    assert forward is not None and forward.backend_id == 1 and forward.flags == 0
    assert_leg(node.ct(fam.backend, 8080, fam.client, 40000, proto), CtKind.REPLY_SNAT,
               (fam.frontend, 80))

    reply = frame(fam.backend, fam.client, l4(proto, 8080, 40000, reply=True),
                  src_mac=backend_mac)
    back = node.run("from_endpoint", reply)
    assert_delivered(back, client_mac)
    assert back.data[14:] == rewritten(reply, src=fam.frontend, sport=80)
    assert_checksums_valid(back.data)

    # The flow's next packet follows conntrack to the same backend.
    again = node.run("from_endpoint", request)
    assert_delivered(again, backend_mac)
    assert again.data[14:] == rewritten(request, dst=fam.backend, dport=8080)
    forward = node.ct(fam.client, 40000, fam.frontend, 80, proto)
    assert forward is not None and forward.packets == 2


@FAMILIES
@pytest.mark.parametrize("proto", PROTOS)
def test_outside_client_to_node_port_reaches_a_local_backend_and_back(
        node: Node, fib_node: FibNode, fam: Family, proto: str) -> None:
    backend_mac = node.pod(fam.backend)
    node.service(fam.node, 30080, proto, [(1, fam.backend, 8080)])

    request = frame(fam.outside, fam.node, l4(proto, 40000, 30080))
    out = node.run("from_network", request)
    assert_delivered(out, backend_mac)
    assert out.data[14:] == rewritten(request, dst=fam.backend, dport=8080)
    assert_checksums_valid(out.data)
    assert_leg(node.ct(fam.outside, 40000, fam.node, 30080, proto), CtKind.DNAT,
               (fam.backend, 8080))
    assert_leg(node.ct(fam.backend, 8080, fam.outside, 40000, proto), CtKind.REPLY_SNAT,
               (fam.node, 30080))

    reply = frame(fam.backend, fam.outside, l4(proto, 8080, 40000, reply=True),
                  src_mac=backend_mac)
    back = run_in(fib_node, node, "from_endpoint", reply)
    assert back.retval == TC_REDIRECT, "the reply to an outside client leaves by the FIB"
    assert back.data[14:] == rewritten(reply, src=fam.node, sport=30080)
    assert_checksums_valid(back.data)


def test_ipv4_udp_without_checksum_keeps_none(node: Node) -> None:
    client_mac = node.pod(V4.client)
    backend_mac = node.pod(V4.backend)
    node.service(V4.frontend, 80, "UDP", [(1, V4.backend, 8080)])

    request = frame(V4.client, V4.frontend, UDP(sport=40000, dport=80, chksum=0) / b"ping")
    out = node.run("from_endpoint", request)
    assert_delivered(out, backend_mac)
    assert Ether(out.data)[UDP].chksum == 0
    assert out.data[14:] == rewritten(request, dst=V4.backend, dport=8080)

    reply = frame(V4.backend, V4.client, UDP(sport=8080, dport=40000, chksum=0) / b"pong")
    back = node.run("from_endpoint", reply)
    assert_delivered(back, client_mac)
    assert Ether(back.data)[UDP].chksum == 0
    assert back.data[14:] == rewritten(reply, src=V4.frontend, sport=80)


def test_sctp_in_a_padded_minimum_frame_is_translated(node: Node) -> None:
    """A short SCTP packet from the uplink arrives padded to Ethernet's 60 bytes; the
    padding is not part of the packet, nor of its CRC32c."""
    backend_mac = node.pod(V4.backend)
    node.service(V4.node, 30080, "SCTP", [(1, V4.backend, 8080)])
    request = frame(V4.outside, V4.node, SCTP(sport=40000, dport=30080, tag=7)
                    / SCTPChunkShutdownComplete())
    assert len(request) == 50
    out = node.run("from_network", request + bytes(10))
    assert_delivered(out, backend_mac)
    assert out.data[14:50] == rewritten(request, dst=V4.backend, dport=8080)


# --- 2. ICMP errors about a translated flow ---------------------------------------------------


ICMP_ERRORS = [
    pytest.param(V4, "port-unreachable", id="ipv4-port-unreachable"),
    pytest.param(V4, "fragmentation-needed", id="ipv4-fragmentation-needed"),
    pytest.param(V6, "port-unreachable", id="ipv6-port-unreachable"),
]


@pytest.mark.parametrize(("fam", "kind"), ICMP_ERRORS)
def test_icmp_error_from_the_backend_quotes_the_frontend(node: Node, fam: Family,
                                                         kind: str) -> None:
    client_mac = node.pod(fam.client)
    backend_mac = node.pod(fam.backend)
    node.service(fam.frontend, 80, "UDP", [(1, fam.backend, 8080)])
    request = frame(fam.client, fam.frontend, UDP(sport=40000, dport=80) / (b"x" * 40))
    out = node.run("from_endpoint", request)
    assert_delivered(out, backend_mac)
    seen_by_backend = out.data[14:]  # client:40000 -> backend:8080

    if fam is V6:
        error: Packet = ICMPv6DestUnreach(code=4) / seen_by_backend
    elif kind == "port-unreachable":
        error = ICMP(type=3, code=3) / seen_by_backend
    else:
        error = ICMP(type=3, code=4, nexthopmtu=1400) / seen_by_backend
    icmp = frame(fam.backend, fam.client, error, src_mac=backend_mac)
    back = node.run("from_endpoint", icmp)
    assert_delivered(back, client_mac)
    assert len(back.data) == len(icmp)
    assert_checksums_valid(back.data)

    pkt = Ether(back.data)
    outer, quoted = pkt.payload, pkt.payload.payload.payload
    assert (ip(outer.src), ip(outer.dst)) == (ip(fam.frontend), ip(fam.client))
    assert isinstance(quoted, IPerror6 if fam is V6 else IPerror)
    assert (ip(quoted.src), ip(quoted.dst)) == (ip(fam.client), ip(fam.frontend))
    assert (quoted.payload.sport, quoted.payload.dport) == (40000, 80)
    if kind == "fragmentation-needed":
        assert pkt[ICMP].code == 4 and pkt[ICMP].nexthopmtu == 1400
    # Nothing else of the quote changed: it is the client's own packet again, except for
    # the quoted UDP checksum (the backend's view, which no receiver checks).
    want = bytearray(request[14:])
    got = bytes(quoted)
    udp_csum = (20 if fam is V4 else 40) + 6
    want[udp_csum:udp_csum + 2] = got[udp_csum:udp_csum + 2]
    assert got == bytes(want)


# --- 3. frontends without backends ----------------------------------------------------------


@FAMILIES
@pytest.mark.parametrize("program", ["from_endpoint", "from_network"])
def test_syn_to_a_frontend_without_backends_is_reset(node: Node, fam: Family,
                                                     program: str) -> None:
    node.service(fam.frontend, 80, "TCP", [])
    syn = frame(fam.client, fam.frontend,
                TCP(sport=40000, dport=80, flags="S", seq=1000,
                    options=[("MSS", 1400), ("SAckOK", b""), ("NOP", None)]) / b"early")
    out = node.run(program, syn)
    assert out.retval == TC_REDIRECT, "the reset goes back out of the receiving device"
    pkt = Ether(out.data)
    assert (pkt.src, pkt.dst) == (HOST_MAC, CLIENT_MAC), "MACs are swapped"
    net, tcp = pkt.payload, pkt.payload.payload
    assert (ip(net.src), ip(net.dst)) == (ip(fam.frontend), ip(fam.client))
    assert (tcp.sport, tcp.dport) == (80, 40000)
    assert tcp.flags == "RA"
    assert tcp.ack == 1000 + 1 + 5, "acknowledges the SYN and its data"
    assert tcp.seq == 0 and tcp.dataofs == 5
    assert len(out.data) == 14 + (20 if fam is V4 else 40) + 20
    assert_checksums_valid(out.data)
    assert node.ct(fam.client, 40000, fam.frontend, 80, "TCP") is None


def test_reset_of_a_padded_minimum_syn_acknowledges_only_the_syn(node: Node) -> None:
    """A bare IPv4 SYN is 54 bytes; from the wire it arrives padded to 60."""
    node.service(V4.node, 30080, "TCP", [])
    syn = frame(V4.outside, V4.node, TCP(sport=40000, dport=30080, flags="S", seq=1000))
    assert len(syn) == 54
    out = node.run("from_network", syn + bytes(6))
    assert out.retval == TC_REDIRECT
    tcp = Ether(out.data)[TCP]
    assert tcp.flags == "RA" and tcp.ack == 1001
    assert_checksums_valid(out.data)


@FAMILIES
def test_reset_of_a_segment_with_ack_takes_its_sequence_from_the_ack(node: Node,
                                                                       fam: Family) -> None:
    node.service(fam.frontend, 80, "TCP", [])
    segment = frame(fam.client, fam.frontend,
                    TCP(sport=40000, dport=80, flags="PA", seq=1000, ack=777) / b"data")
    out = node.run("from_endpoint", segment)
    assert out.retval == TC_REDIRECT
    tcp = Ether(out.data)[TCP]
    assert tcp.flags == "R" and tcp.seq == 777
    assert_checksums_valid(out.data)


@FAMILIES
def test_udp_to_a_frontend_without_backends_gets_port_unreachable(node: Node,
                                                                  fam: Family) -> None:
    node.service(fam.frontend, 53, "UDP", [])
    request = frame(fam.client, fam.frontend, UDP(sport=40000, dport=53) / (b"q" * 64))
    out = node.run("from_endpoint", request)
    assert out.retval == TC_REDIRECT
    pkt = Ether(out.data)
    assert (pkt.src, pkt.dst) == (HOST_MAC, CLIENT_MAC)
    net = pkt.payload
    assert (ip(net.src), ip(net.dst)) == (ip(fam.frontend), ip(fam.client))
    icmp = net.payload
    quote_len = 28 if fam is V4 else 48
    if fam is V4:
        assert isinstance(icmp, ICMP) and (icmp.type, icmp.code) == (3, 3)
        assert net.len == 20 + 8 + quote_len
    else:
        assert isinstance(icmp, ICMPv6DestUnreach) and icmp.code == 4
        assert net.plen == 8 + quote_len
    assert len(out.data) == 14 + (20 if fam is V4 else 40) + 8 + quote_len
    assert out.data[-quote_len:] == request[14:14 + quote_len], "quotes the original"
    assert_checksums_valid(out.data)


@FAMILIES
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_local_only_frontend_without_backends_drops(node: Node, fam: Family,
                                                     proto: str) -> None:
    node.service(fam.node, 30080, proto, [], flags=lb.LbFlags.LOCAL_ONLY)
    out = node.run("from_network", frame(fam.outside, fam.node, l4(proto, 40000, 30080)))
    assert out.retval == TC_SHOT


# --- 4. loadBalancerSourceRanges --------------------------------------------------------------


@FAMILIES
def test_source_ranges_admit_only_listed_clients(node: Node, fam: Family) -> None:
    backend_mac = node.pod(fam.backend)
    node.service(fam.node, 30080, "TCP", [(1, fam.backend, 8080)],
                 flags=lb.LbFlags.SOURCE_RANGES, service_id=5)
    allowed = ipaddress.ip_network(fam.outside).supernet(new_prefix=24 if fam is V4 else 64)
    node.source_ranges.update(lb.LbSourceKey.of(5, allowed), lb.SourceAllowed(1))
    # The stranger is listed, but for another service.
    node.source_ranges.update(lb.LbSourceKey.of(6, ipaddress.ip_network(fam.stranger)),
                              lb.SourceAllowed(1))

    ok = node.run("from_network", frame(fam.outside, fam.node, l4("TCP", 40000, 30080)))
    assert_delivered(ok, backend_mac)
    assert flow(ok.data)[2:] == (ip(fam.backend), 8080)

    refused = node.run("from_network", frame(fam.stranger, fam.node, l4("TCP", 40000, 30080)))
    assert refused.retval == TC_SHOT
    assert node.ct(fam.stranger, 40000, fam.node, 30080, "TCP") is None


# --- 5. Maglev ------------------------------------------------------------------------------


def fill_maglev(node: Node, table: int) -> None:
    entries = [(lb.LbMaglevKey(table=table, index=i), lb.MaglevSlot(i % 3 + 1))
               for i in range(MAGLEV_TABLE_SIZE)]
    assert node.maglev.update_batch(entries) == MAGLEV_TABLE_SIZE


@FAMILIES
def test_maglev_picks_the_same_backend_on_every_node(make_node: Callable[[], Node],
                                                     fam: Family) -> None:
    nodes = [(make_node(), fam.node), (make_node(), fam.peer_node)]
    for node, frontend in nodes:
        for address in fam.pods:
            node.pod(address)
        node.service(frontend, 30080, "TCP",
                     [(i + 1, address, 8080) for i, address in enumerate(fam.pods)],
                     flags=lb.LbFlags.MAGLEV, service_id=3, maglev_id=9)
        fill_maglev(node, 9)

    chosen: dict[int, Any] = {}
    for port in range(41000, 41090):
        picks = []
        for node, frontend in nodes:
            out = node.run("from_network", frame(fam.outside, frontend, l4("TCP", port, 30080)))
            assert out.retval == TC_REDIRECT
            picks.append(flow(out.data)[2])
        assert picks[0] == picks[1], f"client port {port}: the nodes disagree"
        chosen[port] = picks[0]
    assert set(chosen.values()) == {ip(a) for a in fam.pods}, "ports spread over all backends"

    # The backend is the table's: index hash % size holds (index % 3) + 1.
    node = nodes[0][0]
    for port in (41000, 41001, 41002):
        entry = node.ct(fam.outside, port, fam.node, 30080, "TCP")
        assert entry is not None
        assert ip(fam.pods[entry.backend_id - 1]) == chosen[port]


# --- 6. ClientIP affinity ----------------------------------------------------------------------


@FAMILIES
def test_client_ip_affinity_keeps_new_flows_on_one_backend(node: Node, fam: Family) -> None:
    node.pod(fam.client)
    for address in fam.pods:
        node.pod(address)
    backends = [(i + 1, address, 8080) for i, address in enumerate(fam.pods)]
    node.service(fam.frontend, 80, "TCP", backends, flags=lb.LbFlags.AFFINITY,
                 affinity_timeout=10800)
    node.service(fam.frontend, 81, "TCP", backends, service_id=2)

    def backends_used(port: int) -> set[Any]:
        used = set()
        for sport in range(42000, 42024):
            out = node.run("from_endpoint", frame(fam.client, fam.frontend,
                                                  l4("TCP", sport, port)))
            assert out.retval == TC_REDIRECT
            used.add(flow(out.data)[2])
        return used

    assert len(backends_used(80)) == 1
    assert len(backends_used(81)) > 1, "without affinity new flows spread"


# --- 7. direct server return -----------------------------------------------------------------


@FAMILIES
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_dsr_carries_the_frontend_to_the_backend_node_which_answers_directly(
        make_node: Callable[[], Node], fib_node: FibNode, fam: Family, proto: str) -> None:
    lb_node, backend_node = make_node(), make_node()
    lb_node.service(fam.node, 30080, proto, [(1, fam.remote_pod, 8080)],
                    flags=lb.LbFlags.DSR)
    lb_node.routes.update(rt.RouteKey.of(fam.remote_cidr), rt.RouteEntry.of(
        rt.RouteKind.REMOTE_TUNNEL, ifindex=7, next_hop=V4.peer_node))
    pod_mac_ = backend_node.pod(fam.remote_pod)

    request = frame(fam.outside, fam.node, l4(proto, 40000, 30080))
    out = lb_node.run("from_network", request)
    assert out.retval == TC_REDIRECT, "into the tunnel"
    assert_checksums_valid(out.data)
    carried = Ether(out.data)
    frontend = struct.pack("!H", 30080) + ipaddress.ip_address(fam.node).packed
    if fam is V4:
        net = carried[IP]
        assert net.ihl == 7 and net.len == len(request) - 14 + 8
        assert bytes(net)[20:28] == bytes([0x9E, 8]) + frontend
    else:
        net = carried[IPv6]
        assert net.nh == 60 and net.plen == len(request) - 54 + 24
        opts = bytes(carried[IPv6ExtHdrDestOpt])[:24]
        assert opts[1] == 2, "24 bytes: hdrlen counts 8-byte units after the first"
        assert opts[2:4] == bytes([0x1E, 18]) and opts[4:22] == frontend
        assert opts[22:24] == bytes([1, 0]), "PadN fills the header"
    assert flow(out.data)[2:] == (ip(fam.remote_pod), 8080)
    forward = lb_node.ct(fam.outside, 40000, fam.node, 30080, proto)
    assert_leg(forward, CtKind.DNAT, (fam.remote_pod, 8080))
    assert forward is not None and forward.flags == CtFlags.DSR | CtFlags.REMOTE
    assert lb_node.ct(fam.remote_pod, 8080, fam.outside, 40000, proto) is None, \
        "the reply does not come back through the load-balancing node"

    delivered = backend_node.run("from_network", out.data)
    assert_delivered(delivered, pod_mac_)
    assert delivered.data[14:] == rewritten(request, dst=fam.remote_pod, dport=8080), \
        "the backend sees a plain DNATed packet"
    assert_checksums_valid(delivered.data)
    assert_leg(backend_node.ct(fam.remote_pod, 8080, fam.outside, 40000, proto),
               CtKind.REPLY_SNAT, (fam.node, 30080))

    reply = frame(fam.remote_pod, fam.outside, l4(proto, 8080, 40000, reply=True),
                  src_mac=pod_mac_)
    back = run_in(fib_node, backend_node, "from_endpoint", reply)
    assert back.retval == TC_REDIRECT
    assert back.data[14:] == rewritten(reply, src=fam.node, sport=30080)
    assert_checksums_valid(back.data)


@FAMILIES
def test_dsr_frontend_used_by_a_local_pod_is_plain_nat_both_ways(node: Node,
                                                                  fam: Family) -> None:
    """A pod's packets carry no frontend to the backend's node (only traffic from the
    network is answered directly), so its replies come back here and are reverse NATed."""
    client_mac = node.pod(fam.client)
    node.service(fam.node, 30080, "TCP", [(1, fam.remote_pod, 8080)], flags=lb.LbFlags.DSR)
    node.routes.update(rt.RouteKey.of(fam.remote_cidr), rt.RouteEntry.of(
        rt.RouteKind.REMOTE_TUNNEL, ifindex=7, next_hop=V4.peer_node))

    request = frame(fam.client, fam.node, l4("TCP", 40000, 30080))
    out = node.run("from_endpoint", request)
    assert out.retval == TC_REDIRECT, "into the tunnel"
    assert out.data[14:] == rewritten(request, dst=fam.remote_pod, dport=8080), \
        "no DSR option or extension header"
    forward = node.ct(fam.client, 40000, fam.node, 30080, "TCP")
    assert forward is not None and forward.flags == CtFlags.REMOTE

    reply = frame(fam.remote_pod, fam.client, l4("TCP", 8080, 40000, reply=True))
    back = node.run("from_network", reply)
    assert_delivered(back, client_mac)
    assert back.data[14:] == rewritten(reply, src=fam.node, sport=30080)


# --- 8. hairpin -------------------------------------------------------------------------------


@FAMILIES
@pytest.mark.parametrize("proto", PROTOS)
def test_hairpin_flow_comes_from_the_frontend_both_ways(node: Node, fam: Family,
                                                        proto: str) -> None:
    mac = node.pod(fam.client)
    node.service(fam.frontend, 80, proto, [(1, fam.client, 8080)])

    request = frame(fam.client, fam.frontend, l4(proto, 40000, 80))
    out = node.run("from_endpoint", request)
    assert_delivered(out, mac)
    assert flow(out.data) == (ip(fam.frontend), 40000, ip(fam.client), 8080)
    assert out.data[14:] == rewritten(request, src=fam.frontend, dst=fam.client, dport=8080)
    assert_checksums_valid(out.data)
    forward = node.ct(fam.client, 40000, fam.frontend, 80, proto)
    assert forward is not None and forward.flags == CtFlags.HAIRPIN

    reply = frame(fam.client, fam.frontend, l4(proto, 8080, 40000, reply=True))
    back = node.run("from_endpoint", reply)
    assert_delivered(back, mac)
    assert flow(back.data) == (ip(fam.frontend), 80, ip(fam.client), 40000)
    assert back.data[14:] == rewritten(reply, src=fam.frontend, sport=80, dst=fam.client)
    assert_checksums_valid(back.data)

    again = node.run("from_endpoint", request)
    assert again.data[14:] == out.data[14:]


# --- 9. everything else is left alone ----------------------------------------------------------


@FAMILIES
def test_traffic_unrelated_to_services_is_untouched(node: Node, fam: Family) -> None:
    node.pod(fam.client)
    backend_mac = node.pod(fam.backend)
    node.service(fam.frontend, 80, "TCP", [(1, fam.backend, 8080)])
    echo = ICMP(type=8, id=1, seq=1) if fam is V4 else ICMPv6EchoRequest(id=1, seq=1)
    stale_error = (ICMP(type=3, code=3) if fam is V4 else ICMPv6DestUnreach(code=4)) / \
        bytes(l3(fam.backend, fam.client) / UDP(sport=9, dport=9))
    to_pod = {
        "pod to pod": frame(fam.client, fam.backend, l4("TCP", 40000, 8080)),
        "the service's port, at a pod": frame(fam.client, fam.backend, l4("TCP", 40001, 80)),
        "ping": frame(fam.client, fam.backend, echo / b"abcd"),
        "error about no flow": frame(fam.client, fam.backend, stale_error),
    }
    for name, data in to_pod.items():
        out = node.run("from_endpoint", data)
        assert_delivered(out, backend_mac)
        assert out.data[12:] == data[12:], f"{name}: only the MACs may change"
    to_host = {
        "the frontend, other port": ("from_endpoint",
                                     frame(fam.client, fam.frontend, l4("TCP", 40000, 81))),
        "the frontend, other protocol": ("from_endpoint",
                                         frame(fam.client, fam.frontend, l4("UDP", 40000, 80))),
        "the node, no node port": ("from_network",
                                   frame(fam.outside, fam.node, l4("UDP", 40000, 30080))),
    }
    for name, (program, data) in to_host.items():
        out = node.run(program, data)
        assert (out.retval, out.data) == (TC_OK, data), f"{name}: left to the host as it was"
    assert list(node.conntrack.keys()) == [], "no flow was tracked"


def test_verified_programs_and_cost_of_a_translated_packet(
        node: Node, record_property: Callable[[str, object], None]) -> None:
    for name in ("from_endpoint", "from_network", "from_host"):
        info = node.obj.program(name).info()
        assert info.xlated_prog_len > 0, f"{name} was not translated"
        record_property(f"{name}_xlated_insns", info.xlated_prog_len // 8)
        print(f"{name}: {info.xlated_prog_len // 8} insns, {info.jited_prog_len} bytes jited")

    node.pod(V4.client)
    backend_mac = node.pod(V4.backend)
    costs: dict[str, list[int]] = {}
    for proto in PROTOS:
        node.service(V4.frontend, 80, proto, [(1, V4.backend, 8080)])
        new, known = [], []
        for sport in range(43000, 43040):
            request = frame(V4.client, V4.frontend, l4(proto, sport, 80))
            first = node.run("from_endpoint", request)
            assert_delivered(first, backend_mac)
            second = node.run("from_endpoint", request)
            assert second.data == first.data
            new.append(first.duration_ns)
            known.append(second.duration_ns)
        costs[f"{proto} new flow"] = new
        costs[f"{proto} known flow"] = known
    for what, samples in costs.items():
        median = statistics.median(samples)
        record_property(f"{what} median ns", median)
        print(f"{what}: median {median:.0f} ns over {len(samples)} test runs")


def test_conntrack_layout_matches_the_object(node: Node) -> None:
    node.obj.verify_map_layout(CT_MAP, CtKey, CtEntry)
    key = CtKey.of(V4.client, 40000, V4.frontend, 80, "TCP")
    assert (key.sport, key.proto) == (socket.htons(40000), socket.IPPROTO_TCP)
    assert CtKey.of(V4.frontend, 80, V4.client, 40000, "TCP").reversed().src.to_ip() == \
        ip(V4.client)
