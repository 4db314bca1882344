"""`sluice flows` on a live bpf lab: a denied flow with its reason and the policy rule, a
service flow translated at the socket (with the process and the backend chosen) and one
translated per packet (a NodePort from outside, with the backend), filters, follow, and
bad filters refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sluice import cgroups
from sluice.lab.targets import resolve_place
from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest

pytestmark = pytest.mark.root

WAIT = 10.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifest = write_manifest(tmp_path_factory.mktemp("flows") / "flows.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "f"}},
        pod("a", namespace="f", node="node1"),
        pod("c", namespace="f", node="node1"),
        pod("b", namespace="f", node="node2"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "f"},
         "spec": {"type": "NodePort", "selector": {"app": "b"},
                  "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30081}]}},
        {"apiVersion": "sluice.io/v1", "kind": "GlobalNetworkPolicy",
         "metadata": {"name": "deny-c-to-b"},
         "spec": {"order": 10, "podSelector": {"matchLabels": {"app": "b"}},
                  "ingress": [{"action": "Deny",
                               "from": [{"podSelector": {"matchLabels": {"app": "c"}}}]},
                              {"action": "Allow"}]}},
        {"apiVersion": "sluice.io/v1", "kind": "GlobalNetworkPolicy",
         "metadata": {"name": "log-a-to-c"},
         "spec": {"order": 5, "podSelector": {"matchLabels": {"app": "c"}},
                  "ingress": [{"action": "Log",
                               "from": [{"podSelector": {"matchLabels": {"app": "a"}}}]},
                              {"action": "Pass"}]}}])
    with running_lab("flows") as running:
        ok(running.up("--dataplane", "bpf", "--ip-family", "ipv4", files=[manifest]))
        yield running


def flows(lab: Lab, *args: str) -> list[dict[str, Any]]:
    out = ok(sluice("flows", "--lab", lab.name, "-o", "json", "--last", "200", *args)).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for(lab: Lab, match: Any, *args: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while True:
        found = [d for d in flows(lab, *args) if match(d["flow"])]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_a_denied_flow_shows_its_reason_and_the_rule_that_denied_it(lab: Lab) -> None:
    denied = lab.probe("f/c", "f/b", 8080, "--timeout", "1")
    assert denied["result"] != "connected", denied
    found = wait_for(lab, lambda f: f["source"].get("pod_name") == "c"
                     and f["destination"].get("pod_name") == "b",
                     "--verdict", "dropped", "--reason", "policy-denied")
    assert found, flows(lab, "--verdict", "dropped")
    flow = found[-1]["flow"]
    assert flow["verdict"] == "DROPPED"
    assert flow["drop_reason_desc"] == "POLICY_DENIED"
    assert "deny-c-to-b" in flow["sluice"]["rule"]
    assert flow["l4"]["TCP"]["destination_port"] == 8080
    assert flow["l4"]["TCP"]["flags"] == {"SYN": True}
    assert flow["source"]["namespace"] == "f" and "k8s:app=c" in flow["source"]["labels"]
    assert flow["traffic_direction"] == "INGRESS" and flow["node_name"] == "node2"
    table = ok(sluice("flows", "--lab", lab.name, "--verdict", "dropped", "--from-pod",
                      "f/c")).stdout
    assert "f/c" in table and "f/b" in table and "policy-denied by" in table


def test_a_socket_lb_flow_shows_the_process_and_the_backend(lab: Lab) -> None:
    answer = lab.probe("f/a", "svc/f/web", 80)
    assert answer["result"] == "connected", answer
    found = wait_for(lab, lambda f: f["verdict"] == "TRANSLATED",
                     "--service", "f/web", "--verdict", "translated")
    assert found, flows(lab)
    flow = found[-1]["flow"]
    process = flow["sluice"]["process"]
    assert process["pid"] > 0 and process["command"]
    cgroup = os.path.join(cgroups.ensure_cgroup2(), resolve_place(lab.state(), "f/a").cgroup)
    assert process["cgroupId"] == os.stat(cgroup).st_ino
    assert flow["destination"]["pod_name"] == "b"
    assert flow["l4"]["TCP"]["destination_port"] == 8080
    assert flow["destination_service"] == {"namespace": "f", "name": "web"}
    assert flow["sluice"]["frontend"]["port"] == 80
    assert flow["sluice"]["hook"] == "sock-connect"


def test_a_nodeport_flow_from_outside_shows_the_backend_chosen(lab: Lab) -> None:
    answer = lab.probe("external", "nodeport/node1/f/web", 80)
    assert answer["result"] == "connected", answer
    found = wait_for(lab, lambda f: f["sluice"].get("frontend") is not None
                     and f["verdict"] == "FORWARDED", "--node", "node1",
                     "--service", "f/web", "--port", "30081")
    assert found, flows(lab, "--node", "node1")
    flow = found[-1]["flow"]
    assert flow["destination"]["pod_name"] == "b"
    assert flow["sluice"]["frontend"]["port"] == 30081
    assert flow["source"]["labels"] == ["reserved:world"]
    assert flow["sluice"]["hook"] == "from-network"


def test_a_log_rule_shows_as_a_logged_flow(lab: Lab) -> None:
    deadline = time.monotonic() + WAIT
    found: list[dict[str, Any]] = []
    while not found and time.monotonic() < deadline:
        assert lab.probe("f/a", "f/c", 8080)["result"] == "connected", "Log must not decide"
        found = [d for d in flows(lab, "--verdict", "logged", "--node", "node1")
                 if d["flow"]["sluice"].get("rule") == "GlobalNetworkPolicy log-a-to-c ingress[0]"]
    assert found, flows(lab, "--node", "node1")
    flow = found[-1]["flow"]
    assert flow["source"]["pod_name"] == "a" and flow["destination"]["pod_name"] == "c"


def test_follow_prints_new_flows_as_they_come(lab: Lab) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "sluice", "flows", "--lab", lab.name,
         "--node", "node1", "--follow", "--last", "0", "--duration", "8", "-o", "json",
         "--from-pod", "f/a"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        lab.probe("f/a", "f/c", 8080)
        out, _ = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    docs = [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]
    assert any(d["destination"].get("pod_name") == "c" for d in docs), out
    assert all(d["source"].get("pod_name") == "a" for d in docs)


@pytest.mark.parametrize(("args", "message"), [
    (("--verdict", "sideways"), "--verdict 'sideways': expected one of"),
    (("--reason", "gremlins"), "--reason 'gremlins'"),
    (("--ip", "10.0.0.300"), "--ip '10.0.0.300'"),
    (("--port", "70000"), "--port '70000'"),
    (("--pod", "nonamespace"), "expected NAMESPACE/POD"),
])
def test_bad_filters_are_refused(lab: Lab, args: tuple[str, ...], message: str) -> None:
    proc = sluice("flows", "--lab", lab.name, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
