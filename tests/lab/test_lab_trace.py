"""`sluice trace` in a live bpf lab: for an allowed flow on one node, an allowed and a
denied flow across nodes, a denied flow on one node and a Service, the tracer's verdict
is what real traffic does (probed right after), the trace names the rule and the backend,
and no pinned map of either node changes while tracing.

Two nodes: pods a and c on node1, b and d on node2 (namespace t); Service web over b;
NetworkPolicy a-from-b isolates a and admits b only.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.datapath import events as ev
from sluice.lab import names
from sluice.loader import Map
from tests.bpf.test_trace import assert_unchanged, pinned_state
from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest

pytestmark = pytest.mark.root

PORT = 8080
SETTLE = 8.0
QUIET = 1.0
A_FROM_B = "NetworkPolicy t/a-from-b ingress[0]"


def _objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}},
        pod("a", namespace="t", node="node1"),
        pod("c", namespace="t", node="node1"),
        pod("b", namespace="t", node="node2"),
        pod("d", namespace="t", node="node2"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "t"},
         "spec": {"selector": {"app": "b"}, "ports": [{"port": 80, "targetPort": PORT}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "a-from-b", "namespace": "t"},
         "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}},
    ]


# (from, to, port): whether real traffic gets through.
CASES: dict[tuple[str, str, int], bool] = {
    ("t/a", "t/c", PORT): True,  # same node, no policy on c
    ("t/b", "t/a", PORT): True,  # across nodes, admitted by a-from-b
    ("t/c", "t/a", PORT): False,  # same node, a is isolated
    ("t/d", "t/a", PORT): False,  # across nodes, a is isolated
    ("t/a", "svc/t/web", 80): True,  # the Service, its backend b on node2
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifest = write_manifest(tmp_path_factory.mktemp("trace") / "trace.yaml", _objects())
    with running_lab("trace") as running:
        ok(running.up("--dataplane", "bpf", "--ip-family", "ipv4", files=[manifest]))
        _settle(running)
        yield running


def _reaches(lab: Lab, source: str, destination: str, port: int) -> tuple[bool, str | None]:
    _, outcome = lab.probe_fast(source, destination, port, timeout=1.0)
    return outcome.result == "connected", outcome.peer


def _settle(lab: Lab) -> None:
    """Wait until the agents enforce the policy: every case answers as expected."""
    deadline = time.monotonic() + SETTLE
    while True:
        got = {case: _reaches(lab, *case)[0] for case in CASES}
        if got == CASES or time.monotonic() > deadline:
            break
    assert got == CASES, f"the lab does not behave as expected yet: {got}"


def _trace(lab: Lab, source: str, destination: str, port: int) -> dict[str, Any]:
    target = destination.replace("svc/", "svc:")
    doc: dict[str, Any] = json.loads(ok(sluice(
        "trace", "--lab", lab.name, "--from", source, "--to", target, "--port", str(port),
        "-o", "json")).stdout)
    return doc


def _steps(hop: dict[str, Any], name: str) -> dict[str, Any]:
    return next(step for step in hop["steps"] if step["step"] == name)


def _state(pin: str) -> dict[str, str]:
    """The pinned maps of a node, except what every packet of the lab's own background
    traffic (IPv6 router solicitations of fresh links, which the datapath forwards) moves:
    the per-packet scratch, and the forwarded counters. Drop counters stay compared (no
    background packet is dropped; two of the traced ones are), and the BPF-level tests
    compare every map of a node without traffic."""
    state = pinned_state(pin)
    del state["node_scratch"], state["datapath_counters"]
    return state | {"drops": str(_drops(pin))}


def _drops(pin: str) -> dict[tuple[int, int], int]:
    counters = Map.from_pin(os.path.join(pin, ev.COUNTERS_MAP), ctypes.c_uint32,
                            ev.DatapathCounter)
    try:
        drops = {}
        for hook in ev.Hook:
            for reason in range(1, ev.DROP_REASON_SLOTS):
                per_cpu = counters.lookup_percpu(ctypes.c_uint32(ev.counter_index(hook, reason)))
                packets = sum(c.packets for c in per_cpu or [])
                if packets:
                    drops[(int(hook), reason)] = packets
        return drops
    finally:
        counters.close()


def _quiet(pins: list[str]) -> list[dict[str, str]]:
    """The state of PINS once the probes' last packets are through: unchanged for QUIET
    seconds."""
    deadline = time.monotonic() + SETTLE
    state = [_state(pin) for pin in pins]
    while True:
        time.sleep(QUIET)
        again = [_state(pin) for pin in pins]
        if again == state:
            return state
        assert time.monotonic() < deadline, "the lab's maps keep changing without traffic"
        state = again


@pytest.fixture(scope="module")
def traces(lab: Lab) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every case traced once, with both nodes' pinned maps compared around the traces."""
    pins = [str(names.pin_dir(lab.name, node)) for node in ("node1", "node2")]
    before = _quiet(pins)
    docs = {case: _trace(lab, *case) for case in CASES}
    for pin, then in zip(pins, before, strict=True):
        assert_unchanged(then, _state(pin))
    return docs


@pytest.mark.parametrize("case", list(CASES), ids=[f"{s}->{d}" for s, d, _ in CASES])
def test_the_traced_verdict_is_what_traffic_does(lab: Lab, traces: dict[tuple[str, str, int],
                                                                         dict[str, Any]],
                                                 case: tuple[str, str, int]) -> None:
    doc = traces[case]
    connected, _ = _reaches(lab, *case)
    assert connected == CASES[case]
    expected = "delivered" if connected else "dropped"
    assert doc["verdict"] == expected, doc["summary"]
    if not connected:
        assert doc["reason"] == "policy_denied"


def test_a_denied_flow_names_the_rule_on_the_node_that_drops_it(
        traces: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    local = traces[("t/c", "t/a", PORT)]
    assert [hop["node"] for hop in local["hops"]] == ["node1"]
    across = traces[("t/d", "t/a", PORT)]
    assert [(h["node"], h["program"]) for h in across["hops"]] == [
        ("node2", "from_endpoint"), ("node1", "from_network")]
    assert across["hops"][0]["onward"]["kind"] == "tunnel"
    assert across["hops"][0]["onward"]["nextHop"] == "198.18.0.11"
    for doc in (local, across):
        policy = _steps(doc["hops"][-1], "policy")
        assert policy["verdict"] == "denied"
        assert "default deny" in policy["origin"]
        assert doc["hops"][-1]["result"]["name"] == "TC_ACT_SHOT"


def test_an_allowed_flow_across_nodes_names_the_rule_that_admitted_it(
        traces: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    doc = traces[("t/b", "t/a", PORT)]
    first, second = doc["hops"]
    assert _steps(first, "route")["route"]["cidr"] == "198.18.17.0/24"
    assert second["device"] == "sl-vxlan"
    decisions = _steps(second, "policy")["decisions"]
    assert [d["origin"] for d in decisions] == [A_FROM_B]
    assert second["onward"]["kind"] == "pod"
    assert "pod t/a" in doc["summary"]


def test_a_service_flow_shows_the_backend_real_traffic_reaches(
        lab: Lab, traces: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    doc = traces[("t/a", "svc/t/web", 80)]
    service = _steps(doc["hops"][0], "service")
    assert service["service"] == "t/web"
    assert service["backendPod"] == "t/b"
    b_ip = next(p["ips"][0] for p in lab.get("pods") if p["name"] == "b")
    assert service["backend"] == f"{b_ip}:{PORT}"
    assert [h["node"] for h in doc["hops"]] == ["node1", "node2"]
    assert "pod t/b" in doc["summary"]
    connected, peer = _reaches(lab, "t/a", "svc/t/web", 80)
    assert connected and peer == "b"


def test_the_trace_runs_the_build_and_rodata_the_node_runs(
        traces: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    for doc in traces.values():
        for hop in doc["hops"]:
            parse = _steps(hop, "parse")
            assert parse["build"]["liveTag"], "the live program was not found by its link"
            assert "rodata as the node's programs were loaded" in parse["text"][1]


def test_text_output_explains_each_step(lab: Lab) -> None:
    text = ok(sluice("trace", "--lab", lab.name, "--from", "t/c", "--to", "t/a",
                     "--port", str(PORT), "--protocol", "udp")).stdout
    for label in ("parse", "conntrack", "service", "policy", "route", "verdict"):
        assert f"  {label}" in text, text
    assert "verdict: dropped" in text and "default deny" in text
