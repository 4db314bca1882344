"""Kubernetes Services without kube-proxy, in both dataplanes: one two-node dual-stack lab
(vxlan) per dataplane with examples/lab-services.yaml, probed from pods, node hosts and
the external namespace: ClusterIP (same node and across), NodePort on both nodes,
LoadBalancer IPs, hairpin, UDP, IPv6-only and dual-stack Services, every backend used,
externalTrafficPolicy: Local keeping the client's address, no endpoints refused at once,
ClientIP session affinity, loadBalancerSourceRanges and a named targetPort. Also what the
lab itself does for Services: probes in their source's cgroup, load balancer IPs and the
external routes to them, node port targets.

Probes that fail stop a test at once (one timeout, not thirty), to keep a failing run short.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluice.compile.services import node_port_allocation
from sluice.datastore import open_datastore
from sluice.lab import names
from sluice.lab.probe import Outcome
from sluice.lab.state import LabState
from tests.lab.labfixture import Lab, running_lab

pytestmark = pytest.mark.root

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "lab-services.yaml"
FAMILIES = (4, 6)
EXTERNAL = {4: "198.18.0.250", 6: "fd00:ff::250"}
WEB = {"web-1", "web-2", "web-3"}
TIMEOUT = 1.0
ATTEMPTS = 24
"""Connections tried until every wanted peer answered: a backend chosen with chance 1/3
is missed 24 times in a row about once in 17000."""


@dataclass
class Cluster:
    lab: Lab
    dataplane: str
    state: LabState

    def pod_ip(self, pod: str, family: int) -> str:
        return next(ip for ip in self.state.pods[f"shop/{pod}"].ips
                    if ipaddress.ip_address(ip).version == family)

    def node_of(self, pod: str) -> str:
        return self.state.pods[f"shop/{pod}"].node

    def probe(self, source: str, destination: str, port: int, *, family: int,
              protocol: str = "TCP", timeout: float = TIMEOUT) -> tuple[str, Outcome]:
        return self.lab.probe_fast(source, destination, port, protocol=protocol,
                                   family=family, timeout=timeout, state=self.state)

    def connect(self, source: str, destination: str, port: int, *, family: int,
                protocol: str = "TCP") -> Outcome:
        """One probe that must connect and be answered."""
        address, outcome = self.probe(source, destination, port, family=family,
                                      protocol=protocol)
        assert outcome.result == "connected" and outcome.peer, \
            f"{source} -> {destination} ({address} {port}/{protocol}): {outcome}"
        return outcome

    def peers(self, source: str, destination: str, port: int, *, family: int,
              count: int, protocol: str = "TCP") -> list[str]:
        """The peers of COUNT connections (the first alone, so a failure costs one
        timeout); every one must connect."""
        first = self.connect(source, destination, port, family=family, protocol=protocol)
        address, rest = self.lab.probe_many(source, destination, port, count - 1,
                                            protocol=protocol, family=family,
                                            timeout=TIMEOUT, state=self.state)
        bad = [o for o in rest if o.result != "connected" or not o.peer]
        assert not bad, f"{source} -> {destination} ({address} {port}/{protocol}): {bad[0]}"
        return [first.peer or ""] + [o.peer or "" for o in rest]

    def until_seen(self, source: str, destination: str, port: int, *, family: int,
                   wanted: set[str], key: dict[str, str] | None = None) -> set[str]:
        """Connect until every one of WANTED answered (peers mapped through KEY, e.g. to
        their nodes), at most ATTEMPTS times; returns what was seen."""
        seen: set[str] = set()
        for _ in range(ATTEMPTS):
            peer = self.connect(source, destination, port, family=family).peer or ""
            seen.add(key.get(peer, peer) if key else peer)
            if wanted <= seen:
                break
        return seen


@pytest.fixture(scope="module", params=["bpf", "iptables"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    dataplane: str = request.param
    with running_lab(f"sv{dataplane[:3]}") as lab:
        lab.up("--dataplane", dataplane, "--routing", "vxlan", files=[MANIFEST])
        yield Cluster(lab, dataplane, lab.state())


# What the lab does for Services (independent of the agents' datapaths).

def test_probes_run_in_the_cgroup_of_their_source(cluster: Cluster) -> None:
    lab = cluster.lab.name
    expected = {
        "shop/client": names.pod_cgroup(lab, "node1", "shop", "client"),
        "shop/web-2": names.pod_cgroup(lab, "node2", "shop", "web-2"),
        "node/node2": names.node_host_cgroup(lab, "node2"),
        "external": names.outside_cgroup(lab, "external"),
    }
    for source, cgroup in expected.items():
        doc = cluster.lab.probe(source, "shop/loner", 8080)
        assert doc["cgroup"] == f"/{cgroup}", doc
        assert doc["result"] == "connected", doc
    shown = cluster.lab.run("exec", "node/node1", "--", "cat", "/proc/self/cgroup")
    assert f"0::/{names.node_host_cgroup(lab, 'node1')}\n" in shown.stdout, shown


def test_load_balancer_ips_and_the_routes_to_them(cluster: Cluster) -> None:
    rows = {row["name"]: row for row in cluster.lab.get("services")}
    lb_ips = {name: rows[name]["loadBalancerIPs"] for name in ("web-lb", "lb-deny", "lb-allow")}
    for ips in lb_ips.values():
        assert len(ips) == 2
        assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network("198.18.200.0/24")
        assert ipaddress.ip_address(ips[1]) in ipaddress.ip_network("fd00:97::/112")
    every = [ip for ips in lb_ips.values() for ip in ips]
    assert len(set(every)) == len(every), lb_ips
    assert rows["web"]["loadBalancerIPs"] == [] and rows["loner"]["loadBalancerIPs"] == []
    external = names.external_netns(cluster.lab.name)
    v4 = cluster.lab.nsexec(external, "ip", "-4", "route", "show", "198.18.200.0/24").stdout
    v6 = cluster.lab.nsexec(external, "ip", "-6", "route", "show", "fd00:97::/112").stdout
    assert "via 198.18.0.11 dev eth0" in v4 and "via fd00:ff::11 dev eth0" in v6
    node2 = names.node_netns(cluster.lab.name, "node2")
    routes = cluster.lab.nsexec(node2, "ip", "-4", "route", "show", "198.19.0.0/16").stdout
    assert "dev eth0" in routes


def test_node_port_targets_are_the_allocated_node_ports(cluster: Cluster) -> None:
    with open_datastore(cluster.state.paths.datastore_url) as datastore:
        allocated = node_port_allocation(datastore.snapshot().services())
    doc = cluster.lab.probe("external", "nodeport/node2/shop/web", 53, "--protocol", "UDP",
                            "--family", "6", "--timeout", "0.5")
    assert (doc["address"], doc["port"], doc["service_port"], doc["family"]) == \
        ("fd00:ff::12", allocated[("shop", "web", 1)], 53, 6), doc
    doc = cluster.lab.probe("external", "nodeport/node1/shop/web", 80, "--timeout", "0.5")
    assert (doc["address"], doc["port"]) == ("198.18.0.11", allocated[("shop", "web", 0)])
    bad = cluster.lab.run("probe", "external", "nodeport/node1/shop/loner", "80")
    assert bad.returncode == 1 and "no node port (it is of type ClusterIP)" in bad.stderr


# The Services themselves (need the agents' service datapaths).

@pytest.mark.parametrize("family", FAMILIES)
def test_cluster_ip_from_pods_and_nodes_same_node_and_across(cluster: Cluster,
                                                             family: int) -> None:
    assert cluster.node_of("loner") == "node1"
    for source in ("shop/client", "shop/web-2", "node/node1", "node/node2"):
        outcome = cluster.connect(source, "svc/shop/loner", 80, family=family)
        assert outcome.peer == "loner", (source, outcome)
        if source.startswith("shop/"):
            pod = source.removeprefix("shop/")
            assert outcome.client_ip == cluster.pod_ip(pod, family), (source, outcome)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_ports_and_load_balancer_reach_backends_on_both_nodes(cluster: Cluster,
                                                                   family: int) -> None:
    nodes = {pod: cluster.node_of(pod) for pod in WEB}
    for destination in ("nodeport/node1/shop/web", "nodeport/node2/shop/web",
                        "lb/shop/web-lb"):
        seen = cluster.until_seen("external", destination, 80, family=family,
                                  wanted={"node1", "node2"}, key=nodes)
        assert seen == {"node1", "node2"}, (destination, seen)


@pytest.mark.parametrize("family", FAMILIES)
def test_hairpin(cluster: Cluster, family: int) -> None:
    outcome = cluster.connect("shop/loner", "svc/shop/loner", 80, family=family)
    assert outcome.peer == "loner"


@pytest.mark.parametrize("family", FAMILIES)
def test_udp(cluster: Cluster, family: int) -> None:
    for source, destination in (("shop/client", "svc/shop/web"), ("node/node2", "svc/shop/web"),
                                ("external", "nodeport/node1/shop/web")):
        outcome = cluster.connect(source, destination, 53, family=family, protocol="UDP")
        assert outcome.peer in WEB, (source, destination, outcome)
    outcome = cluster.connect("shop/client", "svc/shop/web", 53, family=family,
                              protocol="UDP")
    assert outcome.client_ip == cluster.pod_ip("client", family)


def test_ipv6_only_and_dual_stack_services(cluster: Cluster) -> None:
    rows = {row["name"]: row for row in cluster.lab.get("services")}
    assert [ipaddress.ip_address(ip).version for ip in rows["web-v6"]["clusterIPs"]] == [6]
    assert [ipaddress.ip_address(ip).version for ip in rows["web"]["clusterIPs"]] == [4, 6]
    assert cluster.connect("shop/client", "svc/shop/web-v6", 80, family=6).peer in WEB
    for family in FAMILIES:
        address, outcome = cluster.probe("shop/client", "svc/shop/web", 80, family=family)
        assert address == rows["web"]["clusterIPs"][FAMILIES.index(family)]
        assert outcome.result == "connected" and outcome.peer in WEB, (address, outcome)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_backend_is_used(cluster: Cluster, family: int) -> None:
    peers = cluster.peers("shop/client", "svc/shop/web", 80, family=family, count=30)
    assert set(peers) == WEB, sorted(peers)


def test_every_backend_is_used_cli(cluster: Cluster) -> None:
    doc = cluster.lab.probe("shop/client", "svc/shop/web", 80, "--count", "30", "--timeout",
                            "0.5")
    assert doc["count"] == 30 and len(doc["probes"]) == 30
    assert doc["results"] == {"connected": 30}, doc["results"]
    assert set(doc["peers"]) == WEB and sum(doc["peers"].values()) == 30, doc["peers"]


@pytest.mark.parametrize("family", FAMILIES)
def test_external_traffic_policy_local_keeps_the_client_address(cluster: Cluster,
                                                                 family: int) -> None:
    node = cluster.node_of("solo")
    outcome = cluster.connect("external", f"nodeport/{node}/shop/local", 80, family=family)
    assert (outcome.peer, outcome.client_ip) == ("solo", EXTERNAL[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_no_endpoints_is_refused_at_once(cluster: Cluster, family: int) -> None:
    for source, destination in (("shop/client", "svc/shop/empty"),
                                ("external", "nodeport/node1/shop/empty"),
                                ("external", "nodeport/node2/shop/empty")):
        address, outcome = cluster.probe(source, destination, 80, family=family)
        assert outcome.result == "refused", (source, destination, address, outcome)
        assert outcome.latency_ms is not None and outcome.latency_ms < 300, \
            (source, destination, address, outcome)


@pytest.mark.parametrize("family", FAMILIES)
def test_session_affinity_client_ip_sticks(cluster: Cluster, family: int) -> None:
    peers = cluster.peers("shop/client", "svc/shop/sticky", 80, family=family, count=10)
    assert len(set(peers)) == 1, peers


@pytest.mark.parametrize("family", FAMILIES)
def test_load_balancer_source_ranges(cluster: Cluster, family: int) -> None:
    allowed = cluster.connect("external", "lb/shop/lb-allow", 80, family=family)
    assert allowed.peer in WEB
    address, denied = cluster.probe("external", "lb/shop/lb-deny", 80, family=family,
                                    timeout=0.5)
    assert denied.result != "connected", (address, denied)


@pytest.mark.parametrize("family", FAMILIES)
def test_named_target_port_per_pod(cluster: Cluster, family: int) -> None:
    """targetPort "http" is 8080 on web-1 and 9090 on alt: both answer."""
    seen = cluster.until_seen("shop/client", "svc/shop/named", 80, family=family,
                              wanted={"web-1", "alt"})
    assert seen == {"web-1", "alt"}, seen
