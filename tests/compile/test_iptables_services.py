"""iptables mode services: the kube-proxy-shaped rules, and that iptables accepts them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from sluice import netns
from sluice.compile.iptables_services import service_rules
from sluice.compile.services import service_table
from tests.compile.test_services import PODS, SLICES, WEB, state
from tests.conftest import unique

EMPTY = """
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 198.19.0.30
  selector: {app: nobody}
  ports: [{port: 80}]
"""


def rules(version: int, node: str = "n1") -> str:
    return service_rules(service_table(state(PODS, WEB, SLICES, EMPTY), node), version).text


def chain_of(text: str, match: str) -> str:
    line = next(line for line in text.splitlines() if match in line)
    return line.rsplit("-j ", 1)[1]


def test_cluster_ip_spreads_over_backends_with_kube_proxy_probabilities() -> None:
    text = rules(4)
    svc = chain_of(text, "-d 198.19.0.10/32 -m comment --comment \"shop/web:http ClusterIP\"")
    svc_rules = [line for line in text.splitlines() if line.startswith(f"-A {svc} ")]
    assert len(svc_rules) == 2
    assert "--probability 0.50000000000" in svc_rules[0]
    assert "statistic" not in svc_rules[1]
    seps = [r.rsplit("-j ", 1)[1] for r in svc_rules]
    dnat = {line.rsplit(" ", 1)[1] for line in text.splitlines()
            if any(line.startswith(f"-A {sep} ") for sep in seps) and "DNAT" in line}
    assert dnat == {"198.18.16.2:8080", "198.18.17.2:9090"}


def test_families_are_separate_and_ipv6_endpoints_are_bracketed() -> None:
    text = rules(6)
    assert "198.19" not in text
    assert "--to-destination [fd00:10:1::2]:8080" in text


def test_no_backends_is_rejected_in_the_filter_table() -> None:
    filter_part = rules(4).split("*filter", 1)[1]
    assert "-d 198.19.0.30/32" in filter_part and "REJECT" in filter_part


def test_source_ranges_and_affinity() -> None:
    text = rules(4)
    firewall = chain_of(text, "-d 198.19.255.1/32")
    assert firewall.startswith("SLUICE-FW-")
    assert f"-A {firewall} -s 198.18.0.0/24 -j SLUICE-EXT-" in text
    assert "-m recent --name SLUICE-SEP-" in text and "--seconds 10800 --reap" in text


def test_node_ports_only_for_local_destinations() -> None:
    text = rules(4)
    assert "-A SLUICE-NODEPORTS -d 198.18.0.11/32" in text
    assert "-A SLUICE-SERVICES -m addrtype --dst-type LOCAL -j SLUICE-NODEPORTS" in text


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    ns = unique("sl-tipt")
    netns.create(ns)
    try:
        yield ns
    finally:
        netns.remove(ns)


@pytest.mark.root
@pytest.mark.parametrize("version", [4, 6])
def test_iptables_restore_accepts_the_rules(scratch_ns: str, version: int) -> None:
    tool = "iptables-restore" if version == 4 else "ip6tables-restore"
    assert shutil.which(tool), f"{tool} is not installed"
    done = subprocess.run(["nsenter", f"--net={netns.netns_path(scratch_ns)}", tool, "--test"],
                          input=rules(version), capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
