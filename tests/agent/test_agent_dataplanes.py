"""Real agents on two nodes, pods wired by sluice-cni while they run: what each dataplane
programs for a pod, that it goes again after DEL, and real traffic between the pods."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from pyroute2 import IPRoute

from sluice import netlink, netns
from sluice.apply.routes import ROUTE_PROTOCOL
from sluice.datapath.routing import RouteKind
from tests.agent.harness import ClusterNode, MiniCluster, Pod, wait_for
from tests.conftest import Side, tcp_connects, udp_delivered

pytestmark = pytest.mark.root

NUD_PERMANENT = 0x80


def start_both(cluster: MiniCluster, dataplane: str, routing: str) -> None:
    cluster.publish()
    for node in cluster.nodes:
        cluster.start_agent(node, dataplane=dataplane, routing=routing, wait=False)
    for agent in cluster.agents:
        agent.wait_healthy()


def endpoint_count(cluster: MiniCluster, node: ClusterNode, count: int) -> None:
    agent = next(a for a in cluster.agents if a.node is node)
    agent.wait_reconciled(lambda s: len(s.get("endpoints", [])) == count,
                          what=f"{count} endpoints on {node.name}")


def host_side(node: ClusterNode) -> Side:
    v4, v6 = node.internal_ips
    return Side(node.ns, node.uplink, ipaddress.IPv4Address(v4), ipaddress.IPv6Address(v6))


def assert_traffic(pairs: list[tuple[str, Side, Side]]) -> None:
    failed = [f"{proto} {name} IPv{family}"
              for name, client, server in pairs for family in (4, 6)
              for proto, ok in (("UDP", udp_delivered(client, server, family, timeout=2.0)),
                                ("TCP", tcp_connects(client, server, family, timeout=2.0)))
              if not ok]
    assert not failed, f"no traffic: {failed}"


def pod_pairs(a: Pod, b: Pod, c: Pod, n1: ClusterNode) -> list[tuple[str, Side, Side]]:
    return [("a->b (same node)", a.side, b.side), ("a->c (across)", a.side, c.side),
            ("c->b (across)", c.side, b.side), ("n1->a (host to pod)", host_side(n1), a.side),
            ("n1->c (host to remote pod)", host_side(n1), c.side)]


# --- bpf mode --------------------------------------------------------------------------


def test_bpf_pod_add_and_del_program_maps_and_links(cluster: MiniCluster) -> None:
    start_both(cluster, "bpf", "vxlan")
    n1, _ = cluster.nodes
    routes = n1.routes_map()
    vxlan = netlink.ifindex(n1.ns, "sl-vxlan")
    assert {cidr: (e.kind, e.ifindex) for cidr, e in routes.items()} == {
        "198.18.16.0/24": (RouteKind.LOCAL_PODS, 0), "fd00:10:1::/64": (RouteKind.LOCAL_PODS, 0),
        "198.18.17.0/24": (RouteKind.REMOTE_TUNNEL, vxlan),
        "fd00:10:2::/64": (RouteKind.REMOTE_TUNNEL, vxlan),
    }
    assert str(routes["fd00:10:2::/64"].next_hop.to_ip()) == "198.18.0.12"
    # No deny list and no doNotTrack policy: no XDP on the uplink (it would turn off
    # segmentation offload of the veth's peer for nothing).
    assert n1.link_pins() == {"from_network@sl-vxlan", "from_network@uplink0", "from_host@sl-host",
                              "to_network@uplink0"}

    pod = n1.add_pod("a")
    endpoint_count(cluster, n1, 1)
    entries = n1.endpoints_map()
    assert set(entries) == {str(pod.side.ipv4), str(pod.side.ipv6)}
    info = entries[str(pod.side.ipv4)]
    assert info.ifindex == netlink.ifindex(n1.ns, pod.host_ifname)
    assert bytes(info.mac).hex(":") == netlink.link_mac(pod.ns, "eth0")
    assert bytes(info.host_mac).hex(":") == netlink.link_mac(n1.ns, pod.host_ifname)
    assert f"from_endpoint@{pod.host_ifname}" in n1.link_pins()
    assert len(n1.tcx_programs(pod.host_ifname)) == 1

    n1.delete_pod(pod)
    endpoint_count(cluster, n1, 0)
    wait_for(lambda: n1.endpoints_map() == {}, what="the endpoint entries to go")
    assert n1.link_pins() == {"from_network@sl-vxlan", "from_network@uplink0", "from_host@sl-host",
                              "to_network@uplink0"}

    # A deny list brings the prefilter; without one it goes again.
    cluster.write("denylist.yaml", {"apiVersion": "sluice.io/v1", "kind": "PrefilterDenyList",
                                    "metadata": {"name": "bad"},
                                    "spec": {"cidrs": ["198.18.66.0/24"]}})
    wait_for(lambda: "prefilter_xdp@uplink0" in n1.link_pins(), what="the prefilter link")
    (cluster.datastore / "denylist.yaml").unlink()
    wait_for(lambda: "prefilter_xdp@uplink0" not in n1.link_pins(),
             what="the prefilter link to go")


@pytest.mark.parametrize("routing", ["vxlan", "native"])
def test_bpf_pods_reach_each_other(cluster: MiniCluster, routing: str) -> None:
    start_both(cluster, "bpf", routing)
    n1, n2 = cluster.nodes
    a, b, c = n1.add_pod("a"), n1.add_pod("b"), n2.add_pod("c")
    endpoint_count(cluster, n1, 2)
    endpoint_count(cluster, n2, 1)
    assert_traffic(pod_pairs(a, b, c, n1))
    hits = {cidr: e.hits for cidr, e in n1.routes_map().items()}
    assert hits["198.18.17.0/24"] > 0 and hits["fd00:10:2::/64"] > 0, hits


# --- iptables mode ---------------------------------------------------------------------


def kernel_view(node: ClusterNode) -> dict[str, Any]:
    """Sluice's routes (dst -> device name) and the permanent neighbours, by device."""
    with netns.entered(node.ns), IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        routes = {f"{r.get_attr('RTA_DST')}/{r['dst_len']}": names.get(r.get_attr("RTA_OIF"))
                  for family in (socket.AF_INET, socket.AF_INET6)
                  for r in ipr.get_routes(family=family, table=254)
                  if r["proto"] == ROUTE_PROTOCOL}
        neighbours = {(names.get(n["ifindex"]), n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                      for n in ipr.get_neighbours() if n["state"] & NUD_PERMANENT}
        fdb = {(f.get_attr("NDA_LLADDR"), f.get_attr("NDA_DST")) for f in ipr.fdb("dump")
               if names.get(f["ifindex"]) == "sl-vxlan" and f.get_attr("NDA_DST")}
    return {"routes": routes, "neighbours": neighbours, "fdb": fdb}


def test_iptables_pod_routes_and_neighbours_come_and_go(cluster: MiniCluster) -> None:
    start_both(cluster, "iptables", "vxlan")
    n1, n2 = cluster.nodes
    before = kernel_view(n1)
    assert before["routes"] == {"198.18.17.0/24": "sl-vxlan", "fd00:10:2::/64": "sl-vxlan"}
    n2_mac = netlink.link_mac(n2.ns, "sl-vxlan")
    assert before["fdb"] == {(n2_mac, "198.18.0.12")}
    assert {("sl-vxlan", "198.18.17.0", n2_mac), ("sl-vxlan", "fd00:10:2::", n2_mac)} \
        <= before["neighbours"]

    pod = n1.add_pod("a")
    endpoint_count(cluster, n1, 1)
    view = kernel_view(n1)
    pod_mac = netlink.link_mac(pod.ns, "eth0")
    assert view["routes"][f"{pod.side.ipv4}/32"] == pod.host_ifname
    assert view["routes"][f"{pod.side.ipv6}/128"] == pod.host_ifname
    assert {(pod.host_ifname, str(pod.side.ipv4), pod_mac),
            (pod.host_ifname, str(pod.side.ipv6), pod_mac)} <= view["neighbours"]
    assert not n1.link_pins(), "iptables mode attaches no programs"

    n1.delete_pod(pod)
    endpoint_count(cluster, n1, 0)
    assert kernel_view(n1)["routes"] == before["routes"]

    # The peer leaves the cluster: the agent removes everything that led to it.
    (cluster.datastore / "node.n2.yaml").unlink()
    wait_for(lambda: kernel_view(n1) == {"routes": {}, "neighbours": set(), "fdb": set()},
             what="the routes, neighbours and forwarding entries toward n2 to go")


@pytest.mark.parametrize("routing", ["vxlan", "native"])
def test_iptables_pods_reach_each_other(cluster: MiniCluster, routing: str) -> None:
    start_both(cluster, "iptables", routing)
    n1, n2 = cluster.nodes
    a, b, c = n1.add_pod("a"), n1.add_pod("b"), n2.add_pod("c")
    endpoint_count(cluster, n1, 2)
    endpoint_count(cluster, n2, 1)
    assert_traffic(pod_pairs(a, b, c, n1))
