"""The packet tracer under BPF_PROG_TEST_RUN: the maps node.bpf.o writes (proved by the
verifier), the packets it builds, and traces over a scratch node's pinned maps (local
delivery, a policy deny with its rule, a service translation toward a remote backend, a
flow conntrack already knows) that leave every pinned map exactly as it was."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet

from sluice import netlink, netns
from sluice.cli.main import main
from sluice.compile.policytypes import CATCH_ALL_RANK, KUBERNETES_ALLOW_RANK
from sluice.datapath import conntrack as ct
from sluice.datapath import endpoints as ep
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.datapath.addr import LpmKey, SlAddr
from sluice.datapath.policy import Action, Direction, Tier
from sluice.loader import BpfObject, Map, VerifierError
from sluice.loader.maps import MapType, map_info
from sluice.observe import tracepacket as tp
from sluice.observe.trace import TraceRequest, trace
from sluice.observe.traceload import PRIVATE_MAPS, WRITTEN_MAPS, open_raw_pin
from sluice.observe.traceplace import Cluster, NodeRef, Party
from tests.conftest import unique

pytestmark = pytest.mark.root

BPF_F_RDONLY_PROG = 1 << 7
NODE = "n1"
POD_A, POD_B, POD_C = "198.18.16.2", "198.18.16.3", "198.18.16.4"  # B's policy denies C
POD_A6, POD_B6, POD_C6 = "fd00:10:1::2", "fd00:10:1::3", "fd00:10:1::4"
REMOTE_POD = "198.18.17.5"
REMOTE_NODE = "198.18.0.12"
FRONTEND, FRONTEND_PORT, BACKEND_PORT = "198.19.0.10", 80, 8080
ID_A, ID_B, ID_C = 300, 301, 302
ALLOW_A_RULE, SERVICE_ID, BACKEND_ID, TUNNEL_IFINDEX = 4242, 7, 11, 99
HOST_MAC = "02:00:00:00:00:0a"


# --- the written maps, from the verifier --------------------------------------------------

def _load_with_read_only(names: list[str]) -> None:
    with BpfObject.open("node") as obj:
        for name in names:
            obj.add_map_flags(name, BPF_F_RDONLY_PROG)
        obj.load()


@functools.cache
def _node_maps() -> dict[str, int]:
    """The maps of node.bpf.o and their types."""
    with BpfObject.open("node") as obj:
        obj.load()
        return {name: int(map_info(obj.map_fd(name)).type)
                for name in obj.map_names() if "." not in name}


def test_every_map_node_writes_is_private_to_a_trace() -> None:
    """The verifier refuses a program that writes a BPF_F_RDONLY_PROG map: node.bpf.o loads
    with every map outside WRITTEN_MAPS made so, and so writes none of them."""
    maps = _node_maps()
    assert set(WRITTEN_MAPS) <= set(maps), set(WRITTEN_MAPS) - set(maps)
    assert set(PRIVATE_MAPS) >= set(WRITTEN_MAPS)
    unlisted = sorted(set(maps) - set(WRITTEN_MAPS))
    try:
        _load_with_read_only(unlisted)
    except VerifierError:
        written = [name for name in unlisted if not _loads_with_read_only(name)]
        pytest.fail(f"node.bpf.o writes {written}: add them to WRITTEN_MAPS in "
                    "sluice/observe/traceload.py, or a trace would change the node's maps")


def _loads_with_read_only(name: str) -> bool:
    try:
        _load_with_read_only([name])
    except VerifierError:
        return False
    return True


@pytest.mark.parametrize("name", WRITTEN_MAPS)
def test_each_listed_map_is_still_written(name: str) -> None:
    """A map on the list the C no longer writes would be copied for nothing: say so."""
    if _node_maps()[name] == MapType.RINGBUF:
        return  # written by every reserve/output: and RDONLY_PROG is refused for them
    with pytest.raises(VerifierError, match="write into map forbidden"):
        _load_with_read_only([name])


# --- packets ------------------------------------------------------------------------------

def _checksums_hold(layer: Packet) -> None:
    """Every checksum in LAYER as scapy computes it from scratch."""
    rebuilt = layer.__class__(bytes(layer))
    for field_name in ("chksum", "cksum"):
        current = rebuilt
        while current:
            if field_name in current.fields:
                expected = current.copy()
                del expected.fields[field_name]
                fresh = current.__class__(bytes(expected))
                assert current.fields[field_name] == fresh.fields[field_name], current.name
            current = current.payload if current.payload else None


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP", "ICMP"])
@pytest.mark.parametrize(("src", "dst"), [(POD_A, FRONTEND), ("fd00:10:1::2", "fd00:96::a")],
                         ids=["ipv4", "ipv6"])
def test_packets_are_valid_and_parse_back(protocol: str, src: str, dst: str) -> None:
    spec = tp.PacketSpec(ipaddress.ip_address(src), ipaddress.ip_address(dst), protocol,
                         40001, 8080)
    data = tp.build(spec)
    frame = Ether(data)
    layers = {"TCP": TCP, "UDP": UDP, "SCTP": SCTP,
              "ICMP": ICMP if spec.family == 4 else ICMPv6EchoRequest}
    assert frame.haslayer(IP if spec.family == 4 else IPv6)
    assert frame.haslayer(layers[protocol]), frame.show(dump=True)
    _checksums_hold(frame)
    if protocol == "TCP":
        assert frame[TCP].flags == "S"
    parsed = tp.parse(data)
    assert parsed is not None
    assert (parsed.src, parsed.dst, parsed.protocol) == (spec.src, spec.dst, protocol)
    assert parsed.sport == 40001
    assert parsed.dport == (40001 if protocol == "ICMP" else 8080)


def test_bad_packets_are_refused() -> None:
    with pytest.raises(ValueError, match="different families"):
        tp.PacketSpec(ipaddress.ip_address(POD_A), ipaddress.ip_address("fd00::1"), "TCP", 1, 2)
    with pytest.raises(ValueError, match="unknown protocol 'GRE'"):
        tp.PacketSpec(ipaddress.ip_address(POD_A), ipaddress.ip_address(POD_B), "GRE", 1, 2)
    assert tp.parse(b"\x00" * 10) is None


# --- traces over a scratch node -----------------------------------------------------------

@dataclass(frozen=True)
class ScratchNode:
    pin_dir: str
    netns: str
    ifindexes: dict[str, int]  # pod address -> its host veth

    def cluster(self) -> Cluster:
        cluster = Cluster(nodes={NODE: NodeRef(NODE, self.pin_dir, self.netns)})
        cluster.rule_origins[ALLOW_A_RULE] = "NetworkPolicy t/b-from-a ingress[0]"
        cluster.pod_by_ip.update({ipaddress.ip_address(POD_A): "t/a",
                                  ipaddress.ip_address(POD_B): "t/b",
                                  ipaddress.ip_address(POD_C): "t/c"})
        return cluster


def _pod_mac(index: int) -> str:
    return f"02:00:00:00:01:{index:02x}"


@pytest.fixture
def scratch_node(pin_dir: str) -> Iterator[ScratchNode]:
    """node.bpf.o's maps pinned in a fresh directory as an agent would leave them: pods A,
    B, C on veths of a fresh namespace, B isolated (A allowed), a remote pod CIDR through
    the tunnel, a service whose one backend is that remote pod."""
    ns = unique("sl-ttrace")
    netns.create(ns)
    try:
        ifindexes = {}
        for index, pod in enumerate((POD_A, POD_B, POD_C), start=1):
            netlink.create_veth(ns, f"hv{index}", ns, f"pv{index}")
            netlink.configure(ns, f"hv{index}", [])
            ifindexes[pod] = netlink.ifindex(ns, f"hv{index}")
        with BpfObject.open("node", pin_dir=pin_dir) as obj:
            obj.load()
            _populate(obj, ifindexes)
        yield ScratchNode(pin_dir, ns, ifindexes)
    finally:
        netns.remove(ns)


def _populate(obj: BpfObject, ifindexes: dict[str, int]) -> None:
    endpoints = obj.map(ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
    ipcache = obj.map(pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry)
    pods = ((POD_A, POD_A6, ID_A), (POD_B, POD_B6, ID_B), (POD_C, POD_C6, ID_C))
    for index, (pod, pod6, identity) in enumerate(pods, start=1):
        for address, prefix in ((pod, 32), (pod6, 128)):
            endpoints.update(SlAddr.of(address), ep.EndpointInfo.pod(
                ifindex=ifindexes[pod], mac=_pod_mac(index), host_mac=HOST_MAC,
                identity=identity))
            ipcache.update(LpmKey.of(f"{address}/{prefix}"), pol.IpcacheEntry(identity,
                                                                               identity))
    routes = obj.map(rt.MAP_NAME, rt.RouteKey, rt.RouteEntry)
    routes.update(rt.RouteKey.of("198.18.16.0/24"), rt.RouteEntry.of(rt.RouteKind.LOCAL_PODS))
    routes.update(rt.RouteKey.of("198.18.17.0/24"), rt.RouteEntry.of(
        rt.RouteKind.REMOTE_TUNNEL, ifindex=TUNNEL_IFINDEX, next_hop=REMOTE_NODE))
    policy = obj.map(pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
    b = ifindexes[POD_B]
    policy.update(pol.PolicyKey.of(b, Direction.INGRESS, Tier.KUBERNETES),
                  pol.PolicyVerdict.of(Action.DENY, CATCH_ALL_RANK, rule_id=2))
    policy.update(pol.PolicyKey.of(b, Direction.INGRESS, Tier.KUBERNETES, peer=ID_A),
                  pol.PolicyVerdict.of(Action.ALLOW, KUBERNETES_ALLOW_RANK, ALLOW_A_RULE))
    services = obj.map(lb.SERVICES_MAP, lb.LbKey, lb.LbValue)
    services.update(lb.LbKey.of(FRONTEND, FRONTEND_PORT, "TCP"),
                    lb.LbValue.service(SERVICE_ID, count=1))
    services.update(lb.LbKey.of(FRONTEND, FRONTEND_PORT, "TCP", slot=1),
                    lb.LbValue.slot(BACKEND_ID))
    obj.map(lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend).update(
        lb.BackendId(BACKEND_ID), lb.LbBackend.of(REMOTE_POD, BACKEND_PORT, "TCP"))


def pinned_state(pin_dir: str) -> dict[str, str]:
    """A digest of every pinned map's entries (per-CPU values included); ring buffers by
    their producer and consumer positions are not readable, so they are left out."""
    digests = {}
    for name in sorted(os.listdir(pin_dir)):
        path = os.path.join(pin_dir, name)
        if os.path.isdir(path):
            continue
        opened = open_raw_pin(path)
        try:
            if opened.meta.map_type == MapType.RINGBUF:
                continue
            if opened.percpu:
                entries = {bytes(k).hex(): [bytes(v).hex() for v in opened.lookup_percpu(k) or []]
                           for k in list(opened.keys())}
            else:
                entries = {k.hex(): v.hex() for k, v in opened.lookup_batch_raw().items()}
        finally:
            opened.close()
        digests[name] = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return digests


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    changed = sorted(name for name in before.keys() | after.keys()
                     if before.get(name) != after.get(name))
    assert not changed, f"the trace changed the pinned maps {changed}"


def _party(address: str, name: str | None = None) -> Party:
    return Party(address, "pod" if name else "ip", ipaddress.ip_address(address), name, NODE)


def _trace(node: ScratchNode, src: str, dst: str, port: int, *, sport: int | None = None,
           protocol: str = "TCP") -> dict[str, Any]:
    request = TraceRequest.of(_party(src, "t/src"), _party(dst), protocol=protocol, dport=port,
                              sport=sport, start=NODE)
    result = trace(request, node.cluster())
    doc = result.as_dict()
    assert result.render().startswith(f"trace {protocol} ")
    return doc


def _step(doc: dict[str, Any], hop: int, name: str) -> dict[str, Any]:
    return next(s for s in doc["hops"][hop]["steps"] if s["step"] == name)


def test_local_delivery_allowed_by_the_rule_and_nothing_pinned_changes(
        scratch_node: ScratchNode) -> None:
    before = pinned_state(scratch_node.pin_dir)
    doc = _trace(scratch_node, POD_A, POD_B, 8080)
    assert doc["verdict"] == "delivered", doc["summary"]
    hop = doc["hops"][0]
    assert hop["program"] == "from_endpoint" and hop["ifindex"] == scratch_node.ifindexes[POD_A]
    assert hop["result"]["name"] == "TC_ACT_REDIRECT"
    assert hop["onward"]["kind"] == "pod"
    assert hop["onward"]["ifindex"] == scratch_node.ifindexes[POD_B]
    policy = _step(doc, 0, "policy")
    assert policy["verdict"] == "allowed"
    assert [d["ruleId"] for d in policy["decisions"]] == [ALLOW_A_RULE]
    assert "NetworkPolicy t/b-from-a ingress[0]" in str(policy["text"])
    assert "t/b" in str(doc["summary"])
    assert_unchanged(before, pinned_state(scratch_node.pin_dir))


def test_denied_flow_is_dropped_with_the_rule_that_denied_it(scratch_node: ScratchNode) -> None:
    before = pinned_state(scratch_node.pin_dir)
    doc = _trace(scratch_node, POD_C, POD_B, 8080, protocol="UDP")
    assert doc["verdict"] == "dropped"
    assert doc["reason"] == "policy_denied"
    policy = _step(doc, 0, "policy")
    assert policy["verdict"] == "denied" and policy["ruleId"] == 2
    assert "default deny" in str(policy["origin"])
    assert _step(doc, 0, "verdict")["name"] == "TC_ACT_SHOT"
    assert_unchanged(before, pinned_state(scratch_node.pin_dir))


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP", "ICMP"])
def test_ipv6_flows_are_judged_like_ipv4(scratch_node: ScratchNode, protocol: str) -> None:
    before = pinned_state(scratch_node.pin_dir)
    allowed = _trace(scratch_node, POD_A6, POD_B6, 8080, protocol=protocol)
    assert allowed["verdict"] == "delivered", allowed["summary"]
    assert [d["ruleId"] for d in _step(allowed, 0, "policy")["decisions"]] == [ALLOW_A_RULE]
    denied = _trace(scratch_node, POD_C6, POD_B6, 8080, protocol=protocol)
    assert (denied["verdict"], denied["reason"]) == ("dropped", "policy_denied")
    assert_unchanged(before, pinned_state(scratch_node.pin_dir))


def test_service_translation_shows_the_backend_and_the_tunnel(scratch_node: ScratchNode) -> None:
    before = pinned_state(scratch_node.pin_dir)
    doc = _trace(scratch_node, POD_A, FRONTEND, FRONTEND_PORT)
    service = _step(doc, 0, "service")
    assert service["backend"] == f"{REMOTE_POD}:{BACKEND_PORT}"
    assert service["backendId"] == BACKEND_ID
    conntrack = _step(doc, 0, "conntrack")
    assert {c["kind"] for c in conntrack["created"]} == {"dnat", "reply-snat"}
    route = _step(doc, 0, "route")
    assert route["route"]["cidr"] == "198.18.17.0/24" and route["route"]["hits"] == 1
    onward = doc["hops"][0]["onward"]
    assert onward["kind"] == "tunnel" and onward["nextHop"] == REMOTE_NODE
    assert doc["verdict"] == "forwarded"  # the next node is not traceable from here
    assert_unchanged(before, pinned_state(scratch_node.pin_dir))


def test_a_known_flow_keeps_its_backend_from_the_pinned_conntrack(
        scratch_node: ScratchNode) -> None:
    """The trace starts from a copy of the node's entries for the flow: a flow conntrack
    knows is followed as known (its backend kept, not chosen again), and the node's entry
    is not refreshed or counted."""
    sport, pinned_backend = 41000, "198.18.17.9"
    conntrack = Map.from_pin(os.path.join(scratch_node.pin_dir, ct.MAP_NAME), ct.CtKey,
                             ct.CtEntry)
    try:
        conntrack.update(ct.CtKey.of(POD_A, sport, FRONTEND, FRONTEND_PORT, "TCP"), ct.CtEntry(
            last_seen_ns=time.monotonic_ns(), nat_addr=SlAddr.of(pinned_backend),
            nat_port=socket.htons(BACKEND_PORT), kind=ct.CtKind.DNAT,
            flags=ct.CtFlags.REMOTE, backend_id=BACKEND_ID, packets=5))
    finally:
        conntrack.close()
    _alive_backend(scratch_node.pin_dir, pinned_backend)
    before = pinned_state(scratch_node.pin_dir)
    doc = _trace(scratch_node, POD_A, FRONTEND, FRONTEND_PORT, sport=sport)
    assert _step(doc, 0, "conntrack")["known"] == "dnat"
    service = _step(doc, 0, "service")
    assert service["backend"] == f"{pinned_backend}:{BACKEND_PORT}"
    assert "kept from conntrack" in str(service["selection"])
    assert_unchanged(before, pinned_state(scratch_node.pin_dir))


def _alive_backend(pin_dir: str, address: str) -> None:
    """Point the backend id at ADDRESS, so the known entry's backend is alive."""
    backends = Map.from_pin(os.path.join(pin_dir, lb.BACKENDS_MAP), lb.BackendId, lb.LbBackend)
    try:
        backends.update(lb.BackendId(BACKEND_ID), lb.LbBackend.of(address, BACKEND_PORT, "TCP"))
    finally:
        backends.close()


def test_cli_refuses_what_it_cannot_trace(pin_dir: str, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert main(["trace", "--from", POD_A, "--to", POD_B, "--port", "80"]) == 2
    assert "say which node" in capsys.readouterr().err
    assert main(["trace", "--pin-dir", pin_dir, "--from", "t/a", "--to", POD_B,
                 "--port", "80"]) == 2
    assert "resolved through the datastore" in capsys.readouterr().err
    assert main(["trace", "--pin-dir", pin_dir, "--from", POD_A, "--to", "svc:t/x"]) == 2
    assert main(["trace", "--pin-dir", "/sys/fs/bpf/sluice-nope-trace", "--from", POD_A,
                 "--to", POD_B, "--port", "80"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["trace", "--pin-dir", pin_dir, "--from", POD_A, "--to", POD_B,
                 "--port", "80"]) == 1  # nothing pinned: the agent never ran there
    assert "has no pinned" in capsys.readouterr().err


def test_private_maps_must_name_maps_of_the_object(pin_dir: str) -> None:
    with pytest.raises(KeyError, match=r"has no maps \['nope'\] to keep private"):
        BpfObject.open("node", pin_dir=pin_dir, private_maps=("conntrack", "nope"))
    assert os.listdir(pin_dir) == []
