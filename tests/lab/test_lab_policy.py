"""Sluice's own policy kinds in the lab, both dataplanes: GlobalNetworkPolicy order and
actions (Deny before a NetworkPolicy allow, Pass to the Kubernetes tier, Log recording
without deciding), HostEndpoint policy in its three flavours (normal, preDNAT,
applyOnForward), doNotTrack rules and PrefilterDenyList in XDP (bpf), failsafe ports,
established flows cut by a new policy, and a pod moving between identities.

One two-node lab per dataplane: pods a and c on node1, b on node2 (namespace web), a
hostNetwork server on node1 (ports 8080 and 22 in the node's own namespace), a NodePort
Service over b, and the HostEndpoint of node1's uplink eth0.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluice import netns
from sluice.datapath import policy as dp
from sluice.datapath.prefilter import MAP_NAME as PREFILTER_MAP
from sluice.datapath.prefilter import PrefilterEntry, PrefilterKey
from sluice.lab import names
from sluice.lab.probe import Outcome
from sluice.lab.state import LabState
from sluice.loader.maps import Map
from tests.lab.labfixture import SLUICE, Lab, ok, pod, running_lab, write_manifest

pytestmark = pytest.mark.root

EXTERNAL = "198.18.0.250"
NODE_PORT = 30080
HOST_PORT = 8080
SSH = 22
TIMEOUT = 0.8
SETTLE = 6.0  # seconds a policy change may take to reach the datapath in a test

NAMESPACE = {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "web", "labels": {"ns": "web"}}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "web"},
           "spec": {"type": "NodePort", "selector": {"app": "b"},
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": NODE_PORT}]}}
HOST_ENDPOINT = {"apiVersion": "sluice.io/v1", "kind": "HostEndpoint",
                 "metadata": {"name": "node1-eth0", "labels": {"role": "edge"}},
                 "spec": {"node": "node1", "interfaceName": "eth0"}}


def _topology() -> list[dict[str, Any]]:
    server = pod("hostsrv", node="node1", host_network=True,
                 ports=((HOST_PORT, "TCP"), (SSH, "TCP")), labels={"app": "hostsrv"})
    return [NAMESPACE,
            pod("a", namespace="web", node="node1", labels={"app": "a"}),
            pod("b", namespace="web", node="node2", labels={"app": "b"}),
            pod("c", namespace="web", node="node1", labels={"app": "c"}),
            server, SERVICE, HOST_ENDPOINT]


def global_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "sluice.io/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def network_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "web"}, "spec": spec}


def from_pods(app: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"app": app}}}


EXTERNAL_NET = {"nets": [f"{EXTERNAL}/32"]}
ON_EDGE = {"hostEndpointSelector": {"matchLabels": {"role": "edge"}}}


@dataclass
class Cluster:
    lab: Lab
    dataplane: str
    state: LabState
    workdir: Path

    def apply(self, *objects: dict[str, Any]) -> Callable[[], None]:
        """Apply OBJECTS; returns what deletes them again."""
        path = write_manifest(self.workdir / f"objects-{time.monotonic_ns()}.yaml", objects)
        ok(self.lab.apply(path))
        return lambda: ok(self.lab.delete(path))

    @contextlib.contextmanager
    def applied(self, *objects: dict[str, Any]) -> Iterator[None]:
        delete = self.apply(*objects)
        try:
            yield
        finally:
            delete()

    def probe(self, source: str, destination: str, port: int, protocol: str = "TCP"
              ) -> Outcome:
        return self.lab.probe_fast(source, destination, port, protocol=protocol, family=4,
                                   timeout=TIMEOUT, state=self.state)[1]

    def reaches(self, source: str, destination: str, port: int) -> bool:
        return self.probe(source, destination, port).result == "connected"

    def settles(self, expected: dict[tuple[str, str, int], bool]) -> None:
        """Wait until every (source, destination, port) probe gives its expected answer."""
        deadline = time.monotonic() + SETTLE
        while True:
            got = {case: self.reaches(*case) for case in expected}
            if got == expected or time.monotonic() > deadline:
                break
        wrong = {case: got[case] for case in expected if got[case] != expected[case]}
        assert not wrong, f"{self.dataplane}: reached (True) or not, against expected: {wrong}"

    def pin_dir(self, node: str) -> str:
        return str(names.pin_dir(self.lab.name, node))

    def agent_log(self, node: str) -> str:
        return Path(self.state.paths.agent_log(node)).read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=["bpf", "iptables"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp(f"policy-{request.param}")
    with running_lab(f"pol{request.param[0]}") as lab:
        manifest = write_manifest(workdir / "topology.yaml", _topology())
        lab.up("--dataplane", request.param, files=[manifest])
        yield Cluster(lab, request.param, lab.state(), workdir)


def test_global_deny_comes_before_a_kubernetes_allow(cluster: Cluster) -> None:
    allow_all = network_policy("allow-all", {"podSelector": {"matchLabels": {"app": "a"}},
                                             "ingress": [{}]})
    deny_c = global_policy("deny-c", {
        "order": 10, "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"action": "Deny", "from": [from_pods("c")]}, {"action": "Pass"}]})
    with cluster.applied(allow_all, deny_c):
        cluster.settles({("web/c", "web/a", 8080): False, ("web/b", "web/a", 8080): True})
    cluster.settles({("web/c", "web/a", 8080): True})


def test_pass_hands_the_flow_to_network_policy(cluster: Cluster) -> None:
    only_b = network_policy("only-b", {"podSelector": {"matchLabels": {"app": "a"}},
                                       "ingress": [{"from": [from_pods("b")]}]})
    pass_all = global_policy("pass-all", {"order": 10,
                                          "podSelector": {"matchLabels": {"app": "a"}},
                                          "ingress": [{"action": "Pass"}]})
    with cluster.applied(only_b, pass_all):
        cluster.settles({("web/c", "web/a", 8080): False, ("web/b", "web/a", 8080): True})
    # Without a rule that matches, a selected endpoint's global tier denies.
    with cluster.applied(global_policy("allow-b", {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"action": "Allow", "from": [from_pods("b")]}]})):
        cluster.settles({("web/c", "web/a", 8080): False, ("web/b", "web/a", 8080): True})


def test_lower_order_decides_first(cluster: Cluster) -> None:
    selector = {"podSelector": {"matchLabels": {"app": "a"}}}
    allow_c = global_policy("first-allow-c", {
        "order": 5, **selector, "ingress": [{"action": "Allow", "from": [from_pods("c")]}]})
    deny_c = global_policy("then-deny-c", {
        "order": 10, **selector, "ingress": [{"action": "Deny", "from": [from_pods("c")]},
                                             {"action": "Pass"}]})
    with cluster.applied(deny_c):
        cluster.settles({("web/c", "web/a", 8080): False})
        with cluster.applied(allow_c):
            cluster.settles({("web/c", "web/a", 8080): True})


def test_log_records_the_flow_and_the_rule_without_deciding(cluster: Cluster) -> None:
    if cluster.dataplane != "bpf":
        pytest.skip("iptables mode logs to NFLOG group 50, which the agent does not read")
    log_c = global_policy("log-c", {
        "order": 1, "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"action": "Log", "from": [from_pods("c")]}, {"action": "Pass"}]})
    with cluster.applied(log_c):
        # c reaches a either way: new flows until one is logged (the policy is in place).
        deadline = time.monotonic() + SETTLE
        while "GlobalNetworkPolicy log-c ingress[0]" not in cluster.agent_log("node1"):
            assert time.monotonic() < deadline, cluster.agent_log("node1")[-3000:]
            assert cluster.reaches("web/c", "web/a", 8080), "Log must not decide"
            time.sleep(0.2)
    line = next(line for line in cluster.agent_log("node1").splitlines()
                if "GlobalNetworkPolicy log-c ingress[0]" in line)
    c_ip = cluster.state.pods["web/c"].ips[0]
    assert "policy log: tcp" in line and f"{c_ip}:" in line and "allowed" in line, line


def test_host_endpoint_policy_and_failsafe_ports(cluster: Cluster) -> None:
    deny_all = global_policy("edge-deny-all", {**ON_EDGE, "ingress": [{"action": "Deny"}]})
    before = {("external", "node/node1", HOST_PORT): True,
              ("external", "node/node1", SSH): True,
              ("external", "nodeport/node1/web/b", 80): True}
    cluster.settles(before)
    with cluster.applied(deny_all):
        cluster.settles({
            ("external", "node/node1", HOST_PORT): False,
            ("external", "node/node1", SSH): True,  # failsafe: never blocked
            # Forwarded traffic is not the host's: only applyOnForward policy judges it.
            ("external", "nodeport/node1/web/b", 80): True,
            # The node's own overlay keeps working, and pods reach their host.
            ("web/a", "web/b", 8080): True,
            ("web/a", "node/node1", HOST_PORT): True,
        })
    cluster.settles(before)


def test_apply_on_forward_judges_traffic_the_host_forwards(cluster: Cluster) -> None:
    deny_external = global_policy("edge-forward", {
        **ON_EDGE, "applyOnForward": True,
        "ingress": [{"action": "Deny", "from": [EXTERNAL_NET]}, {"action": "Allow"}]})
    with cluster.applied(deny_external):
        cluster.settles({("external", "nodeport/node1/web/b", 80): False,
                         ("external", "node/node1", HOST_PORT): False,
                         ("web/c", "svc/web/b", 80): True})
    cluster.settles({("external", "nodeport/node1/web/b", 80): True})


def test_pre_dnat_policy_sees_the_node_port_not_the_backend_port(cluster: Cluster) -> None:
    def pre_dnat(port: int) -> dict[str, Any]:
        return global_policy(f"edge-prednat-{port}", {
            **ON_EDGE, "preDNAT": True, "applyOnForward": True,
            "ingress": [{"action": "Deny", "from": [EXTERNAL_NET],
                         "ports": [{"port": port}]}, {"action": "Allow"}]})

    with cluster.applied(pre_dnat(HOST_PORT)):
        # The backend's port 8080 is not what arrives: the node port is.
        cluster.settles({("external", "nodeport/node1/web/b", 80): True,
                         ("external", "node/node1", HOST_PORT): False})
    with cluster.applied(pre_dnat(NODE_PORT)):
        cluster.settles({("external", "nodeport/node1/web/b", 80): False,
                         ("external", "node/node1", HOST_PORT): True,
                         ("web/c", "svc/web/b", 80): True})


def _counter(cluster: Cluster, reason: dp.CounterReason) -> int:
    path = os.path.join(cluster.pin_dir("node1"), dp.COUNTERS_MAP)
    counters = Map.from_pin(path, ctypes.c_uint32, dp.PolicyCounter)
    try:
        per_cpu = counters.lookup_percpu(ctypes.c_uint32(int(reason))) or []
        return sum(int(c.packets) for c in per_cpu)
    finally:
        counters.close()


def test_do_not_track_rules_drop_before_the_stack(cluster: Cluster) -> None:
    untracked = global_policy("edge-untracked", {
        **ON_EDGE, "doNotTrack": True, "applyOnForward": True,
        "ingress": [{"action": "Deny", "from": [EXTERNAL_NET]}]})
    dropped = _counter(cluster, dp.CounterReason.DROP_UNTRACKED) \
        if cluster.dataplane == "bpf" else 0
    with cluster.applied(untracked):
        cluster.settles({("external", "node/node1", HOST_PORT): False,
                         ("external", "nodeport/node1/web/b", 80): False,
                         ("external", "node/node1", SSH): True,  # failsafe
                         ("external", "node/node2", HOST_PORT): False})
        if cluster.dataplane == "bpf":
            assert _counter(cluster, dp.CounterReason.DROP_UNTRACKED) > dropped
    cluster.settles({("external", "nodeport/node1/web/b", 80): True})


def test_prefilter_deny_list_drops_listed_sources(cluster: Cluster) -> None:
    deny_list = {"apiVersion": "sluice.io/v1", "kind": "PrefilterDenyList",
                 "metadata": {"name": "external"},
                 "spec": {"cidrs": ["198.18.0.248/29"],
                          "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node1"}}}}
    with cluster.applied(deny_list):
        cluster.settles({("external", "nodeport/node1/web/b", 80): False,
                         ("external", "nodeport/node2/web/b", 80): True})
        if cluster.dataplane == "bpf":
            path = os.path.join(cluster.pin_dir("node1"), PREFILTER_MAP)
            entries = Map.from_pin(path, PrefilterKey, PrefilterEntry)
            try:
                entry = entries.lookup(PrefilterKey.of("198.18.0.248/29"))
            finally:
                entries.close()
            assert entry is not None and entry.packets > 0
    cluster.settles({("external", "nodeport/node1/web/b", 80): True})


@contextlib.contextmanager
def _connection(cluster: Cluster, client: str, server: str, port: int
                ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection between two pods' namespaces, made by this process."""
    server_ip = cluster.state.pods[server].ips[0]
    with netns.entered(cluster.state.pods[server].netns):
        listener = socket.create_server((server_ip, port))
    with netns.entered(cluster.state.pods[client].netns):
        client_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, client_sock:
        client_sock.settimeout(3)
        client_sock.connect((server_ip, port))
        accepted, _ = listener.accept()
        with accepted:
            accepted.settimeout(1)
            yield client_sock, accepted


def _passes(client: socket.socket, accepted: socket.socket) -> bool:
    try:
        client.sendall(b"ping")
        return accepted.recv(4) == b"ping"
    except OSError:
        return False


def test_a_new_policy_cuts_established_flows_it_forbids(cluster: Cluster) -> None:
    deny_c = network_policy("deny-from-c", {"podSelector": {"matchLabels": {"app": "a"}},
                                           "ingress": [{"from": [from_pods("b")]}]})
    with _connection(cluster, "web/c", "web/a", 9100) as (from_c, at_a), \
            _connection(cluster, "web/b", "web/a", 9101) as (from_b, at_b):
        assert _passes(from_c, at_a) and _passes(from_b, at_b)
        with cluster.applied(deny_c):
            deadline = time.monotonic() + SETTLE
            while _passes(from_c, at_a):
                assert time.monotonic() < deadline, "the forbidden flow still passes"
            assert _passes(from_b, at_b), "the allowed flow was cut too"


def test_a_relabelled_pod_moves_to_the_identity_of_its_new_labels(cluster: Cluster) -> None:
    only_b = network_policy("only-app-b", {"podSelector": {"matchLabels": {"app": "a"}},
                                           "ingress": [{"from": [from_pods("b")]}]})
    relabelled = pod("c", namespace="web", node="node1", labels={"app": "b"})
    original = pod("c", namespace="web", node="node1", labels={"app": "c"})
    with cluster.applied(only_b):
        cluster.settles({("web/c", "web/a", 8080): False})
        cluster.apply(relabelled)
        try:
            cluster.settles({("web/c", "web/a", 8080): True, ("web/b", "web/a", 8080): True})
        finally:
            cluster.apply(original)
        cluster.settles({("web/c", "web/a", 8080): False})


def test_policy_show_prints_rules_and_the_identities_they_resolve_to(cluster: Cluster) -> None:
    only_b = network_policy("show-only-b", {"podSelector": {"matchLabels": {"app": "a"}},
                                            "ingress": [{"from": [from_pods("b")],
                                                         "ports": [{"port": 8080}]}]})
    with cluster.applied(only_b):
        cluster.settles({("web/b", "web/a", 8080): True, ("web/c", "web/a", 8080): False})
        # settles may have seen b reach a before the policy landed; this flow is judged by it
        assert cluster.reaches("web/b", "web/a", 8080)
        proc = ok(subprocess.run([str(SLUICE), "bpf", "policy", "show", "web/a", "--lab",
                                  cluster.lab.name, "-o", "json"],
                                 capture_output=True, text=True, timeout=30, check=False))
        doc = json.loads(proc.stdout)
        assert doc["endpoint"] == "web/a" and doc["identity"]["name"] == "web:{app=a}"
        ingress = next(d for d in doc["directions"] if d["direction"] == "ingress")
        first = ingress["rules"][0]
        assert first["origin"] == "NetworkPolicy web/show-only-b ingress[0]"
        assert (first["action"], first["protocol"], first["ports"]) == ("Allow", "TCP", ["8080"])
        assert [p["name"] for p in first["peers"]] == ["web:{app=b}"]
        assert ingress["rules"][-1]["action"] == "Deny"
        if cluster.dataplane == "bpf":
            assert doc["datapath"]["entries"] >= 3
            assert int(doc["datapath"]["flowsByRule"][str(first["ruleId"])]) >= 1
        text = subprocess.run([str(SLUICE), "bpf", "policy", "show", "web/a", "--lab",
                               cluster.lab.name], capture_output=True, text=True, timeout=30,
                              check=False).stdout
        assert "identity" in text and "web:{app=b}" in text and "show-only-b" in text
