"""A mixed cluster: node1 runs bpf, node2 iptables (`lab up --node-dataplane`).

Pods reach each other both ways, pods on each node reach a ClusterIP whose only backend
is on the other node (from the pod's cgroup, as `lab probe` runs: socket load balancing
on the bpf node, iptables DNAT on the other), and `external` reaches a NodePort on each
node: with a backend on that node, from the iptables node to a backend on the bpf node
(masqueraded there, as kube-proxy does), and from the bpf node to a backend on the
iptables node (the Node's sluice.io/dataplane annotation flags the backend; the bpf
datapath SNATs the flow to its node address, since the iptables node could not return
the replies through it), in both families.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lab.labfixture import ok, pod, running_lab, write_manifest

pytestmark = pytest.mark.skipif(not Path("/sys/fs/bpf").exists(), reason="needs bpffs")

PORT = 8080


def service(name: str, app: str, *, node_port: int | None = None,
            protocol: str = "TCP") -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": app}, "ipFamilyPolicy": "PreferDualStack",
                            "ports": [{"port": 80, "targetPort": PORT, "protocol": protocol}]}
    if node_port is not None:
        spec["type"] = "NodePort"
        spec["ports"][0]["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def test_mixed_cluster(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "mixed.yaml", [
        pod("a", node="node1"), pod("b", node="node2"),
        service("to-a", "a", node_port=30801), service("to-b", "b", node_port=30802),
        service("to-b-udp", "b", node_port=30803, protocol="UDP")])
    with running_lab("mixed") as lab:
        lab.up("--node-dataplane", "node2=iptables", files=[manifest])
        status = ok(lab.run("status"))
        assert "node1    bpf" in status.stdout and "node2    iptables" in status.stdout
        cases = [
            ("default/a", "default/b", "b"), ("default/b", "default/a", "a"),
            ("default/a", "svc/default/to-b", "b"), ("default/b", "svc/default/to-a", "a"),
            ("node/node1", "svc/default/to-b", "b"), ("node/node2", "svc/default/to-a", "a"),
            ("external", "nodeport/node1/default/to-a", "a"),
            ("external", "nodeport/node2/default/to-b", "b"),
            ("external", "nodeport/node2/default/to-a", "a"),
            ("external", "nodeport/node1/default/to-b", "b"),
        ]
        failures = []
        for family in ("4", "6"):
            for source, destination, peer in cases:
                port = 80 if destination.startswith(("svc/", "nodeport/")) else PORT
                doc = lab.probe(source, destination, port, "--count", "3", "--family", family)
                if doc["result"] != "connected" or set(doc["peers"]) != {peer}:
                    failures.append(f"IPv{family} {source} -> {destination}: {doc['results']} "
                                    f"{doc['peers']}")
        for family in ("4", "6"):
            doc = lab.probe("external", "nodeport/node1/default/to-b-udp", 80, "--count", "3",
                            "--protocol", "UDP", "--family", family)
            if doc["result"] != "connected" or set(doc["peers"]) != {"b"}:
                failures.append(f"IPv{family} UDP external -> node1 NodePort to b: "
                                f"{doc['results']}")
        assert not failures, failures
