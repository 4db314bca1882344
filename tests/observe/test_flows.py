"""Flow events named and shaped: Hubble's JSON fields, the table line, and the filters of
`sluice flows` and /flows (bad ones refused with the filter and value named)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from sluice.datapath import events as ev
from sluice.datapath.addr import SlAddr
from sluice.observe.flows import FilterError, FlowFilter, Names, decode, flow_line

A, B, BACKEND, FRONTEND = "198.18.16.2", "198.18.17.3", "198.18.17.9", "198.19.0.10"
NAMES = Names(
    node="node1",
    pods={ipaddress.ip_address(A): ("x", "a", ("k8s:app=a",), 300),
          ipaddress.ip_address(B): ("y", "b", ("k8s:app=b",), 301),
          ipaddress.ip_address(BACKEND): ("y", "web-1", ("k8s:app=web",), 302)},
    host_ips=frozenset({ipaddress.ip_address("198.18.0.11")}),
    node_ips={ipaddress.ip_address("198.18.0.12"): "node2"},
    services={(ipaddress.ip_address(FRONTEND), 80, 6): "y/web"},
    rules={77: "GlobalNetworkPolicy deny-a ingress[0]"},
    interfaces={11: "slc-a"})


def event(src: str, dst: str, dport: int, *, verdict: ev.Verdict = ev.Verdict.FORWARDED,
          reason: ev.DropReason = ev.DropReason.NONE, nat: str | None = None,
          rule_id: int = 0, proto: int = 6, flags: int = 0x02) -> ev.FlowEvent:
    e = ev.FlowEvent(time_ns=5_000_000_000, src=SlAddr.of(src), dst=SlAddr.of(dst),
                     sport=socket.htons(40000), dport=socket.htons(dport), proto=proto,
                     family=4, verdict=verdict, reason=reason, hook=ev.Hook.FROM_ENDPOINT,
                     tcp_flags=flags, ifindex=11, rule_id=rule_id, bytes=74)
    if nat:
        e.nat_addr = SlAddr.of(nat)
        e.nat_port = socket.htons(8080)
        e.backend_id = 9
    return e


def test_a_drop_is_shaped_like_hubbles_flow_json() -> None:
    flow = decode(event(A, B, 8080, verdict=ev.Verdict.DROPPED,
                        reason=ev.DropReason.POLICY_DENIED, rule_id=77), NAMES, 1_000)
    doc = flow.to_json()["flow"]
    assert doc["time"] == "1970-01-01T00:00:05.000001000Z"
    assert (doc["verdict"], doc["drop_reason"], doc["drop_reason_desc"]) == \
        ("DROPPED", 1, "POLICY_DENIED")
    assert doc["IP"] == {"source": A, "destination": B, "ipVersion": "IPv4"}
    assert doc["l4"] == {"TCP": {"source_port": 40000, "destination_port": 8080,
                                 "flags": {"SYN": True}}}
    assert doc["source"] == {"identity": 300, "labels": ["k8s:app=a"], "namespace": "x",
                             "pod_name": "a"}
    assert doc["traffic_direction"] == "EGRESS" and doc["node_name"] == "node1"
    assert doc["interface"] == {"index": 11, "name": "slc-a"}
    assert doc["sluice"]["rule"] == "GlobalNetworkPolicy deny-a ingress[0]"
    assert "policy-denied by GlobalNetworkPolicy deny-a" in flow_line(flow.to_json())


def test_a_service_flow_names_the_service_and_the_backend() -> None:
    flow = decode(event(A, FRONTEND, 80, nat=BACKEND), NAMES, 0)
    doc = flow.to_json()["flow"]
    assert doc["destination_service"] == {"namespace": "y", "name": "web"}
    assert doc["IP"]["destination"] == BACKEND, "as in Hubble: the backend"
    assert doc["destination"]["pod_name"] == "web-1"
    assert doc["l4"]["TCP"]["destination_port"] == 8080
    assert doc["sluice"]["frontend"] == {"ip": FRONTEND, "port": 80}
    line = flow_line(flow.to_json())
    assert "-> y/web-1 198.18.17.9:8080 (service y/web 198.19.0.10:80)" in line


def test_reserved_peers() -> None:
    assert NAMES.peer(ipaddress.ip_address("198.18.0.11"), 1).labels == ("reserved:host",)
    assert NAMES.peer(ipaddress.ip_address("198.18.0.12"), 1).labels == ("reserved:remote-node",)
    assert NAMES.peer(ipaddress.ip_address("203.0.113.1"), 1).name == "world"


def test_filters_match_either_side() -> None:
    flow = decode(event(A, FRONTEND, 80, nat=BACKEND), NAMES, 0)
    assert FlowFilter.from_query({"pod": ["y/web-1"]}).matches(flow), "the backend counts"
    assert FlowFilter.from_query({"to-pod": ["y/web-1"]}).matches(flow)
    assert not FlowFilter.from_query({"from-pod": ["y/web-1"]}).matches(flow)
    assert FlowFilter.from_query({"ip": ["198.19.0.0/16"], "port": ["80"]}).matches(flow)
    assert FlowFilter.from_query({"service": ["y/web"], "protocol": ["tcp"]}).matches(flow)
    assert not FlowFilter.from_query({"verdict": ["dropped"]}).matches(flow)
    assert not FlowFilter.from_query({"namespace": ["z"]}).matches(flow)
    assert FlowFilter.from_query({"namespace": ["z,x"]}).matches(flow), "any of a list"


@pytest.mark.parametrize(("query", "message"), [
    ({"verdict": ["maybe"]}, "verdict 'maybe': expected one of forwarded"),
    ({"reason": ["cosmic-rays"]}, "reason 'cosmic-rays'"),
    ({"ip": ["10.1.2.300/8"]}, "ip '10.1.2.300/8'"),
    ({"port": ["0"]}, "port '0'"),
    ({"pod": ["justaname"]}, "pod 'justaname': expected NAMESPACE/POD"),
    ({"protocol": ["quic"]}, "protocol 'quic'"),
    ({"colour": ["red"]}, "unknown filter 'colour'"),
])
def test_bad_filters_name_the_filter_and_the_value(query: dict[str, list[str]],
                                                   message: str) -> None:
    with pytest.raises(FilterError, match=message):
        FlowFilter.from_query(query)
