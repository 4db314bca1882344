"""The agent process: start-up checks, waiting for its Node, /healthz, /metrics, /state,
and a bad object in the datastore."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.agent.harness import MiniCluster, wait_for
from tests.conftest import unique

pytestmark = pytest.mark.root


def metric(text: str, name: str) -> float:
    """The value of the sample NAME (with labels, exactly as written) in TEXT."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in:\n{text}")


def test_waits_for_its_node_then_serves_health_metrics_and_state(single: MiniCluster) -> None:
    node = single.nodes[0]
    agent = single.start_agent(node, wait=False)
    failures = 'sluice_agent_reconciles_total{result="failure"}'
    unhealthy = wait_for(lambda: (r := agent.try_get("/healthz")) and r[0] == 503 and
                         metric(agent.metrics(), failures) >= 1 and r, 20,
                         what="a 503 from /healthz")
    assert "the datastore has no Node named 'n1'" in unhealthy[1]
    assert "waiting" in unhealthy[1]
    assert metric(agent.metrics(), failures) >= 1
    assert agent.state()["healthy"] is False

    single.publish(node)
    agent.wait_healthy()
    assert agent.get("/healthz") == (200, "ok\n")
    pod = node.add_pod("a")
    state = agent.wait_reconciled(lambda s: len(s.get("endpoints", [])) == 1,
                                  what="the pod's endpoint")
    assert state["endpoints"][0]["hostIfname"] == pod.host_ifname
    assert set(state["endpoints"][0]["addresses"]) == {str(pod.side.ipv4), str(pod.side.ipv6)}
    assert state["bpf"]["routes"] == {
        "198.18.16.0/24": {"kind": "local_pods", "nextHop": None},
        "fd00:10:1::/64": {"kind": "local_pods", "nextHop": None},
    }
    assert {(link["program"], link["device"], link["hook"]) for link in state["bpf"]["links"]} \
        == {("from_endpoint", pod.host_ifname, "tcx/ingress"),
            ("from_network", "sl-vxlan", "tcx/ingress"), ("from_network", "uplink0", "tcx/ingress"),
            ("from_host", "sl-host", "tcx/egress"), ("to_network", "uplink0", "tcx/egress")}
    assert state["problems"] == []

    text = agent.metrics()
    assert 'sluice_agent_build_info{version="0.1.0",node="n1",dataplane="bpf",' \
           'routing="vxlan"} 1' in text
    assert metric(text, 'sluice_agent_reconciles_total{result="success"}') >= 1
    assert metric(text, "sluice_agent_healthy") == 1
    assert metric(text, "sluice_agent_endpoints") == 1
    assert metric(text, 'sluice_agent_routes{kind="local_pods"}') == 2
    assert metric(text, "sluice_agent_links") == 5
    assert metric(text, "sluice_agent_problems") == 0
    assert metric(text, "sluice_agent_reconcile_duration_seconds") > 0
    assert 'sluice_agent_route_hits_total{cidr="198.18.16.0/24",kind="local_pods"}' in text
    assert metric(text, 'sluice_agent_changes_total{object="endpoints",op="add"}') == 2
    assert agent.get("/nope")[0] == 404

    assert agent.stop() == 0
    assert "SIGTERM: stopping" in agent.log_text()
    assert not (node.state_dir / "agent.sock").exists(), "the agent removes its socket"


def test_a_bad_node_object_is_reported_and_the_agent_stays_up(cluster: MiniCluster) -> None:
    n1, n2 = cluster.nodes
    cluster.publish(n1)
    agent = cluster.start_agent(n1)
    # A peer whose Node object is broken from the start: nothing to route to, a problem.
    broken = n2.node_object()
    broken["spec"]["podCIDRs"] = ["198.18.17.0/33"]
    cluster.write("node.n2.yaml", broken)
    state = agent.wait_reconciled(lambda s: any("node.n2.yaml" in p for p in s["problems"]),
                                  what="the datastore problem")
    assert "198.18.17.0/24" not in state["bpf"]["routes"]
    assert agent.get("/healthz")[0] == 200, "a bad object elsewhere does not make us unhealthy"
    assert metric(agent.metrics(), "sluice_agent_problems") >= 1

    # This node's own object goes bad: the last good version stays in force.
    own = n1.node_object()
    own["status"]["addresses"] = [{"type": "InternalIP", "address": "not-an-ip"}]
    cluster.write("node.n1.yaml", own)
    agent.wait_reconciled(lambda s: any("node.n1.yaml" in p for p in s["problems"]),
                          what="the problem with n1's own object")
    assert agent.alive() and agent.get("/healthz")[0] == 200

    # Fixed, the peer is routed.
    cluster.publish(n1, n2)
    state = agent.wait_reconciled(lambda s: "198.18.17.0/24" in s["bpf"]["routes"]
                                  and not s["problems"], what="the peer's routes")
    assert state["bpf"]["routes"]["198.18.17.0/24"]["nextHop"] == "198.18.0.12"


def test_a_node_object_that_never_was_valid_keeps_it_waiting(single: MiniCluster) -> None:
    node = single.nodes[0]
    bad = node.node_object()
    bad["spec"]["podCIDRs"] = ["nonsense"]
    single.write("node.n1.yaml", bad)
    agent = single.start_agent(node, wait=False)
    reply = wait_for(lambda: (r := agent.try_get("/healthz")) and r[0] == 503 and r, 20,
                     what="a 503")
    assert "no Node named 'n1'" in reply[1] and "node.n1.yaml" in reply[1], reply
    assert agent.alive()
    single.publish(node)
    agent.wait_healthy()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", "agent", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_refuses_a_namespace_that_does_not_exist() -> None:
    missing = unique("sl-tnone")
    result = run_cli("--node", "n1", "--datastore", "file:///nonexistent", "--netns", missing)
    assert result.returncode == 1
    assert f"cannot run in network namespace {missing}" in result.stderr


def test_refuses_the_machines_own_namespace_without_being_asked() -> None:
    """Safe even if the guard broke: the datastore cannot open, so nothing would start."""
    result = run_cli("--node", "n1", "--datastore", "file:///nonexistent-sluice-test")
    assert result.returncode == 2, result.stderr
    assert "refusing to run in the machine's own network namespace" in result.stderr
