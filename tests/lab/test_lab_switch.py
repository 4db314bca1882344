"""`sluice lab switch`: nodes switched bpf -> iptables -> bpf under running flows.

Flows kept open through every switch: a TCP stream pod->pod across nodes, a TCP
connection from a pod to a ClusterIP (backend on the other node), a numbered UDP flow
pod->pod, and a TCP connection from `external` to a NodePort. After each switch every
connection still echoes, the UDP flow still gets answers (datagrams lost are printed),
new connections work, and they go through the new dataplane: nf_conntrack of an
iptables node holds them, a bpf node's netfilter never sees them (its BPF conntrack holds
the service flow instead).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest
from tests.lab.switchflows import (
    ECHO_TCP,
    ECHO_UDP,
    TcpStream,
    UdpFlow,
    echo_servers,
    echoes,
    tcp_connect,
    wait_tcp,
)

pytestmark = pytest.mark.skipif(not Path("/sys/fs/bpf").exists(), reason="needs bpffs")

SERVICE_PORT = 7000
NODE_PORT = 30702
SETTLE = 1.0
IN_FLIGHT = 100  # the newest datagrams may still be on their way: not counted as lost


def manifests(path: Path) -> Path:
    services: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo",
                                                             "namespace": "default"},
         "spec": {"selector": {"app": "b"}, "ports": [
             {"name": "tcp", "port": SERVICE_PORT, "targetPort": ECHO_TCP,
              "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge",
                                                             "namespace": "default"},
         # Local: iptables mode does not masquerade it, so a connection made in iptables
         # mode can be carried into bpf, whose service path does not SNAT.
         "spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                  "selector": {"app": "c"}, "ports": [
             {"name": "tcp", "port": SERVICE_PORT, "targetPort": ECHO_TCP,
              "nodePort": NODE_PORT, "protocol": "TCP"}]}},
    ]
    return write_manifest(path, [pod("a", node="node1"), pod("b", node="node2"),
                                 pod("c", node="node1"), *services])


def conntrack_has(lab: Lab, netns_name: str, sock: socket.socket) -> bool:
    """Whether the node's nf_conntrack holds SOCK's flow (by its client address/port)."""
    address, port = sock.getsockname()[:2]
    listed = lab.nsexec(netns_name, "conntrack", "-L", "-p", "tcp", "--orig-src", address,
                        "--orig-port-src", str(port))
    return f"sport={port}" in listed.stdout


def bpf_ct_has(lab: Lab, node: str, sock: socket.socket) -> bool:
    address, port = sock.getsockname()[:2]
    listed = ok(sluice("bpf", "ct", "list", "--lab", lab.name, "--node", node,
                       "--address", address, "--port", str(port), "-o", "json"))
    return bool(json.loads(listed.stdout))


def test_switch_keeps_flows(tmp_path: Path) -> None:
    with running_lab("swtch") as lab:
        lab.up("--ip-family", "ipv4", files=[manifests(tmp_path / "flows.yaml")])
        state = lab.state()
        pods = {row["name"]: row for row in lab.get("pods")}
        cluster_ip = next(row for row in lab.get("services")
                          if row["name"] == "echo")["clusterIPs"][0]
        nodes = {node.name: node for node in state.plan.nodes}
        a_ns, b_ip = pods["a"]["netns"], pods["b"]["ips"][0]
        external = state.plan.external.netns
        node1_ip = nodes["node1"].addresses[0]

        with echo_servers(lab, ["default/b", "default/c"]):
            stream = TcpStream(wait_tcp(a_ns, b_ip, ECHO_TCP))
            service = wait_tcp(a_ns, cluster_ip, SERVICE_PORT)
            node_port = wait_tcp(external, node1_ip, NODE_PORT)
            udp = UdpFlow.open(a_ns, b_ip, ECHO_UDP)
            stream.start()
            udp.start()
            kept = {"service": service, "nodeport": node_port}
            lost: list[tuple[str, int, int]] = []
            try:
                assert echoes(service, b"hello") and echoes(node_port, b"hello")
                time.sleep(SETTLE)
                for node, dataplane in (("node1", "iptables"), ("node2", "iptables"),
                                        ("node1", "bpf"), ("node2", "bpf")):
                    first = udp.sent
                    ok(lab.run("switch", node, "--dataplane", dataplane))
                    time.sleep(SETTLE)
                    step = f"{node} -> {dataplane}"
                    assert stream.progressing(), f"{step}: stream stalled ({stream.error})"
                    for name, sock in kept.items():
                        assert echoes(sock, step.encode()), f"{step}: {name} is broken"
                    last = udp.sent - IN_FLIGHT
                    time.sleep(0.5)
                    lost.append((step, udp.lost_between(first, last), last - first))
                    assert any(number >= last for number in udp.answered), \
                        f"{step}: the UDP flow gets no answers"

                    # New connections work, and go through the new dataplane.
                    fresh_service = tcp_connect(a_ns, cluster_ip, SERVICE_PORT)
                    fresh_pod = tcp_connect(a_ns, b_ip, ECHO_TCP)
                    fresh_node_port = tcp_connect(external, node1_ip, NODE_PORT)
                    for sock in (fresh_service, fresh_pod, fresh_node_port):
                        assert echoes(sock, b"new"), f"{step}: a new connection is broken"
                    netns_name = nodes[node].netns
                    if dataplane == "iptables":
                        assert conntrack_has(lab, netns_name, fresh_pod), step
                    else:
                        assert not conntrack_has(lab, netns_name, fresh_pod), step
                    if node == "node1":
                        assert conntrack_has(lab, netns_name, fresh_service) == \
                            (dataplane == "iptables"), step
                        assert bpf_ct_has(lab, "node1", fresh_service) == (dataplane == "bpf")
                    # Kept open: the next switches must carry them too.
                    kept[f"service after {step}"] = fresh_service
                    kept[f"nodeport after {step}"] = fresh_node_port
                    fresh_pod.close()
                status = json.loads(ok(lab.run("status", "-o", "json")).stdout)
                assert {row["name"]: row["dataplane"] for row in status["nodes"]} == \
                    {"node1": "bpf", "node2": "bpf"}
            finally:
                stream.close()
                udp.close()
                for sock in kept.values():
                    sock.close()
            for step, count, sent in lost:
                print(f"switch {step}: UDP datagrams lost {count} of {sent}")
            print(f"TCP stream: {stream.echoed} bytes echoed, no error")
