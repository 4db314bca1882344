"""A 3-node lab on etcd (`lab up --datastore etcd`): the lab's etcd runs in the underlay
namespace, the agents watch it over the underlay, and everything the lab writes (Nodes,
Pods, Services) goes there. Pods on every node reach each other and a ClusterIP Service
whose backends are on other nodes; an object written with `sluice apply -f` straight into
the lab's etcd (a NetworkPolicy) is picked up by the agents, and `sluice delete -f`
removes it again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.datastore import ResourceKey
from sluice.datastore.etcdstore import EtcdDatastore
from sluice.lab import names, procs
from sluice.lab.probe import Outcome
from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest

pytestmark = pytest.mark.root

NS = "shop"
PICKUP = 30.0


def service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def deny_web_ingress() -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-web", "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "policyTypes": ["Ingress"]}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifest = write_manifest(tmp_path_factory.mktemp("etcd-lab") / "shop.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        pod("client", namespace=NS, node="node1", labels={"app": "client"}),
        pod("web-2", namespace=NS, node="node2", labels={"app": "web"}),
        pod("web-3", namespace=NS, node="node3", labels={"app": "web"}),
        service(),
    ])
    with running_lab("etcd", datastore="etcd") as running:
        running.up("--nodes", "3", "--ip-family", "ipv4", files=[manifest])
        yield running


def _probe(lab: Lab, destination: str, port: int) -> Outcome:
    return lab.probe_fast(f"{NS}/client", destination, port, timeout=1.0)[1]


def test_the_lab_runs_on_its_etcd(lab: Lab) -> None:
    state = lab.state()
    assert state.options.datastore == "etcd"
    assert state.etcd is not None and procs.is_running(state.etcd)
    assert state.paths.agent_datastore_url == "etcd://198.18.0.2:2379"
    assert not state.paths.datastore.exists() or not any(state.paths.datastore.iterdir())
    with EtcdDatastore(state.paths.datastore_url) as datastore:
        stored = datastore.snapshot()
    assert {node.name for node in stored.nodes()} == {"node1", "node2", "node3"}
    web2 = stored.get(ResourceKey("Pod", NS, "web-2"))
    assert web2 is not None and web2.status.phase == "Running"
    assert stored.services(NS)[0].spec.cluster_ip_addresses, "the lab allocated a clusterIP"
    status = ok(lab.run("status", "-o", "json")).stdout
    assert '"url": "etcd://198.18.0.2:2379"' in status
    for node in state.plan.nodes:
        argv = Path(f"/proc/{state.agents[node.name].pid}/cmdline").read_bytes().split(b"\0")
        assert b"etcd://198.18.0.2:2379" in argv


def test_pods_and_a_service_across_nodes(lab: Lab) -> None:
    for target in ("web-2", "web-3"):
        outcome = _probe(lab, f"{NS}/{target}", 8080)
        assert outcome.result == "connected" and outcome.peer == target, (target, outcome)
    seen: set[str] = set()
    deadline = time.monotonic() + PICKUP
    while seen != {"web-2", "web-3"} and time.monotonic() < deadline:
        outcome = _probe(lab, f"svc/{NS}/web", 80)
        assert outcome.result == "connected", outcome
        seen.add(outcome.peer or "")
    assert seen == {"web-2", "web-3"}, "both backends, each on another node than the client"


def _wait_for(lab: Lab, wanted: str) -> Outcome:
    deadline = time.monotonic() + PICKUP
    while True:
        outcome = _probe(lab, f"{NS}/web-2", 8080)
        if (outcome.result == "connected") == (wanted == "connected"):
            return outcome
        assert time.monotonic() < deadline, f"still {outcome} after {PICKUP:.0f}s"
        time.sleep(0.2)


def test_sluice_apply_into_the_labs_etcd_reaches_the_agents(lab: Lab, tmp_path: Path) -> None:
    state = lab.state()
    policy = write_manifest(tmp_path / "deny.yaml", [deny_web_ingress()])
    where = ("--datastore", state.paths.agent_datastore_url,
             "--netns", names.underlay_netns(lab.name))
    assert _wait_for(lab, "connected").peer == "web-2"
    applied = ok(sluice("apply", "-f", str(policy), *where))
    assert "networkpolicy/shop/deny-web created" in applied.stdout
    _wait_for(lab, "denied")
    deleted = ok(sluice("delete", "-f", str(policy), *where))
    assert "networkpolicy/shop/deny-web deleted" in deleted.stdout
    _wait_for(lab, "connected")
