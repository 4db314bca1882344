"""`sluice bpf ct|nat|routes|endpoints|counters` decode what a live bpf lab holds: an
outside client's NodePort flows in conntrack and as translations, the route table with
hits moving as cross-node traffic flows, the local endpoints, the counters; filters and
flush; bad input refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest

pytestmark = pytest.mark.root

EXTERNAL = "198.18.0.250"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifest = write_manifest(tmp_path_factory.mktemp("dumps") / "dumps.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "d"}},
        pod("client", namespace="d", node="node1"),
        pod("web", namespace="d", node="node2", labels={"app": "web"}),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
         "spec": {"type": "NodePort", "selector": {"app": "web"},
                  "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}}])
    with running_lab("dumps") as running:
        ok(running.up("--dataplane", "bpf", "--ip-family", "ipv4", files=[manifest]))
        yield running


def dump(lab: Lab, *args: str) -> Any:
    return json.loads(ok(sluice("bpf", *args, "--lab", lab.name, "--node", "node1",
                                "-o", "json")).stdout)


def web_ip(lab: Lab) -> str:
    rows = json.loads(ok(lab.run("get", "pods", "-o", "json")).stdout)
    return str(next(r for r in rows if r["name"] == "web")["ips"][0])


def nodeport_flows(lab: Lab, count: int) -> None:
    answers = lab.probe("external", "nodeport/node1/d/web", 80, "--count", str(count))
    assert answers["results"] == {"connected": count}, answers


def test_conntrack_and_nat_show_the_nodeport_flows_of_an_outside_client(lab: Lab) -> None:
    nodeport_flows(lab, 5)
    rows = dump(lab, "ct", "list", "--address", EXTERNAL)
    forward = [r for r in rows if r["kind"] == "dnat"]
    assert len(forward) >= 5
    backend = f"{web_ip(lab)}:8080"
    assert all(r["nat"] == backend and r["destination"] == "198.18.0.11:30080"
               and r["source"].startswith(EXTERNAL) and r["protocol"] == "TCP"
               and r["packets"] >= 1 for r in forward)
    translations = dump(lab, "nat", "list")
    assert {r["source"] for r in forward} <= {t["source"] for t in translations}
    narrowed = dump(lab, "ct", "list", "--address", EXTERNAL, "--port", "30080",
                    "--kind", "dnat")
    assert {r["source"] for r in narrowed} == {r["source"] for r in forward}
    assert all(r["kind"] == "reply-snat" for r in dump(lab, "ct", "list", "--kind",
                                                        "reply-snat"))
    assert dump(lab, "ct", "list", "--address", "203.0.113.0/24") == []
    assert dump(lab, "ct", "list", "--protocol", "UDP", "--address", EXTERNAL) == []
    text = ok(sluice("bpf", "nat", "list", "--lab", lab.name, "--node", "node1")).stdout
    assert backend in text and "translations" in text


def test_flush_deletes_what_the_filter_keeps(lab: Lab) -> None:
    nodeport_flows(lab, 3)
    before = dump(lab, "ct", "list", "--address", EXTERNAL)
    assert before
    flushed = dump(lab, "ct", "flush", "--address", EXTERNAL)
    assert flushed["deleted"] >= len(before)
    assert dump(lab, "ct", "list", "--address", EXTERNAL) == []
    nodeport_flows(lab, 2)  # the service works on after a flush
    assert dump(lab, "ct", "list", "--address", EXTERNAL)


def test_routes_list_counts_hits_as_cross_node_traffic_flows(lab: Lab) -> None:
    def remote() -> dict[str, Any]:
        rows = dump(lab, "routes", "list")
        return next(r for r in rows if r["cidr"] == "198.18.18.0/24")

    kinds = {r["cidr"]: r["kind"] for r in dump(lab, "routes", "list")}
    assert kinds["198.18.17.0/24"] == "local-pods"
    assert remote()["kind"] in ("remote-tunnel", "remote-native")
    assert remote()["nextHop"] == "198.18.0.12"
    before = remote()["hits"]
    answers = lab.probe("d/client", "d/web", 8080, "--count", "5")
    assert answers["results"] == {"connected": 5}, answers
    deadline = time.monotonic() + 5
    while remote()["hits"] <= before:
        assert time.monotonic() < deadline, "route hits did not move"
        time.sleep(0.1)


def test_endpoints_and_counters_decode(lab: Lab) -> None:
    client_ip = next(r for r in json.loads(ok(lab.run("get", "pods", "-o", "json")).stdout)
                     if r["name"] == "client")["ips"][0]
    endpoints = {r["address"]: r for r in dump(lab, "endpoints", "list")}
    assert client_ip in endpoints
    mine = endpoints[client_ip]
    assert mine["ifindex"] > 0 and mine["identity"] > 0 and "pod" in mine["flags"]
    assert mine["hostMac"] != "00:00:00:00:00:00"
    counters = dump(lab, "counters")
    assert {"drop_denied", "pass_new_flow", "drop_prefilter"} <= set(counters["policy"])
    assert counters["routeHits"] >= 1
    forwarded = {c["hook"]: c["packets"] for c in counters["datapath"] if c["reason"] == "none"}
    assert forwarded["from_endpoint"] >= 1 and forwarded["from_network"] >= 1
    assert set(counters["flowEvents"]) == {"sent", "lost_ring_full", "rate_limited",
                                           "sampled_out"}
    assert counters["flowEvents"]["sent"] >= 1
    text = ok(sluice("bpf", "counters", "--lab", lab.name, "--node", "node1")).stdout
    assert "policy drop_denied" in text and "route hits" in text
    assert "from_endpoint forwarded" in text and "flow events sent" in text


def test_bad_input_is_refused_with_the_reason() -> None:
    bad_port = sluice("bpf", "ct", "list", "--node", "n1", "--port", "70000")
    assert bad_port.returncode == 2 and "not a port (1-65535): '70000'" in bad_port.stderr
    bad_cidr = sluice("bpf", "ct", "flush", "--node", "n1", "--address", "10.0.0.0/33")
    assert bad_cidr.returncode == 2 and "not an IP address or CIDR" in bad_cidr.stderr
    no_node = sluice("bpf", "routes", "list")
    assert no_node.returncode == 2 and "say which node" in no_node.stderr
    missing = sluice("bpf", "endpoints", "list", "--pin-dir", "/sys/fs/bpf/sluice-nope-x")
    assert missing.returncode == 1 and "sluice bpf endpoints list:" in missing.stderr
