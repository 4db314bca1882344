"""The agent restarts between a pod's ADD and DEL (issue 3, CNI item): pinned maps and
links keep forwarding while it is down, a new agent adopts them without a gap or a second
attachment, and a DEL that happened while it was down is cleaned up when it is back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute

from sluice import netns
from sluice.apply.routes import ROUTE_PROTOCOL
from sluice.loader import Direction, Link
from tests.agent.harness import Agent, ClusterNode, MiniCluster, Pod, wait_for
from tests.conftest import tcp_connects, udp_delivered
from tests.datagrams import UdpFlow

pytestmark = pytest.mark.root


def link_ids(node: ClusterNode) -> dict[str, int]:
    ids = {}
    for name in node.link_pins():
        link = Link.from_pin(f"{node.pin_dir}/links/{name}")
        try:
            ids[name] = link.info().link_id
        finally:
            link.close()
    return ids


def flows(a: Pod, c: Pod) -> bool:
    return all(udp_delivered(x.side, y.side, family, timeout=2.0)
               and tcp_connects(x.side, y.side, family, timeout=2.0)
               for x, y in ((a, c), (c, a)) for family in (4, 6))


def test_agent_restart_between_add_and_del(cluster: MiniCluster) -> None:
    cluster.publish()
    n1, n2 = cluster.nodes
    agent: Agent = cluster.start_agent(n1)
    cluster.start_agent(n2)
    a, c = n1.add_pod("a"), n2.add_pod("c")
    agent.wait_reconciled(lambda s: len(s["endpoints"]) == 1, what="pod a's endpoint")
    cluster.agents[1].wait_reconciled(lambda s: len(s["endpoints"]) == 1, what="pod c")
    assert flows(a, c)
    pins, ids = n1.link_pins(), link_ids(n1)
    assert pins == {f"from_endpoint@{a.host_ifname}", "from_network@sl-vxlan",
                    "from_network@uplink0", "from_host@sl-host", "to_network@uplink0"}
    programs_before = n1.tcx_programs(a.host_ifname)

    with UdpFlow(a.ns, c.ns, str(c.side.ipv4), port=7300) as stream:
        time.sleep(0.3)
        assert agent.stop() == 0
        assert flows(a, c), "pinned maps and links forward while the agent is down"

        agent = cluster.start_agent(n1)  # waits for a healthy reconcile
        time.sleep(0.3)
    assert stream.sent > 100
    assert stream.lost == 0, f"{stream.lost} of {stream.sent} datagrams lost over the restart"
    assert link_ids(n1) == ids, "the pinned links were adopted, not replaced"
    programs_after = n1.tcx_programs(a.host_ifname)
    assert len(programs_after) == 1 and programs_after != programs_before, \
        "one attachment, now running the new agent's program"
    assert len(n1.tcx_programs("sl-vxlan")) == 1
    assert len(n1.tcx_programs("sl-host", Direction.EGRESS)) == 1
    hits = n1.routes_map()["198.18.17.0/24"].hits
    assert hits >= stream.sent, "route counters survive the restart"
    assert flows(a, c)

    # DEL while the agent is down: its entries and link stay until it is back.
    assert agent.stop() == 0
    n1.delete_pod(a)
    assert set(n1.endpoints_map()) == {str(a.side.ipv4), str(a.side.ipv6)}
    assert f"from_endpoint@{a.host_ifname}" in n1.link_pins()
    agent = cluster.start_agent(n1)
    wait_for(lambda: n1.endpoints_map() == {}, what="the deleted pod's entries to go")
    assert n1.link_pins() == {"from_network@sl-vxlan", "from_network@uplink0", "from_host@sl-host",
                              "to_network@uplink0"}
    # One log line says what changed: +added ~changed (for links: adopted) -removed.
    assert "endpoints -2, links ~4 -1" in agent.log_text()
    b = n1.add_pod("b")
    agent.wait_reconciled(lambda s: len(s["endpoints"]) == 1, what="pod b's endpoint")
    assert flows(b, c)


def test_uninstall_removes_what_the_agent_made(cluster: MiniCluster) -> None:
    cluster.publish()
    n1, _ = cluster.nodes
    agent = cluster.start_agent(n1)
    pod = n1.add_pod("a")
    agent.wait_reconciled(lambda s: len(s["endpoints"]) == 1, what="pod a's endpoint")
    assert agent.stop() == 0
    assert len(n1.tcx_programs(pod.host_ifname)) == 1, "still attached while stopped"

    result = subprocess.run(
        [sys.executable, "-m", "sluice", "agent", "--node", n1.name, "--netns", n1.ns,
         "--pin-dir", n1.pin_dir, "--cni-state-dir", str(n1.state_dir), "--uninstall"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "links: 5 detached and unpinned" in result.stdout
    assert not os.path.exists(n1.pin_dir)
    assert n1.tcx_programs(pod.host_ifname) == []
    links = netlink_names(n1)
    assert "sl-host" not in links and "sl-vxlan" not in links and pod.host_ifname in links
    assert own_route_count(n1) == 0


def test_iptables_mode_removes_links_a_bpf_agent_left(cluster: MiniCluster) -> None:
    cluster.publish()
    n1, _ = cluster.nodes
    agent = cluster.start_agent(n1)
    pod = n1.add_pod("a")
    agent.wait_reconciled(lambda s: len(s["endpoints"]) == 1, what="pod a's endpoint")
    assert agent.stop() == 0
    cluster.start_agent(n1, dataplane="iptables")
    assert n1.link_pins() == set()
    assert n1.tcx_programs(pod.host_ifname) == []
    assert "sl-host" not in netlink_names(n1)


def netlink_names(node: ClusterNode) -> set[str]:
    with netns.entered(node.ns), IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def own_route_count(node: ClusterNode) -> int:
    with netns.entered(node.ns), IPRoute() as ipr:
        return sum(1 for family in (socket.AF_INET, socket.AF_INET6)
                   for r in ipr.get_routes(family=family, table=254)
                   if r["proto"] == ROUTE_PROTOCOL)
