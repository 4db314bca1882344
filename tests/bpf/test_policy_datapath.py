"""Network policy in node.c and the XDP prefilter under BPF_PROG_TEST_RUN, IPv4 and IPv6.

Map entries are written directly with the ctypes layouts of `sluice.datapath.policy`,
shaped as compile flattens policy: per endpoint, direction and tier, LPM entries keyed by
peer identity, protocol and port prefix, each carrying its rank and action. Programs run
without a device context, so tc programs see the packet on ifindex 1 and XDP on ingress
ifindex 1 (the loopback of the test's namespace): host endpoint tests use that index.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from sluice.compile.policytypes import CATCH_ALL_RANK, KUBERNETES_ALLOW_RANK
from sluice.datapath import endpoints as ep
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath.addr import LpmKey, SlAddr
from sluice.datapath.conntrack import MAP_NAME as CT_MAP
from sluice.datapath.conntrack import CtEntry, CtKey
from sluice.datapath.policy import Action, Direction, Identity, Tier
from sluice.datapath.prefilter import MAP_NAME as PREFILTER_MAP
from sluice.datapath.prefilter import PrefilterAction, PrefilterEntry, PrefilterKey
from sluice.loader import BpfObject, Map, RingBuffer, test_run
from sluice.loader.maps import map_info
from sluice.loader.testrun import TestRunResult

pytestmark = pytest.mark.root

TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS = 1, 2
TEST_RUN_IFINDEX = 1  # where a test run without context puts the packet
HOST_MAC = "02:00:00:00:00:0a"
SENDER_MAC = "02:00:00:00:00:01"
TCP_, UDP_, ICMP4, ICMP6 = 6, 17, 1, 58

ID_A, ID_B, ID_C = 300, 301, 302  # pod identities
ID_NET, ID_NET_EXCEPT = 1000, 1001  # an ipBlock's CIDR and its except


@dataclass(frozen=True)
class Family:
    name: str
    a: str  # pods on this node
    b: str
    c: str
    host: str  # this node's address
    remote_node: str
    net: str  # an ipBlock cidr ...
    net_except: str  # ... and its except
    client: str  # outside, inside `net`
    excepted: str  # outside, inside `net_except`
    stranger: str  # outside, in no policy CIDR
    frontend: str  # a cluster IP
    world: Identity


V4 = Family("ipv4", "198.18.16.2", "198.18.16.3", "198.18.16.4", "198.18.0.11",
            "198.18.0.12", "198.18.0.0/24", "198.18.0.128/25", "198.18.0.20",
            "198.18.0.250", "198.18.9.7", "198.19.0.10", Identity.WORLD_V4)
V6 = Family("ipv6", "fd00:10:1::2", "fd00:10:1::3", "fd00:10:1::4", "fd00:ff::11",
            "fd00:ff::12", "fd00:ff::/64", "fd00:ff::8000:0:0:0/65", "fd00:ff::20",
            "fd00:ff::8000:0:0:250", "fd00:fe::7", "fd00:96::10", Identity.WORLD_V6)
FAMILIES = pytest.mark.parametrize("fam", [V4, V6], ids=["ipv4", "ipv6"])


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


# --- packets ------------------------------------------------------------------------------


def l3(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst, hlim=63) if ":" in src else IP(src=src, dst=dst, ttl=63)


def tcp(src: str, sport: int, dst: str, dport: int, flags: str = "S", *,
        payload: bytes = b"") -> bytes:
    seg = TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=500 if "A" in flags else 0)
    return bytes(Ether(src=SENDER_MAC, dst=HOST_MAC) / l3(src, dst) / seg / payload)


def udp(src: str, sport: int, dst: str, dport: int) -> bytes:
    return bytes(Ether(src=SENDER_MAC, dst=HOST_MAC) / l3(src, dst)
                 / UDP(sport=sport, dport=dport) / Raw(b"ping"))


def echo(src: str, dst: str, ident: int, *, reply: bool = False) -> bytes:
    if ":" in src:
        msg: Packet = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident, seq=1)
    else:
        msg = ICMP(type=0 if reply else 8, id=ident, seq=1)
    return bytes(Ether(src=SENDER_MAC, dst=HOST_MAC) / l3(src, dst) / msg / b"abcd")


def icmp_error(src: str, dst: str) -> bytes:
    quoted = bytes(l3(dst, src) / UDP(sport=9, dport=9))
    err: Packet = ICMPv6DestUnreach(code=4) if ":" in src else ICMP(type=3, code=3)
    return bytes(Ether(src=SENDER_MAC, dst=HOST_MAC) / l3(src, dst) / err / quoted)


def port_prefixes(first: int, last: int) -> list[tuple[int, int]]:
    """A port range as LPM prefixes: (port, bits) pairs covering exactly first..last."""
    prefixes = []
    while first <= last:
        size = 1
        while first % (size * 2) == 0 and first + size * 2 - 1 <= last:
            size *= 2
        prefixes.append((first, 16 - (size.bit_length() - 1)))
        first += size
    return prefixes


# --- a node under test --------------------------------------------------------------------


class PolicyNode:
    """One loaded node.bpf.o with typed views of the maps policy reads and writes."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.endpoints: Map[ep.EndpointKey, ep.EndpointInfo] = obj.map(
            ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
        self.ipcache_map: Map[pol.IpcacheKey, pol.IpcacheEntry] = obj.map(
            pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry)
        self.policy: Map[pol.PolicyKey, pol.PolicyVerdict] = obj.map(
            pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
        self.states: Map[pol.StateIndex, pol.PolicyState] = obj.map(
            pol.STATES_MAP, pol.StateIndex, pol.PolicyState)
        self.failsafe_map: Map[pol.FailsafeKey, pol.FailsafeValue] = obj.map(
            pol.FAILSAFE_MAP, pol.FailsafeKey, pol.FailsafeValue)
        self.host_interfaces: Map[pol.HostInterfaceKey, pol.HostInterfaceValue] = obj.map(
            pol.HOST_INTERFACES_MAP, pol.HostInterfaceKey, pol.HostInterfaceValue)
        self.counters: Map[pol.StateIndex, pol.PolicyCounter] = obj.map(
            pol.COUNTERS_MAP, pol.StateIndex, pol.PolicyCounter)
        self.flows: Map[CtKey, pol.PolicyFlow] = obj.map(pol.FLOWS_MAP, CtKey, pol.PolicyFlow)
        self.conntrack: Map[CtKey, CtEntry] = obj.map(CT_MAP, CtKey, CtEntry)
        self._revision = 0

    # ipcache, endpoints, interfaces
    def ipcache(self, cidr: str, identity: int, cidr_identity: int = 0) -> None:
        self.ipcache_map.update(LpmKey.of(cidr), pol.IpcacheEntry(
            identity=identity, cidr_identity=cidr_identity or identity))

    def pod(self, address: str, ifindex: int, identity: int, cidr_identity: int = 0) -> str:
        """A local pod: endpoint and ipcache entry; returns the MAC packets to it get."""
        mac = f"02:00:00:00:01:{ifindex % 256:02x}"
        self.endpoints.update(SlAddr.of(address), ep.EndpointInfo.pod(
            ifindex=ifindex, mac=mac, host_mac=HOST_MAC, identity=identity))
        host_bits = "32" if "." in address else "128"
        self.ipcache(f"{address}/{host_bits}", identity, cidr_identity)
        return mac

    def host_endpoint(self, ifindex: int = TEST_RUN_IFINDEX,
                      flags: pol.HostInterfaceFlags = pol.HostInterfaceFlags.ENDPOINT) -> None:
        self.host_interfaces.update(pol.HostInterfaceKey(ifindex),
                                    pol.HostInterfaceValue(int(flags)))

    def failsafe(self, direction: pol.FailsafeDirection, proto: int, port: int) -> None:
        self.failsafe_map.update(pol.FailsafeKey.of(direction, proto, port),
                                 pol.FailsafeValue(1))

    # policy entries
    def rule(self, endpoint: int, direction: Direction, tier: Tier, action: Action, *,
             rank: int = 0, peer: int = Identity.ANY, proto: int = 0,
             ports: tuple[int, int] | None = None, rule_id: int = 0) -> None:
        verdict = pol.PolicyVerdict.of(action, rank, rule_id)
        if ports is None:
            keys = [pol.PolicyKey.of(endpoint, direction, tier, peer=peer, proto=proto,
                                     port_bits=0)]
        else:
            keys = [pol.PolicyKey.of(endpoint, direction, tier, peer=peer, proto=proto,
                                     port=port, port_bits=bits)
                    for port, bits in port_prefixes(*ports)]
        for key in keys:
            self.policy.update(key, verdict)

    def isolate(self, endpoint: int, direction: Direction) -> None:
        """A NetworkPolicy selects the endpoint: what no allow admits is denied."""
        self.rule(endpoint, direction, Tier.KUBERNETES, Action.DENY, rank=CATCH_ALL_RANK,
                  rule_id=9999)

    def allow(self, endpoint: int, direction: Direction, *, peer: int = Identity.ANY,
              proto: int = 0, ports: tuple[int, int] | None = None, rule_id: int = 1) -> None:
        self.rule(endpoint, direction, Tier.KUBERNETES, Action.ALLOW,
                  rank=KUBERNETES_ALLOW_RANK, peer=peer, proto=proto, ports=ports,
                  rule_id=rule_id)

    def verdict(self, endpoint: int, direction: Direction, tier: Tier, *,
                peer: int = Identity.ANY, proto: int = 0, port: int | None = None
                ) -> pol.PolicyVerdict | None:
        key = pol.PolicyKey.of(endpoint, direction, tier, peer=peer, proto=proto,
                               port=port or 0, port_bits=0 if port is None else 16)
        return self.policy.lookup(key)

    def bump(self) -> None:
        self._revision += 1
        self.states.update(pol.StateIndex(0), pol.PolicyState(revision=self._revision))

    # running and reading back
    def run(self, program: str, data: bytes) -> TestRunResult:
        return test_run(self.obj.program(program), data)

    def count(self, reason: pol.CounterReason) -> int:
        values = self.counters.lookup_percpu(pol.StateIndex(int(reason)))
        assert values is not None
        return sum(v.packets for v in values)

    def flow(self, src: str, sport: int, dst: str, dport: int, proto: int
             ) -> pol.PolicyFlow | None:
        key = CtKey(src=SlAddr.of(src), dst=SlAddr.of(dst), sport=socket.htons(sport),
                    dport=socket.htons(dport), proto=proto)
        return self.flows.lookup(key)


@pytest.fixture
def node() -> Iterator[PolicyNode]:
    with BpfObject.open("node") as obj:
        obj.load()
        yield PolicyNode(obj)


@pytest.fixture
def prefilter() -> Iterator[BpfObject]:
    with BpfObject.open("prefilter") as obj:
        obj.load()
        yield obj


def assert_delivered(result: TestRunResult, mac: str) -> None:
    assert result.retval == TC_REDIRECT, f"verdict {result.retval}, not a redirect"
    assert Ether(result.data).dst == mac


def assert_reset(result: TestRunResult, *, src: str, sport: int, dst: str, dport: int) -> None:
    """The packet was turned into a TCP reset from SRC:SPORT to DST:DPORT, sent back."""
    assert result.retval == TC_REDIRECT, f"verdict {result.retval}, not an answer"
    pkt = Ether(result.data)
    net, seg = pkt.payload, pkt.payload.payload
    assert isinstance(seg, TCP) and "R" in str(seg.flags)
    assert (ip(net.src), seg.sport, ip(net.dst), seg.dport) == (ip(src), sport, ip(dst), dport)


# Pods: A (ifindex 11) and B (12) and C (13) on this node; the node's own address.
A_IF, B_IF, C_IF = 11, 12, 13


def three_pods(node: PolicyNode, fam: Family) -> tuple[str, str, str]:
    node.ipcache(fam.host + ("/32" if fam is V4 else "/128"), Identity.HOST)
    return (node.pod(fam.a, A_IF, ID_A), node.pod(fam.b, B_IF, ID_B),
            node.pod(fam.c, C_IF, ID_C))


# --- 1. by identity, CIDR, port, protocol ---------------------------------------------------


@FAMILIES
def test_without_policy_flows_pass_and_are_recorded(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    flow = node.flow(fam.a, 40000, fam.b, 80, TCP_)
    assert flow is not None and flow.verdict == Action.ALLOW
    assert flow.hooks == pol.PolicyHook.ENDPOINT
    assert (flow.src_endpoint, flow.src_identity, flow.packets) == (A_IF, ID_A, 1)
    assert node.count(pol.CounterReason.PASS_NEW_FLOW) == 1


@FAMILIES
def test_ingress_allows_by_identity_and_port(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A, proto=TCP_, ports=(80, 80), rule_id=7)

    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    assert node.run("from_endpoint", tcp(fam.a, 40001, fam.b, 81)).retval == TC_SHOT
    assert node.run("from_endpoint", udp(fam.a, 40002, fam.b, 80)).retval == TC_SHOT
    assert node.run("from_endpoint", tcp(fam.c, 40003, fam.b, 80)).retval == TC_SHOT
    assert node.flow(fam.c, 40003, fam.b, 80, TCP_) is None, "denied flows are not recorded"
    assert node.count(pol.CounterReason.DROP_DENIED) == 3

    allow = node.verdict(B_IF, Direction.INGRESS, Tier.KUBERNETES, peer=ID_A, proto=TCP_,
                         port=80)
    catch_all = node.verdict(B_IF, Direction.INGRESS, Tier.KUBERNETES)
    assert allow is not None and allow.flows == 1, "the deciding entry counts its flows"
    assert catch_all is not None and catch_all.flows == 3


@FAMILIES
def test_egress_is_judged_at_the_sender(node: PolicyNode, fam: Family) -> None:
    _, b_mac, c_mac = three_pods(node, fam)
    node.isolate(A_IF, Direction.EGRESS)
    node.allow(A_IF, Direction.EGRESS, peer=ID_B, proto=UDP_, ports=(53, 53))
    assert_delivered(node.run("from_endpoint", udp(fam.a, 40000, fam.b, 53)), b_mac)
    assert node.run("from_endpoint", udp(fam.a, 40000, fam.c, 53)).retval == TC_SHOT
    assert node.run("from_endpoint", udp(fam.a, 40000, fam.stranger, 53)).retval == TC_SHOT
    # Egress of A says nothing about what C sends.
    assert_delivered(node.run("from_endpoint", udp(fam.b, 40000, fam.c, 53)), c_mac)


@FAMILIES
def test_ip_block_with_except_by_cidr_identity(node: PolicyNode, fam: Family) -> None:
    """An ipBlock is a CIDR identity; its except has one of its own (more specific in the
    ipcache), which the rule does not name."""
    _, b_mac, _ = three_pods(node, fam)
    node.ipcache(fam.net, ID_NET)
    node.ipcache(fam.net_except, ID_NET_EXCEPT)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_NET, proto=TCP_, ports=(80, 80))

    assert_delivered(node.run("from_network", tcp(fam.client, 40000, fam.b, 80)), b_mac)
    assert node.run("from_network", tcp(fam.excepted, 40000, fam.b, 80)).retval == TC_SHOT
    assert node.run("from_network", tcp(fam.stranger, 40000, fam.b, 80)).retval == TC_SHOT

    # World: an address no entry covers is WORLD (identity and CIDR identity).
    node.allow(B_IF, Direction.INGRESS, peer=fam.world, proto=TCP_, ports=(80, 80))
    assert_delivered(node.run("from_network", tcp(fam.stranger, 40001, fam.b, 80)), b_mac)


@FAMILIES
def test_ip_block_selects_pods_by_address(node: PolicyNode, fam: Family) -> None:
    """A pod's ipcache entry names the policy CIDR holding it as its CIDR identity."""
    three_pods(node, fam)
    b_mac = node.pod(fam.b, B_IF, ID_B)
    node.pod(fam.a, A_IF, ID_A, cidr_identity=ID_NET)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_NET, proto=TCP_)
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 443)), b_mac)
    assert node.run("from_endpoint", tcp(fam.c, 40000, fam.b, 443)).retval == TC_SHOT


@FAMILIES
def test_port_range_as_lpm_prefixes(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A, proto=TCP_, ports=(8000, 8100))
    assert len(port_prefixes(8000, 8100)) > 1
    for port, allowed in ((7999, False), (8000, True), (8001, True), (8063, True),
                          (8064, True), (8099, True), (8100, True), (8101, False)):
        out = node.run("from_endpoint", tcp(fam.a, 41000 + port % 1000, fam.b, port))
        if allowed:
            assert_delivered(out, b_mac)
        else:
            assert out.retval == TC_SHOT, f"port {port} is outside the range"


@FAMILIES
def test_any_protocol_rule_admits_every_protocol(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A)
    for packet in (tcp(fam.a, 40000, fam.b, 1), udp(fam.a, 40000, fam.b, 65535),
                   echo(fam.a, fam.b, 77)):
        assert_delivered(node.run("from_endpoint", packet), b_mac)
    assert node.run("from_endpoint", echo(fam.c, fam.b, 78)).retval == TC_SHOT
    proto = ICMP4 if fam is V4 else ICMP6
    flow = node.flow(fam.a, 77, fam.b, 77, proto)
    assert flow is not None, "an echo flow is keyed by its id as both ports"


@FAMILIES
def test_icmp_errors_and_neighbour_discovery_pass(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.isolate(B_IF, Direction.INGRESS)
    node.isolate(A_IF, Direction.EGRESS)
    assert_delivered(node.run("from_endpoint", icmp_error(fam.a, fam.b)), b_mac)
    assert node.count(pol.CounterReason.DROP_DENIED) == 0


def test_ipv6_neighbour_discovery_passes_egress_isolation(node: PolicyNode) -> None:
    three_pods(node, V6)
    node.isolate(A_IF, Direction.EGRESS)
    solicit = bytes(Ether(src=SENDER_MAC, dst="33:33:ff:00:00:01")
                    / IPv6(src=V6.a, dst="ff02::1:ff00:1", hlim=255)
                    / ICMPv6ND_NS(tgt="fd00:10:1::1"))
    assert node.run("from_endpoint", solicit).retval == TC_OK, "to the host, not dropped"
    assert node.count(pol.CounterReason.DROP_DENIED) == 0


def test_later_ipv4_fragments_follow_their_first(node: PolicyNode) -> None:
    """Only the first fragment carries ports: it is judged, later ones are not."""
    _, b_mac, _ = three_pods(node, V4)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A, proto=UDP_, ports=(53, 53))
    datagram = IP(src=V4.a, dst=V4.b, id=7) / UDP(sport=40000, dport=53) / (b"q" * 120)
    first, later = fragment(datagram, fragsize=64)[:2]
    assert_delivered(node.run("from_endpoint", bytes(Ether(dst=HOST_MAC) / first)), b_mac)
    assert_delivered(node.run("from_endpoint", bytes(Ether(dst=HOST_MAC) / later)), b_mac)
    denied = IP(src=V4.c, dst=V4.b, id=8) / UDP(sport=40000, dport=53) / (b"q" * 120)
    assert node.run("from_endpoint",
                    bytes(Ether(dst=HOST_MAC) / fragment(denied, fragsize=64)[0])).retval == \
        TC_SHOT


# --- 2. tiers -------------------------------------------------------------------------------


@FAMILIES
def test_global_deny_beats_a_kubernetes_allow(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=3, peer=ID_A,
              proto=TCP_, ports=(22, 22), rule_id=30)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.ALLOW, rank=5, peer=ID_A,
              proto=TCP_, rule_id=31)
    assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 22)).retval == TC_SHOT
    assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)).retval == TC_REDIRECT
    deny = node.verdict(B_IF, Direction.INGRESS, Tier.GLOBAL, peer=ID_A, proto=TCP_, port=22)
    assert deny is not None and deny.flows == 1


@FAMILIES
def test_lower_rank_wins_across_peer_classes(node: PolicyNode, fam: Family) -> None:
    """An allow for any peer ranked first beats a deny of the peer's identity ranked later."""
    _, b_mac, _ = three_pods(node, fam)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.ALLOW, rank=1, proto=TCP_,
              ports=(80, 80))
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=2, peer=ID_A)
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 81)).retval == TC_SHOT


@FAMILIES
def test_pass_hands_the_flow_to_the_kubernetes_tier(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.PASS, rank=1, peer=ID_A)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A, proto=TCP_, ports=(80, 80))
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 81)).retval == TC_SHOT, \
        "passed to a tier that denies"
    assert node.run("from_endpoint", tcp(fam.c, 40000, fam.b, 80)).retval == TC_SHOT, \
        "not passed: the global tier's catch-all denies"


@FAMILIES
def test_pass_to_an_empty_kubernetes_tier_allows(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.PASS, rank=1, peer=ID_A)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    assert node.run("from_endpoint", tcp(fam.c, 40000, fam.b, 80)).retval == TC_SHOT


@FAMILIES
def test_log_emits_an_event_without_deciding(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.rule(B_IF, Direction.INGRESS, Tier.LOG, Action.LOG, rank=1, peer=ID_A, rule_id=41)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=2, peer=ID_A,
              proto=UDP_, rule_id=42)
    node.rule(B_IF, Direction.INGRESS, Tier.LOG, Action.LOG, rank=3, peer=ID_C, rule_id=43)
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.ALLOW, rank=2, peer=ID_C,
              rule_id=44)

    events: list[pol.PolicyEvent] = []
    with RingBuffer(node.obj.map_fd(pol.EVENTS_MAP),
                    lambda record: events.append(pol.PolicyEvent.parse(record))) as ring:
        assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)).retval == TC_REDIRECT
        assert node.run("from_endpoint", udp(fam.a, 40001, fam.b, 53)).retval == TC_SHOT
        assert node.run("from_endpoint", tcp(fam.c, 40002, fam.b, 80)).retval == TC_REDIRECT
        assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80, "A")).retval == \
            TC_REDIRECT, "a known flow is not judged (or logged) again"
        ring.poll(100)

    assert [(e.rule_id, Action(e.verdict)) for e in events] == \
        [(41, Action.ALLOW), (41, Action.DENY)], "rule 43 ranks after the decision"
    first = events[0]
    assert first.flow == (ip(fam.a), 40000, ip(fam.b), 80, TCP_)
    assert (first.endpoint, Direction(first.direction), Action(first.action)) == \
        (B_IF, Direction.INGRESS, Action.LOG)
    assert first.hook == pol.PolicyHook.ENDPOINT


# --- 3. flows: replies and policy changes ---------------------------------------------------


@FAMILIES
def test_reply_of_an_allowed_flow_passes_where_a_new_flow_is_denied(
        node: PolicyNode, fam: Family) -> None:
    a_mac, b_mac, _ = three_pods(node, fam)
    node.isolate(A_IF, Direction.INGRESS)
    node.isolate(A_IF, Direction.EGRESS)
    node.allow(A_IF, Direction.EGRESS, peer=ID_B, proto=TCP_, ports=(80, 80))
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    assert_delivered(node.run("from_endpoint", tcp(fam.b, 80, fam.a, 40000, "SA")), a_mac)
    assert node.run("from_endpoint", tcp(fam.b, 80, fam.a, 40001, "S")).retval == TC_SHOT
    flow = node.flow(fam.a, 40000, fam.b, 80, TCP_)
    assert flow is not None and flow.packets == 2
    assert node.flow(fam.b, 80, fam.a, 40000, TCP_) is None, "one entry, both directions"


@FAMILIES
def test_echo_reply_is_the_reply_of_its_request(node: PolicyNode, fam: Family) -> None:
    a_mac, b_mac, _ = three_pods(node, fam)
    node.isolate(A_IF, Direction.INGRESS)
    assert_delivered(node.run("from_endpoint", echo(fam.a, fam.b, 5)), b_mac)
    assert_delivered(node.run("from_endpoint", echo(fam.b, fam.a, 5, reply=True)), a_mac)
    assert node.run("from_endpoint", echo(fam.b, fam.a, 6)).retval == TC_SHOT


@FAMILIES
def test_policy_change_cuts_a_flow_it_now_forbids(node: PolicyNode, fam: Family) -> None:
    a_mac, b_mac, _ = three_pods(node, fam)
    node.bump()
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A, proto=TCP_, ports=(80, 80))
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80)), b_mac)
    assert_delivered(node.run("from_endpoint", tcp(fam.b, 80, fam.a, 40000, "SA")), a_mac)

    # A policy change that still allows the flow: it goes on, judged under the new revision.
    node.bump()
    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80, "A")), b_mac)
    flow = node.flow(fam.a, 40000, fam.b, 80, TCP_)
    assert flow is not None and flow.revision == 2 and flow.verdict == Action.ALLOW

    # The allow is gone: the next packet (here the reply) is answered with a reset toward
    # its sender, and the flow is marked denied.
    node.policy.delete(pol.PolicyKey.of(B_IF, Direction.INGRESS, Tier.KUBERNETES, peer=ID_A,
                                        proto=TCP_, port=80))
    node.bump()
    cut = node.run("from_endpoint", tcp(fam.b, 80, fam.a, 40000, "A", payload=b"late"))
    assert_reset(cut, src=fam.a, sport=40000, dst=fam.b, dport=80)
    assert Ether(cut.data).dst == SENDER_MAC, "back to the sender"
    flow = node.flow(fam.a, 40000, fam.b, 80, TCP_)
    assert flow is not None and flow.verdict == Action.DENY and flow.revision == 3
    assert node.count(pol.CounterReason.DROP_FLOW_CUT) == 1

    # Later packets, either way, are dropped without another reset.
    assert node.run("from_endpoint", tcp(fam.a, 40000, fam.b, 80, "A")).retval == TC_SHOT
    assert node.run("from_endpoint", tcp(fam.b, 80, fam.a, 40000, "A")).retval == TC_SHOT
    assert node.count(pol.CounterReason.DROP_FLOW_CUT) == 3


@FAMILIES
def test_cut_udp_flow_is_dropped(node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    assert_delivered(node.run("from_endpoint", udp(fam.a, 40000, fam.b, 53)), b_mac)
    node.isolate(B_IF, Direction.INGRESS)
    node.bump()
    assert node.run("from_endpoint", udp(fam.a, 40000, fam.b, 53)).retval == TC_SHOT


@FAMILIES
def test_service_flow_is_judged_after_dnat_and_cut_from_the_frontend(
        node: PolicyNode, fam: Family) -> None:
    a_mac, b_mac, _ = three_pods(node, fam)
    node_services(node, fam.frontend, 80, fam.b, 8080)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=ID_A, proto=TCP_, ports=(8080, 8080))

    assert_delivered(node.run("from_endpoint", tcp(fam.a, 40000, fam.frontend, 80)), b_mac)
    assert node.flow(fam.a, 40000, fam.b, 8080, TCP_) is not None, "the pod-facing tuple"
    assert node.flow(fam.a, 40000, fam.frontend, 80, TCP_) is None
    back = node.run("from_endpoint", tcp(fam.b, 8080, fam.a, 40000, "SA"))
    assert_delivered(back, a_mac)
    assert ip(Ether(back.data).payload.src) == ip(fam.frontend), "reverse SNAT still done"

    node.isolate(B_IF, Direction.INGRESS)
    node.policy.delete(pol.PolicyKey.of(B_IF, Direction.INGRESS, Tier.KUBERNETES, peer=ID_A,
                                        proto=TCP_, port=8080))
    node.bump()
    cut = node.run("from_endpoint", tcp(fam.a, 40000, fam.frontend, 80, "A"))
    assert_reset(cut, src=fam.frontend, sport=80, dst=fam.a, dport=40000)


def node_services(node: PolicyNode, frontend: str, port: int, backend: str,
                  backend_port: int) -> None:
    services: Map[lb.LbKey, lb.LbValue] = node.obj.map(lb.SERVICES_MAP, lb.LbKey, lb.LbValue)
    backends: Map[lb.BackendId, lb.LbBackend] = node.obj.map(lb.BACKENDS_MAP, lb.BackendId,
                                                             lb.LbBackend)
    backends.update(lb.BackendId(1), lb.LbBackend.of(backend, backend_port, "TCP"))
    services.update(lb.LbKey.of(frontend, port, "TCP", 1), lb.LbValue.slot(1))
    services.update(lb.LbKey.of(frontend, port, "TCP"), lb.LbValue.service(1, 1))


# --- 4. from the network, from the host -----------------------------------------------------


@FAMILIES
def test_from_host_is_judged_with_peer_host(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.isolate(B_IF, Direction.INGRESS)
    node.allow(B_IF, Direction.INGRESS, peer=Identity.HOST, proto=TCP_, ports=(8080, 8080))
    node.isolate(C_IF, Direction.INGRESS)
    assert node.run("from_host", tcp(fam.host, 40000, fam.b, 8080)).retval == TC_REDIRECT
    assert node.run("from_host", tcp(fam.host, 40000, fam.c, 8080)).retval == TC_SHOT
    assert node.flow(fam.host, 40000, fam.b, 8080, TCP_) is not None
    # The pod's reply to the host is the reply of that flow.
    reply = node.run("from_endpoint", tcp(fam.b, 8080, fam.host, 40000, "SA"))
    assert reply.retval == TC_OK, "to the host stack"


@FAMILIES
def test_pod_flow_to_the_outside_gets_its_replies_from_the_network(
        node: PolicyNode, fam: Family) -> None:
    a_mac, _, _ = three_pods(node, fam)
    node.isolate(A_IF, Direction.INGRESS)
    assert node.run("from_endpoint", tcp(fam.a, 40000, fam.stranger, 443)).retval == TC_OK
    assert_delivered(node.run("from_network", tcp(fam.stranger, 443, fam.a, 40000, "SA")),
                     a_mac)
    assert node.run("from_network", tcp(fam.stranger, 443, fam.a, 40001, "S")).retval == \
        TC_SHOT


# --- 5. host endpoints ----------------------------------------------------------------------


HEP = TEST_RUN_IFINDEX


@FAMILIES
def test_host_endpoint_ingress_to_the_host(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.host_endpoint()
    node.ipcache(fam.net, ID_NET)
    node.rule(HEP, Direction.INGRESS, Tier.GLOBAL, Action.ALLOW, rank=1, peer=ID_NET,
              proto=TCP_, ports=(443, 443))
    node.rule(HEP, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    assert node.run("from_network", tcp(fam.client, 40000, fam.host, 443)).retval == TC_OK
    assert node.run("from_network", tcp(fam.client, 40000, fam.host, 80)).retval == TC_SHOT
    assert node.run("from_network", tcp(fam.stranger, 40000, fam.host, 443)).retval == \
        TC_SHOT
    flow = node.flow(fam.client, 40000, fam.host, 443, TCP_)
    assert flow is not None and (flow.in_ifindex, flow.orig_dport) == (HEP, socket.htons(443))
    # Not a host interface: its policy does not apply.
    node.host_interfaces.delete(pol.HostInterfaceKey(HEP))
    assert node.run("from_network", tcp(fam.client, 40001, fam.host, 80)).retval == TC_OK


@FAMILIES
def test_host_endpoint_forward_ingress_applies_with_the_pods_ingress(
        node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.host_endpoint()
    node.rule(HEP, Direction.FORWARD_INGRESS, Tier.GLOBAL, Action.ALLOW, rank=1,
              proto=TCP_, ports=(80, 80))
    node.rule(HEP, Direction.FORWARD_INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.rule(HEP, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.isolate(C_IF, Direction.INGRESS)
    assert_delivered(node.run("from_network", tcp(fam.stranger, 40000, fam.b, 80)), b_mac)
    assert node.run("from_network", tcp(fam.stranger, 40000, fam.b, 81)).retval == TC_SHOT
    assert node.run("from_network", tcp(fam.stranger, 40000, fam.c, 80)).retval == TC_SHOT, \
        "the pod's own ingress policy still applies"


@FAMILIES
def test_host_endpoint_prednat_sees_the_node_port_before_translation(
        node: PolicyNode, fam: Family) -> None:
    _, b_mac, _ = three_pods(node, fam)
    node.host_endpoint()
    node_services(node, fam.host, 30080, fam.b, 8080)
    node.ipcache(fam.net, ID_NET)
    node.rule(HEP, Direction.PREDNAT, Tier.GLOBAL, Action.DENY, rank=1, peer=ID_NET,
              proto=TCP_, ports=(30080, 30080))
    assert node.run("from_network", tcp(fam.client, 40000, fam.host, 30080)).retval == \
        TC_SHOT
    assert list(node.conntrack.keys()) == [], "dropped before the service picked a backend"
    assert_delivered(node.run("from_network", tcp(fam.stranger, 40000, fam.host, 30080)),
                     b_mac)
    flow = node.flow(fam.stranger, 40000, fam.b, 8080, TCP_)
    assert flow is not None and flow.orig_dport == socket.htons(30080)
    # The flow's later packets (named by the backend after translation) pass.
    assert_delivered(node.run("from_network", tcp(fam.stranger, 40000, fam.host, 30080, "A")),
                     b_mac)
    flow = node.flow(fam.stranger, 40000, fam.b, 8080, TCP_)
    assert flow is not None and flow.packets == 2
    # A policy change re-judges preDNAT with the port the client asked for.
    node.rule(HEP, Direction.PREDNAT, Tier.GLOBAL, Action.DENY, rank=2, peer=fam.world,
              proto=TCP_, ports=(30080, 30080))
    node.bump()
    cut = node.run("from_network", tcp(fam.stranger, 40000, fam.host, 30080, "A"))
    assert_reset(cut, src=fam.host, sport=30080, dst=fam.stranger, dport=40000)


@FAMILIES
def test_failsafe_inbound_bypasses_host_endpoint_policy(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.host_endpoint()
    for direction in (Direction.PREDNAT, Direction.INGRESS):
        node.rule(HEP, direction, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.failsafe(pol.FailsafeDirection.INBOUND, TCP_, 22)
    assert node.run("from_network", tcp(fam.stranger, 40000, fam.host, 22)).retval == TC_OK
    assert node.run("from_network", tcp(fam.stranger, 40000, fam.host, 23)).retval == TC_SHOT
    assert node.run("from_network", udp(fam.stranger, 40000, fam.host, 22)).retval == TC_SHOT
    assert node.count(pol.CounterReason.PASS_FAILSAFE) == 1


@FAMILIES
def test_host_endpoint_egress_and_the_replies_of_host_flows(node: PolicyNode,
                                                            fam: Family) -> None:
    three_pods(node, fam)
    node.host_endpoint()
    node.rule(HEP, Direction.EGRESS, Tier.GLOBAL, Action.ALLOW, rank=1, proto=UDP_,
              ports=(53, 53))
    node.rule(HEP, Direction.EGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.rule(HEP, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    assert node.run("to_network", udp(fam.host, 5353, fam.stranger, 53)).retval == TC_OK
    assert node.run("to_network", udp(fam.host, 5353, fam.stranger, 54)).retval == TC_SHOT
    # The answer arrives where new flows are denied.
    assert node.run("from_network", udp(fam.stranger, 53, fam.host, 5353)).retval == TC_OK
    assert node.run("from_network", udp(fam.stranger, 53, fam.host, 5354)).retval == TC_SHOT
    flow = node.flow(fam.host, 5353, fam.stranger, 53, UDP_)
    assert flow is not None and flow.hooks == pol.PolicyHook.UPLINK and flow.out_ifindex == HEP


@FAMILIES
def test_host_endpoint_forward_egress_of_a_pods_flow(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.host_endpoint()
    node.rule(HEP, Direction.FORWARD_EGRESS, Tier.GLOBAL, Action.DENY, rank=1, proto=TCP_,
              ports=(25, 25))
    node.rule(HEP, Direction.EGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    for port, verdict in ((443, TC_OK), (25, TC_SHOT)):
        assert node.run("from_endpoint", tcp(fam.a, 40000, fam.stranger, port)).retval == TC_OK
        assert node.run("to_network", tcp(fam.a, 40000, fam.stranger, port)).retval == verdict
    flow = node.flow(fam.a, 40000, fam.stranger, 443, TCP_)
    assert flow is not None and flow.hooks == pol.PolicyHook.ENDPOINT | pol.PolicyHook.UPLINK
    denied = node.flow(fam.a, 40000, fam.stranger, 25, TCP_)
    assert denied is not None and denied.verdict == Action.DENY


@FAMILIES
def test_failsafe_outbound_and_the_overlay_pass(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    node.host_endpoint()
    node.ipcache(fam.remote_node + ("/32" if fam is V4 else "/128"), Identity.REMOTE_NODE)
    node.rule(HEP, Direction.EGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.rule(HEP, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    node.failsafe(pol.FailsafeDirection.OUTBOUND, TCP_, 2379)
    assert node.run("to_network", tcp(fam.host, 40000, fam.stranger, 2379)).retval == TC_OK
    assert node.run("to_network", udp(fam.host, 40000, fam.remote_node, 4789)).retval == TC_OK
    assert node.run("from_network", udp(fam.remote_node, 40000, fam.host, 4789)).retval == \
        TC_OK
    assert node.run("to_network", udp(fam.host, 40000, fam.stranger, 4789)).retval == TC_SHOT
    assert node.flow(fam.host, 40000, fam.remote_node, 4789, UDP_) is None, \
        "overlay packets are not flows"


def test_to_network_leaves_other_interfaces_alone(node: PolicyNode) -> None:
    three_pods(node, V4)
    node.rule(HEP, Direction.EGRESS, Tier.GLOBAL, Action.DENY, rank=CATCH_ALL_RANK)
    assert node.run("to_network", udp(V4.host, 40000, V4.stranger, 53)).retval == TC_OK
    assert list(node.flows.keys()) == []


# --- 6. the XDP prefilter: CIDRs, failsafe, doNotTrack ------------------------------------


class Prefilter:
    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.cidrs: Map[PrefilterKey, PrefilterEntry] = obj.map(PREFILTER_MAP, PrefilterKey,
                                                                PrefilterEntry)
        self.node = PolicyView(obj)

    def xdp(self, data: bytes) -> int:
        return test_run(self.obj.program("prefilter_xdp"), data).retval


class PolicyView:
    """The policy maps an object without flows (the prefilter) has."""

    def __init__(self, obj: BpfObject) -> None:
        self.ipcache: Map[pol.IpcacheKey, pol.IpcacheEntry] = obj.map(
            pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry)
        self.policy: Map[pol.PolicyKey, pol.PolicyVerdict] = obj.map(
            pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
        self.failsafe: Map[pol.FailsafeKey, pol.FailsafeValue] = obj.map(
            pol.FAILSAFE_MAP, pol.FailsafeKey, pol.FailsafeValue)
        self.host_interfaces: Map[pol.HostInterfaceKey, pol.HostInterfaceValue] = obj.map(
            pol.HOST_INTERFACES_MAP, pol.HostInterfaceKey, pol.HostInterfaceValue)
        self.counters: Map[pol.StateIndex, pol.PolicyCounter] = obj.map(
            pol.COUNTERS_MAP, pol.StateIndex, pol.PolicyCounter)

    def count(self, reason: pol.CounterReason) -> int:
        values = self.counters.lookup_percpu(pol.StateIndex(int(reason)))
        assert values is not None
        return sum(v.packets for v in values)


@pytest.fixture
def xdp(prefilter: BpfObject) -> Prefilter:
    return Prefilter(prefilter)


def untracked(view: PolicyView, action: Action, *, rank: int, peer: int = Identity.ANY,
              proto: int = 0, port: int | None = None) -> None:
    key = pol.PolicyKey.of(HEP, Direction.UNTRACKED, Tier.GLOBAL, peer=peer, proto=proto,
                           port=port or 0, port_bits=0 if port is None else 16)
    view.policy.update(key, pol.PolicyVerdict.of(action, rank))


@FAMILIES
def test_untracked_deny_drops_in_xdp(xdp: Prefilter, fam: Family) -> None:
    view = xdp.node
    view.ipcache.update(LpmKey.of(fam.net), pol.IpcacheEntry(identity=ID_NET,
                                                             cidr_identity=ID_NET))
    untracked(view, Action.DENY, rank=2, peer=ID_NET)
    untracked(view, Action.ALLOW, rank=1, peer=ID_NET, proto=UDP_, port=123)
    packet = tcp(fam.client, 40000, fam.host, 80)
    assert xdp.xdp(packet) == XDP_PASS, "no UNTRACKED flag on the interface: not judged"
    view.host_interfaces.update(pol.HostInterfaceKey(HEP), pol.HostInterfaceValue(
        int(pol.HostInterfaceFlags.UNTRACKED)))
    assert xdp.xdp(packet) == XDP_DROP
    assert xdp.xdp(packet) == XDP_DROP, "per packet: no state"
    assert xdp.xdp(udp(fam.client, 40000, fam.host, 123)) == XDP_PASS, "ranked first"
    assert xdp.xdp(tcp(fam.stranger, 40000, fam.host, 80)) == XDP_PASS
    assert view.count(pol.CounterReason.DROP_UNTRACKED) == 2


@FAMILIES
def test_failsafe_passes_xdp_but_the_cidr_deny_list_comes_first(xdp: Prefilter,
                                                                  fam: Family) -> None:
    view = xdp.node
    view.host_interfaces.update(pol.HostInterfaceKey(HEP), pol.HostInterfaceValue(
        int(pol.HostInterfaceFlags.UNTRACKED)))
    untracked(view, Action.DENY, rank=CATCH_ALL_RANK)
    view.failsafe.update(pol.FailsafeKey.of(pol.FailsafeDirection.INBOUND, TCP_, 22),
                         pol.FailsafeValue(1))
    assert xdp.xdp(tcp(fam.stranger, 40000, fam.host, 22)) == XDP_PASS
    assert xdp.xdp(tcp(fam.stranger, 40000, fam.host, 23)) == XDP_DROP
    assert view.count(pol.CounterReason.PASS_FAILSAFE) == 1
    xdp.cidrs.update(PrefilterKey.of(fam.stranger + ("/32" if fam is V4 else "/128")),
                     PrefilterEntry(action=PrefilterAction.DROP, rule_id=1))
    assert xdp.xdp(tcp(fam.stranger, 40000, fam.host, 22)) == XDP_DROP
    assert view.count(pol.CounterReason.DROP_PREFILTER) == 1
    assert view.count(pol.CounterReason.DROP_UNTRACKED) == 1


# --- 7. counters and shared maps -------------------------------------------------------------


def test_counters_count_packets_and_bytes_by_reason(node: PolicyNode) -> None:
    three_pods(node, V4)
    node.isolate(B_IF, Direction.INGRESS)
    denied = tcp(V4.a, 40000, V4.b, 80)
    for _ in range(3):
        assert node.run("from_endpoint", denied).retval == TC_SHOT
    values = node.counters.lookup_percpu(pol.StateIndex(int(pol.CounterReason.DROP_DENIED)))
    assert values is not None
    assert sum(v.packets for v in values) == 3
    assert sum(v.bytes for v in values) == 3 * len(denied)
    assert node.count(pol.CounterReason.PASS_NEW_FLOW) == 0


SHARED_MAPS = (pol.IPCACHE_MAP, pol.POLICY_MAP, pol.STATES_MAP, pol.FAILSAFE_MAP,
               pol.HOST_INTERFACES_MAP, pol.COUNTERS_MAP)


def test_node_and_prefilter_share_the_policy_maps_in_one_pin_dir(pin_dir: str) -> None:
    with ExitStack() as stack:
        node = stack.enter_context(BpfObject.open("node", pin_dir=pin_dir)).load()
        xdp = stack.enter_context(BpfObject.open("prefilter", pin_dir=pin_dir)).load()
        for name in SHARED_MAPS:
            assert map_info(node.map_fd(name)).id == map_info(xdp.map_fd(name)).id, \
                f"map {name} is not shared"
        assert pol.FLOWS_MAP not in xdp.map_names(), "the prefilter keeps no flows"
        # Written through one object, seen by the other's program.
        view = PolicyView(node)
        view.host_interfaces.update(pol.HostInterfaceKey(HEP), pol.HostInterfaceValue(
            int(pol.HostInterfaceFlags.UNTRACKED)))
        untracked(view, Action.DENY, rank=1, peer=Identity.WORLD_V4)
        assert test_run(xdp.program("prefilter_xdp"),
                        tcp(V4.stranger, 1, V4.host, 80)).retval == XDP_DROP


# --- enums ------------------------------------------------------------------------------------


POLICY_HEADER = Path(__file__).resolve().parents[2] / "bpf" / "include" / "policy.h"


def header_enums() -> dict[str, dict[str, int]]:
    """Every enum of policy.h: {enum name: {constant: value}} (values: N or 1 << N)."""
    enums = {}
    for name, body in re.findall(r"enum (\w+) \{(.*?)\};", POLICY_HEADER.read_text(), re.S):
        values = {}
        for const, value in re.findall(r"^\s*(\w+) = ([^,/]+),", body, re.M):
            shift = re.fullmatch(r"1 << (\d+)", value.strip())
            values[const] = 1 << int(shift.group(1)) if shift else int(value.strip(), 0)
        enums[name] = values
    return enums


@pytest.mark.parametrize(("c_enum", "py_enum", "prefix"), [
    ("policy_identity", Identity, "ID_"),
    ("policy_direction", Direction, "POL_"),
    ("policy_tier", Tier, "TIER_"),
    ("policy_action", Action, "POL_"),
    ("failsafe_direction", pol.FailsafeDirection, "FAILSAFE_"),
    ("host_interface_flags", pol.HostInterfaceFlags, "HOST_IF_"),
    ("policy_counter_reason", pol.CounterReason, "POLICY_"),
    ("policy_hook", pol.PolicyHook, "POLICY_AT_"),
])
def test_python_enums_mirror_the_header(c_enum: str, py_enum: Any, prefix: str) -> None:
    c_values = {k.removeprefix(prefix): v for k, v in header_enums()[c_enum].items()
                if k != "POLICY_COUNTER_MAX"}
    assert c_values == {m.name: int(m) for m in py_enum}


def test_counter_slots_mirror_the_header() -> None:
    reasons = header_enums()["policy_counter_reason"]
    assert reasons["POLICY_COUNTER_MAX"] == pol.COUNTER_SLOTS
    assert max(pol.CounterReason) < pol.COUNTER_SLOTS
