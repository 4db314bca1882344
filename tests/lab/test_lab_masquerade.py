"""Masquerade end to end: a lab whose agents masquerade (`lab up --masquerade`), pods
talking to a server in `external`, in bpf mode (the datapath SNATs) and iptables mode
(a SLUICE-MASQ MASQUERADE chain).

`external` answers from two addresses: 198.18.0.250 (masqueraded: the server sees the
node) and 198.18.0.251, given as a non-masquerade CIDR (the server sees the pod).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest

pytestmark = pytest.mark.root

PORT = 9090
MASQUERADED = {4: "198.18.0.250", 6: "fd00:ff::250"}
KEPT = "198.18.0.251"  # a second address of external, in --non-masquerade-cidrs
SERVER_READY_TIMEOUT = 30


@contextmanager
def external_server(lab: Lab) -> Iterator[None]:
    """The lab's pod server, run in `external` on PORT (TCP and UDP): it answers with
    the client address it saw."""
    netns_name = lab.state().plan.external.netns
    lab.nsexec(netns_name, "ip", "address", "add", f"{KEPT}/24", "dev", "eth0")
    read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.lab.podserver", "--pod", "external", "--netns",
         netns_name, "--port", f"{PORT}/TCP", "--port", f"{PORT}/UDP",
         "--ready-fd", str(write)],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as ready:
            assert ready.read(5) == b"ready", "the external server did not start"
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def client_ip(lab: Lab, source: str, address: str, protocol: str) -> str:
    doc = lab.probe(source, address, PORT, "--protocol", protocol, "--timeout", "3")
    assert doc["result"] == "connected", doc
    assert doc["peer"] == "external", doc
    return str(doc["client_ip"])


def nat_rules(lab: Lab, node_netns: str) -> str:
    return "".join(lab.nsexec(node_netns, tool, "-t", "nat").stdout
                   for tool in ("iptables-save", "ip6tables-save"))


@pytest.mark.parametrize(("dataplane", "routing"),
                         [("bpf", "vxlan"), ("bpf", "native"), ("iptables", "vxlan")])
def test_pods_reach_external_as_their_node(tmp_path: Path, dataplane: str,
                                           routing: str) -> None:
    manifest = write_manifest(tmp_path / "pods.yaml", [
        pod("a", node="node1"), pod("b", node="node2")])
    with running_lab("masq") as lab:
        lab.up("--dataplane", dataplane, "--routing", routing, "--masquerade",
               "--non-masquerade-cidrs",
               f"{KEPT}/32,169.254.0.0/16,fe80::/10", files=[manifest])
        plan = lab.state().plan
        node1 = plan.node("node1")
        node_ip = {4: node1.addresses[0], 6: node1.addresses[1]}
        pods = {row["name"]: row for row in lab.get("pods")}
        with external_server(lab):
            for family, address in MASQUERADED.items():
                for protocol in ("TCP", "UDP"):
                    seen = client_ip(lab, "default/a", address, protocol)
                    assert seen == node_ip[family], (
                        f"{protocol} over IPv{family}: external saw {seen}")
            for protocol in ("TCP", "UDP"):
                assert client_ip(lab, "default/a", KEPT, protocol) in pods["a"]["ips"]
            # Within the cluster, pod addresses stay.
            doc = lab.probe("default/a", "default/b", 8080)
            assert doc["client_ip"] in pods["a"]["ips"], doc
            # From outside straight to a pod (the fabric routes pod CIDRs): the pod's
            # answers keep its address, or the client would drop them.
            doc = lab.probe("external", "default/a", 8080)
            assert doc["result"] == "connected", doc

        rules = nat_rules(lab, node1.netns)
        if dataplane == "bpf":
            assert "MASQUERADE" not in rules, rules
            listed = ok(sluice("bpf", "masq", "list", "--lab", lab.name, "--node", "node1",
                               "-o", "json"))
            flows = json.loads(listed.stdout)
            translated = {(f["protocol"], f["peer"], f["node"]) for f in flows
                          if f["pod"] in pods["a"]["ips"] and not f["inbound"]}
            assert {("TCP", MASQUERADED[4], node_ip[4]), ("UDP", MASQUERADED[6], node_ip[6])} \
                <= translated, flows
            assert any(f["inbound"] and f["peer"] == plan.external.addresses[0]
                       for f in flows), flows
        else:
            assert "-A SLUICE-MASQ -d 198.18.0.251/32 -j RETURN" in rules, rules
            assert "-j MASQUERADE --random-fully" in rules, rules
