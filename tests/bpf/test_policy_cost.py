"""What judging a new flow costs in from_endpoint, with 1 rule, 10,000 rules and 10,000
CIDRs: the number of lookups is fixed, so the cost should barely move. The flow goes from
a pod to an address outside the cluster, judged by the pod's egress policy.

Every repeat of a test run must be a new flow, so the object is loaded with flow
timeouts of 0 s: an entry is stale by the next run and the flow is judged again (the
deciding entry's `flows` counter proves each repeat was). Only decisions are asserted;
the times are printed (`-s`), never compared.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sluice.compile.policytypes import CATCH_ALL_RANK, FIRST_ALLOCATED_IDENTITY
from sluice.datapath import endpoints as ep
from sluice.datapath import policy as pol
from sluice.datapath.addr import LpmKey, SlAddr
from sluice.datapath.conntrack import CtKey
from sluice.datapath.policy import Action, Direction, Identity, Tier
from sluice.loader import BpfObject, Map, test_run

pytestmark = pytest.mark.root

TC_OK, TC_SHOT = 0, 2
HOST_MAC = "02:00:00:00:00:0a"
A, A_IF, ID_A = "198.18.16.2", 11, 300  # the pod whose new flows are judged
TCP_ = socket.IPPROTO_TCP
MANY = 10_000
REPEAT = 2_000
# The CIDRs of the third case: MANY /24s from 100.64.0.0 on, one identity each.
CIDR_BASE = ipaddress.IPv4Address("100.64.0.0")
CIDR_IDENTITY_BASE = 100_000


class CostNode:
    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.endpoints: Map[ep.EndpointKey, ep.EndpointInfo] = obj.map(
            ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
        self.ipcache: Map[pol.IpcacheKey, pol.IpcacheEntry] = obj.map(
            pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry)
        self.policy: Map[pol.PolicyKey, pol.PolicyVerdict] = obj.map(
            pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
        self.flows: Map[CtKey, pol.PolicyFlow] = obj.map(pol.FLOWS_MAP, CtKey, pol.PolicyFlow)
        self.endpoints.update(SlAddr.of(A), ep.EndpointInfo.pod(
            ifindex=A_IF, mac="02:00:00:00:01:01", host_mac=HOST_MAC, identity=ID_A))
        self.ipcache.update(LpmKey.of(f"{A}/32"),
                            pol.IpcacheEntry(identity=ID_A, cidr_identity=ID_A))

    def cidr(self, index: int) -> None:
        """The index-th /24 from CIDR_BASE, a CIDR identity of its own."""
        network = ipaddress.IPv4Network((int(CIDR_BASE) + index * 256, 24))
        identity = CIDR_IDENTITY_BASE + index
        self.ipcache.update(LpmKey.of(network), pol.IpcacheEntry(identity=identity,
                                                                 cidr_identity=identity))

    def entry(self, key: pol.PolicyKey, action: Action, rank: int = 0) -> None:
        self.policy.update(key, pol.PolicyVerdict.of(action, rank))

    def flows_of(self, key: pol.PolicyKey) -> int:
        verdict = self.policy.lookup(key)
        assert verdict is not None
        return int(verdict.flows)

    def cost_ns(self, data: bytes, expect: int) -> float:
        """Mean ns per packet over REPEAT runs of from_endpoint."""
        result = test_run(self.obj.program("from_endpoint"), data, repeat=REPEAT)
        assert result.retval == expect
        return float(result.duration_ns)


@contextmanager
def loaded_node(*, flows_expire_at_once: bool) -> Iterator[CostNode]:
    with BpfObject.open("node") as obj:
        if flows_expire_at_once:
            obj.set_rodata(ct_timeout_tcp_s=0, ct_timeout_other_s=0)
        obj.load()
        yield CostNode(obj)


def syn(dst: str, dport: int) -> bytes:
    return bytes(Ether(dst=HOST_MAC) / IP(src=A, dst=dst) / TCP(sport=40000, dport=dport))


def egress_key(peer: int = Identity.ANY, port: int | None = None) -> pol.PolicyKey:
    return pol.PolicyKey.of(A_IF, Direction.EGRESS, Tier.KUBERNETES, peer=peer,
                            proto=TCP_ if port is not None else 0, port=port or 0,
                            port_bits=16 if port is not None else 0)


def outside(index: int) -> str:
    """An address in the index-th CIDR."""
    return str(ipaddress.IPv4Address(int(CIDR_BASE) + index * 256 + 9))


TARGET = MANY // 2  # the CIDR the measured flow goes to


def isolate_a_allowing_target(node: CostNode) -> pol.PolicyKey:
    """A NetworkPolicy isolates A's egress and allows port 443 of one CIDR."""
    node.cidr(TARGET)
    allow = egress_key(CIDR_IDENTITY_BASE + TARGET, 443)
    node.entry(egress_key(), Action.DENY, CATCH_ALL_RANK)
    node.entry(allow, Action.ALLOW)
    return allow


def measure_new_flow(node: CostNode, allow: pol.PolicyKey) -> float:
    ns = node.cost_ns(syn(outside(TARGET), 443), TC_OK)  # allowed: to the host stack
    assert node.flows_of(allow) == REPEAT, "every repeat was judged as a new flow"
    assert node.cost_ns(syn(outside(TARGET), 444), TC_SHOT) > 0, "other ports are denied"
    return ns


def one_rule(node: CostNode) -> float:
    return measure_new_flow(node, isolate_a_allowing_target(node))


def many_rules(node: CostNode) -> float:
    """MANY more allows on A's egress: other peers' identities, other ports."""
    allow = isolate_a_allowing_target(node)
    for i in range(MANY):
        node.entry(egress_key(FIRST_ALLOCATED_IDENTITY + i, 1024 + i), Action.ALLOW)
    return measure_new_flow(node, allow)


def many_cidrs(node: CostNode) -> float:
    """MANY CIDRs in the ipcache, each allowed on A's egress."""
    allow = isolate_a_allowing_target(node)
    for i in range(MANY):
        if i != TARGET:
            node.cidr(i)
            node.entry(egress_key(CIDR_IDENTITY_BASE + i, 443), Action.ALLOW)
    assert node.cost_ns(syn(outside(MANY), 443), TC_SHOT) > 0, "in no CIDR: world, denied"
    return measure_new_flow(node, allow)


def test_new_flow_cost_does_not_grow_with_rules_or_cidrs(
        record_property: Callable[[str, object], None]) -> None:
    costs = {}
    for name, case in (("1 rule", one_rule), ("10000 rules", many_rules),
                       ("10000 cidrs", many_cidrs)):
        with loaded_node(flows_expire_at_once=True) as node:
            costs[name] = case(node)
        record_property(f"new flow ns, {name}", costs[name])
    print(f"policy cost: 1 rule {costs['1 rule']:.0f} ns, "
          f"10000 rules {costs['10000 rules']:.0f} ns, "
          f"10000 cidrs {costs['10000 cidrs']:.0f} ns")


def test_known_flow_cost(record_property: Callable[[str, object], None]) -> None:
    """For comparison: a flow already judged costs a flow lookup, not a decision."""
    with loaded_node(flows_expire_at_once=False) as node:
        allow = isolate_a_allowing_target(node)
        data = syn(outside(TARGET), 443)
        assert node.cost_ns(data, TC_OK) > 0
        ns = node.cost_ns(data, TC_OK)
        assert node.flows_of(allow) == 1, "judged once"
        flow = node.flows.lookup(CtKey.of(A, 40000, outside(TARGET), 443, "TCP"))
        assert flow is not None and flow.packets == 2 * REPEAT
    record_property("known flow ns", ns)
    print(f"policy cost: known flow {ns:.0f} ns")
