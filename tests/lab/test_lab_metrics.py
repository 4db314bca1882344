"""The agent's /metrics move as traffic moves, in a bpf lab: pod-to-pod traffic counts
as forwarded, a flow a NetworkPolicy denies as dropped with reason policy_denied, service
connects as selections of the backend that got them, the policy change as a sync; the
maps' fill is there for conntrack and the rest. The exposition is parsed strictly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.lab import agents
from tests.agent.test_metrics import Exposition, parse_exposition
from tests.lab.labfixture import Lab, ok, pod, running_lab, write_manifest

pytestmark = pytest.mark.root

NAMESPACE = "m"
SETTLE = 6.0  # seconds a policy change may take to reach the datapath
PROBE_TIMEOUT = 0.8

DENY_LOCKED = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "locked", "namespace": NAMESPACE},
               "spec": {"podSelector": {"matchLabels": {"app": "locked"}},
                        "policyTypes": ["Ingress"]}}


def _topology() -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            pod("client", namespace=NAMESPACE, node="node1"),
            pod("server", namespace=NAMESPACE, node="node1"),
            pod("locked", namespace=NAMESPACE, node="node1"),
            pod("web", namespace=NAMESPACE, node="node2", labels={"app": "web"}),
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "web", "namespace": NAMESPACE},
             "spec": {"type": "NodePort", "selector": {"app": "web"},
                      "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30090}]}}]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    workdir = tmp_path_factory.mktemp("metrics")
    with running_lab("metr") as running:
        running.up("--dataplane", "bpf", "--ip-family", "ipv4",
                   files=[write_manifest(workdir / "topology.yaml", _topology())])
        yield running, workdir


def scrape(lab: Lab, node: str) -> Exposition:
    answer = agents.http_get(lab.state().plan.node(node), "/metrics", timeout=10.0)
    assert answer is not None, f"the agent of {node} does not answer"
    status, body = answer
    assert status == 200, body
    return parse_exposition(body.decode())


def connects(lab: Lab, destination: str, port: int, source: str = f"{NAMESPACE}/client"
             ) -> bool:
    _, outcome = lab.probe_fast(source, destination, port, family=4, timeout=PROBE_TIMEOUT)
    return outcome.result == "connected"


def test_metrics_move_as_traffic_moves(lab: tuple[Lab, Path]) -> None:
    running, workdir = lab
    locked = f"{NAMESPACE}/locked"
    assert connects(running, locked, 8080), "no policy yet: the locked pod answers"
    before = scrape(running, "node1")

    ok(running.apply(write_manifest(workdir / "deny.yaml", [DENY_LOCKED])))
    deadline = time.monotonic() + SETTLE
    while connects(running, locked, 8080):
        assert time.monotonic() < deadline, "the NetworkPolicy did not reach the datapath"
    for _ in range(5):
        assert connects(running, f"{NAMESPACE}/server", 8080)
        assert connects(running, f"svc/{NAMESPACE}/web", 80)
    assert connects(running, f"nodeport/node1/{NAMESPACE}/web", 80, source="external"), \
        "a NodePort flow from outside: tracked in conntrack"
    assert not connects(running, locked, 8080)
    after = scrape(running, "node1")

    def grew(name: str, **match: str) -> float:
        return after.total(name, **match) - before.total(name, **match)

    packets = "sluice_datapath_packets_total"
    assert grew(packets, hook="from_endpoint", verdict="forwarded") >= 20, \
        "5 pod-to-pod and 5 service connections, each way"
    assert grew("sluice_datapath_bytes_total", verdict="forwarded") > 0
    assert grew(packets, verdict="dropped", reason="policy_denied") >= 2
    assert after.total(packets, direction="egress", hook="from_endpoint") > 0
    assert grew("sluice_policy_verdicts_total", verdict="drop_denied") >= 2
    assert grew("sluice_policy_verdicts_total", verdict="pass_new_flow") >= 10

    selections = after.series("sluice_service_backend_selections_total",
                              service=f"{NAMESPACE}/web")
    assert len(selections) == 1, "one series per backend (the one web pod), whatever frontend"
    labels = dict(next(iter(selections)))
    assert labels["backend"].endswith(":8080") and labels["frontend"].endswith(":80/TCP"), \
        "labelled with the ClusterIP frontend"
    assert grew("sluice_service_backend_selections_total", service=f"{NAMESPACE}/web") >= 6

    assert grew("sluice_agent_sync_duration_seconds_count") >= 1, "the policy was a sync"
    assert after.total("sluice_agent_sync_errors_total") == 0

    fills = {dict(labels)["map"]: value
             for labels, value in after.series("sluice_bpf_map_entries").items()}
    assert {"conntrack", "policy_flows", "lb_services", "lb_backends", "endpoints", "ipcache",
            "policy", "routes"} <= fills.keys()
    assert fills["conntrack"] >= 1 and fills["policy_flows"] >= 1
    assert fills["endpoints"] == 3, "client, server and locked on node1 (IPv4)"
    pressure = after.value("sluice_bpf_map_pressure_ratio", map="conntrack")
    assert pressure == fills["conntrack"] / after.value("sluice_bpf_map_max_entries",
                                                         map="conntrack")
    assert set(dict(labels)["outcome"] for labels in after.series("sluice_flow_events_total")) \
        == {"sent", "lost_ring_full", "rate_limited", "sampled_out"}
    assert after.value("sluice_datapath_stats_read_seconds") < 1.0
