"""Flow events and datapath counters under BPF_PROG_TEST_RUN: what `observe()` sends for
drops (with the reason and the rule), for the edges of forwarded flows, and nothing when
the agent asks for nothing; sampling and the rate limit are counted, not hidden. The same
node and packets as tests/bpf/test_policy_datapath.py."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

from sluice.datapath import events as ev
from sluice.datapath.policy import Action, Direction, Tier
from sluice.loader import BpfObject, Map, RingBuffer
from tests.bpf.test_policy_datapath import (
    B_IF,
    FAMILIES,
    TC_REDIRECT,
    TC_SHOT,
    TCP_,
    UDP_,
    Family,
    PolicyNode,
    ip,
    tcp,
    three_pods,
    udp,
)

pytestmark = pytest.mark.root

ALL = ev.EventKinds.DROPS | ev.EventKinds.FLOWS | ev.EventKinds.SOCK
DENY_RULE = 77


@pytest.fixture
def node() -> Iterator[PolicyNode]:
    with BpfObject.open("node") as obj:
        obj.load()
        yield PolicyNode(obj)


def configure(node: PolicyNode, kinds: ev.EventKinds, *, sample: int = 1, rate: int = 0) -> None:
    config: Map[ctypes.c_uint32, ev.EventsConfig] = node.obj.map(
        ev.CONFIG_MAP, ctypes.c_uint32, ev.EventsConfig)
    config.update(ctypes.c_uint32(0), ev.EventsConfig(kinds=int(kinds), sample=sample,
                                                      rate_per_cpu=rate))


def run_all(node: PolicyNode, packets: list[bytes]) -> tuple[list[int], list[ev.FlowEvent]]:
    events: list[ev.FlowEvent] = []
    with RingBuffer(node.obj.map_fd(ev.EVENTS_MAP),
                    lambda record: events.append(ev.FlowEvent.parse(record))) as ring:
        verdicts = [node.run("from_endpoint", p).retval for p in packets]
        ring.consume()
    return verdicts, events


def stat(node: PolicyNode, which: ev.EventStat) -> int:
    stats: Map[ctypes.c_uint32, ctypes.c_uint64] = node.obj.map(
        ev.STATS_MAP, ctypes.c_uint32, ctypes.c_uint64)
    return sum(int(v.value) for v in stats.lookup_percpu(ctypes.c_uint32(which)) or [])


def counted(node: PolicyNode, hook: ev.Hook, reason: ev.DropReason) -> int:
    counters: Map[ctypes.c_uint32, ev.DatapathCounter] = node.obj.map(
        ev.COUNTERS_MAP, ctypes.c_uint32, ev.DatapathCounter)
    values = counters.lookup_percpu(ctypes.c_uint32(ev.counter_index(hook, reason))) or []
    return sum(int(v.packets) for v in values)


def deny_c_to_b(node: PolicyNode) -> None:
    node.rule(B_IF, Direction.INGRESS, Tier.GLOBAL, Action.DENY, rank=1, peer=302,
              rule_id=DENY_RULE)


@FAMILIES
def test_nothing_is_sent_unless_asked_but_every_packet_is_counted(
        node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    deny_c_to_b(node)
    verdicts, events = run_all(node, [tcp(fam.a, 40000, fam.b, 80), tcp(fam.c, 40001, fam.b, 80)])
    assert verdicts == [TC_REDIRECT, TC_SHOT]
    assert events == []
    assert counted(node, ev.Hook.FROM_ENDPOINT, ev.DropReason.NONE) == 1
    assert counted(node, ev.Hook.FROM_ENDPOINT, ev.DropReason.POLICY_DENIED) == 1


@FAMILIES
def test_a_drop_names_its_reason_and_rule(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    deny_c_to_b(node)
    configure(node, ev.EventKinds.DROPS)
    verdicts, events = run_all(node, [tcp(fam.a, 40000, fam.b, 80), tcp(fam.c, 40001, fam.b, 80)])
    assert verdicts == [TC_REDIRECT, TC_SHOT]
    assert len(events) == 1, "forwarded flows are not drops"
    event = events[0]
    assert (ev.Verdict(event.verdict), ev.DropReason(event.reason), ev.Hook(event.hook)) == \
        (ev.Verdict.DROPPED, ev.DropReason.POLICY_DENIED, ev.Hook.FROM_ENDPOINT)
    assert event.rule_id == DENY_RULE
    assert event.addresses() == (ip(fam.c), ip(fam.b), None)
    assert event.ports() == (40001, 80, 0)
    assert (event.proto, event.family, event.tcp_flags) == (TCP_, 4 if fam.name == "ipv4" else 6,
                                                          0x02)
    assert event.bytes > 0 and event.time_ns > 0
    assert stat(node, ev.EventStat.SENT) == 1


@FAMILIES
def test_forwarded_flows_are_sent_at_their_edges_only(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    configure(node, ev.EventKinds.FLOWS)
    packets = [tcp(fam.a, 40000, fam.b, 80), tcp(fam.a, 40000, fam.b, 80, "A"),
               tcp(fam.a, 40000, fam.b, 80, "PA", payload=b"x"), tcp(fam.a, 40000, fam.b, 80, "FA"),
               udp(fam.a, 40002, fam.b, 53), udp(fam.a, 40002, fam.b, 53)]
    verdicts, events = run_all(node, packets)
    assert verdicts == [TC_REDIRECT] * 6
    assert [(e.proto, e.tcp_flags, ev.Verdict(e.verdict)) for e in events] == [
        (TCP_, 0x02, ev.Verdict.FORWARDED), (TCP_, 0x11, ev.Verdict.FORWARDED),
        (UDP_, 0, ev.Verdict.FORWARDED)], "SYN, FIN and a UDP flow's first packet"
    assert all(e.rule_id == 0 and e.reason == 0 for e in events)


@FAMILIES
def test_flow_events_are_sampled_and_drops_are_not(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    deny_c_to_b(node)
    configure(node, ALL, sample=2)
    _, events = run_all(node, [tcp(fam.a, 41000 + i, fam.b, 80) for i in range(4)]
                        + [tcp(fam.c, 41100 + i, fam.b, 80) for i in range(3)])
    assert [ev.Verdict(e.verdict) for e in events] == \
        [ev.Verdict.FORWARDED] * 2 + [ev.Verdict.DROPPED] * 3
    assert stat(node, ev.EventStat.SAMPLED_OUT) == 2


@FAMILIES
def test_events_over_the_rate_limit_are_counted(node: PolicyNode, fam: Family) -> None:
    three_pods(node, fam)
    deny_c_to_b(node)
    configure(node, ALL, rate=3)
    _, events = run_all(node, [tcp(fam.c, 42000 + i, fam.b, 80) for i in range(5)])
    assert len(events) == 3
    assert stat(node, ev.EventStat.RATE_LIMITED) == 2
    assert stat(node, ev.EventStat.SENT) == 3
