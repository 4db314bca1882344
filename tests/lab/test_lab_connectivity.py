"""The issue's "done when": in both dataplanes and both cross-node modes, dual-stack,
every pod reaches every other pod (same node and across nodes) over TCP and UDP, and
each node's host namespace reaches its pods; no NAT between pods (the server sees the
client pod's own address). Single-family labs get a smoke run. And the bypass: a
counting rule in each node's iptables FORWARD chain sees pod-to-pod traffic in iptables
mode and none in bpf mode."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluice.lab.state import LabState
from tests.lab.labfixture import Lab, pod, running_lab, write_manifest

pytestmark = pytest.mark.root

PORT = 8080
PROTOCOLS = ("TCP", "UDP")
PODS = {"a": "node1", "b": "node1", "c": "node2"}
PAIRS = [(client, server) for client in PODS for server in PODS if client != server]
PROBE_TIMEOUT = 1.0
COUNT_COMMENT = "sluice-lab-bypass-test"


@dataclass
class Cluster:
    lab: Lab
    dataplane: str
    routing: str
    families: tuple[int, ...]

    def state(self) -> LabState:
        return self.lab.state()


def start(lab: Lab, tmp: Path, *options: str) -> None:
    manifest = write_manifest(tmp / "pods.yaml",
                              [pod(name, node=node) for name, node in PODS.items()])
    lab.up(*options, files=[manifest])


@pytest.fixture(scope="module", params=[("bpf", "vxlan"), ("bpf", "native"),
                                        ("iptables", "vxlan"), ("iptables", "native")],
                ids="-".join)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    dataplane, routing = request.param
    with running_lab("conn") as lab:
        start(lab, tmp_path_factory.mktemp("conn"), "--dataplane", dataplane,
              "--routing", routing)
        yield Cluster(lab, dataplane, routing, (4, 6))


def pod_ip(state: LabState, name: str, family: int) -> str:
    record = state.pods[f"default/{name}"]
    return next(ip for ip in record.ips if ipaddress.ip_address(ip).version == family)


def unreachable(cluster: Cluster, sources: list[tuple[str, str]],
                families: tuple[int, ...]) -> list[str]:
    """Every (source, pod, protocol, family) probe that failed, described."""
    state = cluster.state()
    failures: list[str] = []
    for source, server in sources:
        for family in families:
            for protocol in PROTOCOLS:
                address, outcome = cluster.lab.probe_fast(
                    source, f"default/{server}", PORT, protocol=protocol, family=family,
                    timeout=PROBE_TIMEOUT, state=state)
                where = f"{source} -> {server} ({address} {protocol})"
                if outcome.result != "connected":
                    failures.append(f"{where}: {outcome.result} {outcome.error or ''}")
                elif outcome.peer != server:
                    failures.append(f"{where}: answered by {outcome.peer}")
                elif source.startswith("default/"):
                    expected = pod_ip(state, source.removeprefix("default/"), family)
                    if outcome.client_ip != expected:
                        failures.append(f"{where}: server saw {outcome.client_ip}, "
                                        f"not {expected}")
    return failures


def test_every_pod_reaches_every_other_pod(cluster: Cluster) -> None:
    failures = unreachable(cluster, [(f"default/{c}", s) for c, s in PAIRS], cluster.families)
    assert not failures, "\n".join(failures)


def test_nodes_reach_their_pods(cluster: Cluster) -> None:
    sources = [(f"node/{node}", name) for name, node in PODS.items()]
    failures = unreachable(cluster, sources, cluster.families)
    assert not failures, "\n".join(failures)


def test_probe_cli_reports_peer_and_client(cluster: Cluster) -> None:
    state = cluster.state()
    doc = cluster.lab.probe("default/c", "default/a", PORT, "--family", "6", "--protocol", "UDP")
    assert doc["result"] == "connected", doc
    assert (doc["peer"], doc["client_ip"]) == ("a", pod_ip(state, "c", 6))
    assert doc["address"] == pod_ip(state, "a", 6)


def _counting_rules(lab: Lab, state: LabState, action: str) -> None:
    cidrs = [cidr for node in state.plan.nodes for cidr in node.pod_cidrs]
    for node in state.plan.nodes:
        for cidr in cidrs:
            tool = "ip6tables" if ":" in cidr else "iptables"
            # No target: the rule only counts, it decides nothing.
            lab.nsexec(node.netns, tool, "-w", action, "FORWARD", *(["1"] if action == "-I"
                                                                   else []),
                       "-s", cidr, "-m", "comment", "--comment", COUNT_COMMENT)


def _forwarded_packets(lab: Lab, state: LabState) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in state.plan.nodes:
        total = 0
        for tool in ("iptables", "ip6tables"):
            listing = lab.nsexec(node.netns, tool, "-w", "-L", "FORWARD", "-v", "-x", "-n")
            total += sum(int(line.split()[0]) for line in listing.stdout.splitlines()
                         if COUNT_COMMENT in line and re.match(r"\s*\d", line))
        counts[node.name] = total
    return counts


def test_pod_traffic_bypasses_the_host_forward_chain_in_bpf_mode(cluster: Cluster) -> None:
    lab, state = cluster.lab, cluster.state()
    _counting_rules(lab, state, "-I")
    try:
        assert set(_forwarded_packets(lab, state).values()) == {0}
        failures = unreachable(cluster, [(f"default/{c}", s) for c, s in PAIRS],
                               cluster.families)
        assert not failures, "\n".join(failures)
        counts = _forwarded_packets(lab, state)
    finally:
        _counting_rules(lab, state, "-D")
    if cluster.dataplane == "iptables":
        assert all(count > 0 for count in counts.values()), counts
    else:
        assert all(count == 0 for count in counts.values()), counts


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_single_family_lab(tmp_path: Path, family: str) -> None:
    version = 4 if family == "ipv4" else 6
    with running_lab(f"{family}") as lab:
        start(lab, tmp_path, "--ip-family", family)
        state = lab.state()
        assert all(len(record.ips) == 1 for record in state.pods.values())
        assert ipaddress.ip_address(pod_ip(state, "a", version)).version == version
        cluster = Cluster(lab, "bpf", "vxlan", (version,))
        sources = [(f"default/{c}", s) for c, s in PAIRS]
        sources += [(f"node/{node}", name) for name, node in PODS.items()]
        failures = unreachable(cluster, sources, (version,))
        assert not failures, "\n".join(failures)
