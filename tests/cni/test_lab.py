"""`sluice-cni` run as a runtime runs it, inside a test node namespace, against real pods."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from sluice import netns
from sluice.cni.podnet import IFA_F_NODAD, NUD_PERMANENT, RTNH_F_ONLINK
from sluice.cni.registry import EndpointRecord, list_records
from tests.cni.conftest import V4_RANGE, V6_RANGE, Node, root_link_names
from tests.conftest import Side, udp_delivered

pytestmark = pytest.mark.root

HOST_MTU = 1450


@dataclass
class PodView:
    mac: str
    mtu: int
    up: bool
    lo_up: bool
    addresses: set[str]
    routes: set[tuple[str, str, bool]]
    neighbours: dict[str, tuple[str, bool]]


def view_pod(pod: str, ifname: str = "eth0") -> PodView:
    with netns.entered(pod), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        link = ipr.get_links(index)[0]
        lo = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
        addresses = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                     for a in ipr.get_addr(index=index) if a["scope"] == 0}
        routes = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family):
                if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY"):
                    dst = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
                    routes.add((dst, r.get_attr("RTA_GATEWAY"), bool(r["flags"] & RTNH_F_ONLINK)))
        neighbours = {n.get_attr("NDA_DST"): (n.get_attr("NDA_LLADDR"),
                                              bool(n["state"] & NUD_PERMANENT))
                      for n in ipr.get_neighbours(ifindex=index)}
        return PodView(
            mac=link.get_attr("IFLA_ADDRESS"),
            mtu=link.get_attr("IFLA_MTU"),
            up=bool(link["flags"] & 1),
            lo_up=bool(lo["flags"] & 1),
            addresses=addresses,
            routes=routes,
            neighbours=neighbours,
        )


def host_routes(node: Node, oif: int) -> set[str]:
    """Main-table routes through OIF in the node namespace."""
    with netns.entered(node.ns), IPRoute() as ipr:
        return {f"{r.get_attr('RTA_DST') or 'default'}/{r['dst_len']}"
                for family in (socket.AF_INET, socket.AF_INET6)
                for r in ipr.get_routes(family=family, table=254)
                if r.get_attr("RTA_OIF") == oif}


def test_version(node: Node) -> None:
    doc = node.invoke("VERSION", b'{"cniVersion": "1.1.0"}', ifname=None).ok()
    assert doc == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    assert node.invoke("VERSION", b"", ifname=None).ok()["supportedVersions"]


def test_add_dual_stack(node: Node) -> None:
    pod = node.pod()
    result = node.add("c-dual", pod, cni_args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                                              "K8S_POD_NAME=web-0").ok()

    host_iface, pod_iface = result["interfaces"]
    assert result["cniVersion"] == "1.0.0"
    assert host_iface["name"].startswith("sl") and len(host_iface["name"]) == 13
    assert "sandbox" not in host_iface
    assert pod_iface == {"name": "eth0", "mac": pod_iface["mac"], "sandbox": pod}
    assert result["ips"] == [
        {"address": "198.18.16.2/32", "gateway": "169.254.1.1", "interface": 1},
        {"address": "fd00:10:1::2/128", "gateway": "fe80::1", "interface": 1},
    ]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                                {"dst": "::/0", "gw": "fe80::1"}]
    assert result["dns"] == {}

    view = view_pod(pod)
    assert view.mac == pod_iface["mac"] and view.mtu == HOST_MTU and view.up and view.lo_up
    assert view.addresses == {"198.18.16.2/32", "fd00:10:1::2/128"}
    assert view.routes == {("0.0.0.0/0", "169.254.1.1", True), ("::/0", "fe80::1", True)}
    assert view.neighbours["169.254.1.1"] == (host_iface["mac"], True)
    assert view.neighbours["fe80::1"] == (host_iface["mac"], True)

    host = node.links()[host_iface["name"]]
    assert host.get_attr("IFLA_ADDRESS") == host_iface["mac"]
    assert host.get_attr("IFLA_MTU") == HOST_MTU and host["flags"] & 1
    assert host_iface["name"] not in root_link_names()
    assert host_routes(node, host["index"]) <= {"fe80::/64"}, "the plugin adds no host routes"

    assert node.allocated() == {"198.18.16.2": "c-dual eth0", "fd00:10:1::2": "c-dual eth0"}
    [record_file] = node.record_files()
    assert record_file.name == "c-dual-eth0.json"
    record = EndpointRecord.from_json(record_file.read_text())
    assert (record.pod_namespace, record.pod_name, record.netns) == ("default", "web-0", pod)
    assert record.host_ifname == host_iface["name"] and record.host_ifindex == host["index"]
    assert (record.host_mac, record.pod_mac) == (host_iface["mac"], pod_iface["mac"])
    assert (record.ipv4, record.ipv6) == (IPv4Address("198.18.16.2"), IPv6Address("fd00:10:1::2"))
    assert record.mtu == HOST_MTU


@pytest.mark.parametrize(("ranges", "expected"), [
    ([[V4_RANGE]], {"198.18.16.2/32"}),
    ([[V6_RANGE]], {"fd00:10:1::2/128"}),
])
def test_add_single_family(node: Node, ranges: list[list[str]], expected: set[str]) -> None:
    pod = node.pod()
    result = node.add("c-single", pod, node.config(ipam={"ranges": ranges})).ok()
    assert {ip["address"] for ip in result["ips"]} == expected
    assert len(result["routes"]) == 1
    view = view_pod(pod)
    assert view.addresses == expected
    assert len(view.routes) == 1
    family_gw = "169.254.1.1" if "198.18.16.2/32" in expected else "fe80::1"
    assert {gw for _, gw, _ in view.routes} == {family_gw}
    assert node.delete("c-single", pod, node.config(ipam={"ranges": ranges})).rc == 0
    node.assert_empty()


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_result_shape_follows_cni_version(node: Node, version: str) -> None:
    result = node.add("c-ver", node.pod(), node.config(cniVersion=version)).ok()
    assert result["cniVersion"] == version
    assert all(("version" in ip) == (version == "0.4.0") for ip in result["ips"])
    assert all(("mtu" in i) == (version == "1.1.0") for i in result["interfaces"])


def test_pod_traffic_flows_once_the_node_routes_it(node: Node) -> None:
    """Stand in for the agent: node addresses on lo, one host route per pod address."""
    pod = node.pod()
    result = node.add("c-traffic", pod).ok()
    host = result["interfaces"][0]["name"]
    with netns.entered(node.ns), IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        ipr.addr("add", index=lo, address="198.18.16.1", prefixlen=32)
        ipr.addr("add", index=lo, address="fd00:10:1::1", prefixlen=128, flags=IFA_F_NODAD)
        oif = ipr.link_lookup(ifname=host)[0]
        ipr.route("add", dst="198.18.16.2/32", oif=oif)
        ipr.route("add", dst="fd00:10:1::2/128", oif=oif, family=socket.AF_INET6)
    node_side = Side(node.ns, "lo", IPv4Address("198.18.16.1"), IPv6Address("fd00:10:1::1"))
    pod_side = Side(pod, "eth0", IPv4Address("198.18.16.2"), IPv6Address("fd00:10:1::2"))
    for family in (4, 6):
        assert any(udp_delivered(pod_side, node_side, family) for _ in range(6))
        assert any(udp_delivered(node_side, pod_side, family) for _ in range(6))


def test_check_passes_after_add_and_fails_when_an_address_is_removed(node: Node) -> None:
    pod = node.pod()
    result = node.add("c-check", pod).ok()
    assert node.check("c-check", pod, result).ok() is None
    with netns.entered(pod), IPRoute() as ipr:
        ipr.addr("del", index=ipr.link_lookup(ifname="eth0")[0], address="198.18.16.2",
                 prefixlen=32)
    error = node.check("c-check", pod, result).error(102)
    assert "198.18.16.2/32" in error["msg"]


def test_check_needs_prev_result_and_a_known_endpoint(node: Node) -> None:
    pod = node.pod()
    error = node.check("c-nothing", pod, None).error(7)
    assert "prevResult" in error["msg"]
    result = node.add("c-known", pod).ok()
    assert "no endpoint record" in node.check("c-other", pod, result).error(102)["msg"]


def test_check_notices_a_missing_host_veth(node: Node) -> None:
    pod = node.pod()
    result = node.add("c-veth", pod).ok()
    host = result["interfaces"][0]["name"]
    with netns.entered(node.ns), IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=host)[0])
    assert host in node.check("c-veth", pod, result).error(102)["msg"]


def test_del_twice_leaves_nothing(node: Node) -> None:
    pod = node.pod()
    node.add("c-del", pod).ok()
    first, second = node.delete("c-del", pod), node.delete("c-del", pod)
    assert (first.rc, first.stdout, second.rc, second.stdout) == (0, "", 0, "")
    node.assert_empty()
    assert set(links_of(pod)) == {"lo"}


def links_of(pod: str) -> list[str]:
    with netns.entered(pod), IPRoute() as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]


def test_del_after_the_pod_netns_is_gone(node: Node) -> None:
    pod = node.pod()
    node.add("c-gone", pod).ok()
    netns.remove(Path(pod).name)
    assert node.delete("c-gone", pod).rc == 0
    assert node.delete("c-gone", None).rc == 0
    node.assert_empty()


def test_del_of_an_unknown_container_succeeds(node: Node) -> None:
    outcome = node.delete("never-added", "/var/run/netns/does-not-exist")
    assert (outcome.rc, outcome.stdout) == (0, "")


@pytest.mark.parametrize(("overrides", "code", "mentions"), [
    ({"ipam": {"ranges": [["198.18.16.1/24"]]}}, 7, "ipam.ranges[0][0]"),
    ({"ipam": {"ranges": [["banana/24"]]}}, 7, "ipam.ranges[0][0]"),
    ({"ipam": {"ranges": [[V6_RANGE], ["fd00:10:2::/64"]]}}, 7, "ipam.ranges[1]"),
    ({"ipam": None}, 7, "ipam"),
    ({"ipam": {"ranges": []}}, 7, "ipam.ranges"),
    ({"ipam": {"ranges": [[V4_RANGE]], "subnet": V4_RANGE}}, 2, "ipam.subnet"),
    ({"mtu": 500}, 7, "mtu"),
    ({"mtu": 70000}, 7, "mtu"),
    ({"mtu": "1450"}, 7, "mtu"),
    ({"cniVersion": "0.3.1"}, 1, "0.3.1"),
    ({"cniVersion": None}, 7, "cniVersion"),
    ({"stateDir": None}, 7, "stateDir"),
    ({"hostIfPrefix": "toolong"}, 7, "hostIfPrefix"),
    (b"{nope", 6, "JSON"),
], ids=["host-bits", "not-a-cidr", "two-v6-lists", "no-ipam", "no-ranges", "ipam-subnet",
        "mtu-small", "mtu-large", "mtu-string", "version-0.3.1", "no-version", "no-statedir",
        "long-prefix", "not-json"])
def test_add_with_bad_config_fails_and_changes_nothing(
        node: Node, overrides: dict[str, Any] | bytes, code: int, mentions: str) -> None:
    config = overrides if isinstance(overrides, bytes) else node.config(**overrides)
    pod = node.pod()
    error = node.add("c-bad", pod, config).error(code)
    assert mentions in error["msg"], error
    node.assert_empty()
    assert set(links_of(pod)) == {"lo"}


@pytest.mark.parametrize(("env", "code", "mentions"), [
    ({"pod": None}, 4, "CNI_NETNS"),
    ({"pod": "/var/run/netns/sl-tcp-does-not-exist"}, 3, "does not exist"),
    ({"pod": "/etc/hostname"}, 4, "not a network namespace"),
    ({"pod": "/proc/self/ns/net"}, 4, "node's own namespace"),
    ({"container_id": None}, 4, "CNI_CONTAINERID"),
    ({"container_id": "-leading-dash"}, 4, "CNI_CONTAINERID"),
    ({"ifname": "eth 0"}, 4, "CNI_IFNAME"),
    ({"ifname": "a-very-long-ifname"}, 4, "CNI_IFNAME"),
    ({"cni_args": "K8S_POD_NAME"}, 4, "CNI_ARGS"),
])
def test_add_with_bad_environment_fails_and_changes_nothing(
        node: Node, env: dict[str, Any], code: int, mentions: str) -> None:
    pod = node.pod()
    args: dict[str, Any] = {"container_id": "c-env", "pod": pod, "ifname": "eth0"} | env
    error = node.invoke("ADD", **args).error(code)
    assert mentions in error["msg"], error
    node.assert_empty()
    assert set(links_of(pod)) == {"lo"}
    assert set(node.links()) == {"lo"}


def test_add_refuses_a_pod_that_already_has_the_interface(node: Node) -> None:
    pod = node.pod()
    with netns.entered(pod), IPRoute() as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer="eth0peer")
    assert "eth0" in node.add("c-taken", pod).error(101)["msg"]
    node.assert_empty()


@pytest.mark.parametrize(("ranges", "usable", "full"), [
    ([["198.18.16.0/30"], [V6_RANGE]], 1, "198.18.16.0/30"),
    ([[V4_RANGE], ["fd00:10:1::/126"]], 2, "fd00:10:1::/126"),
    ([["198.18.16.0/30", "198.18.17.0/30"]], 2, "198.18.16.0/30, 198.18.17.0/30"),
])
def test_ipam_exhaustion_fails_cleanly(node: Node, ranges: list[list[str]], usable: int,
                                       full: str) -> None:
    """The failing ADD may already hold an address of the other family: it is released."""
    config = node.config(ipam={"ranges": ranges})
    for i in range(usable):
        node.add(f"c-fits-{i}", node.pod(), config).ok()
    before = (node.veths(), node.allocated(), node.record_files())
    pod = node.pod()
    error = node.add("c-too-many", pod, config).error(100)
    assert full in error["msg"]
    assert (node.veths(), node.allocated(), node.record_files()) == before
    assert set(links_of(pod)) == {"lo"}


def test_a_failed_netlink_step_rolls_back(node: Node) -> None:
    """IPv6 disabled in the pod: the veth exists before adding fd00:: fails; all undone."""
    pod = node.pod()
    with netns.entered(pod):
        for conf in ("all", "default"):
            Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1\n")
    error = node.add("c-fail", pod).error(103)
    assert "fd00:10:1::2" in error["msg"]
    assert "rollback incomplete" not in error.get("details", "")
    node.assert_empty()
    assert set(links_of(pod)) == {"lo"}


def test_repeated_add_returns_the_existing_result_until_it_is_broken(node: Node) -> None:
    pod = node.pod()
    result = node.add("c-again", pod).ok()
    assert node.add("c-again", pod).ok() == result
    assert len(node.veths()) == 1
    assert "already attached" in node.add("c-again", node.pod()).error(101)["msg"]
    with netns.entered(pod), IPRoute() as ipr:
        ipr.route("del", dst="0.0.0.0/0", gateway="169.254.1.1")
    assert "inconsistent" in node.add("c-again", pod).error(101)["msg"]
    assert node.delete("c-again", pod).rc == 0
    node.assert_empty()


def test_allocations_survive_restarts_and_are_reused(node: Node) -> None:
    config = node.config(ipam={"ranges": [[V4_RANGE]]})
    pod_a, pod_b, pod_c = node.pod(), node.pod(), node.pod()
    assert node.add("c-a", pod_a, config).ok()["ips"][0]["address"] == "198.18.16.2/32"
    assert node.add("c-b", pod_b, config).ok()["ips"][0]["address"] == "198.18.16.3/32"
    assert node.delete("c-a", pod_a, config).rc == 0
    assert node.add("c-c", pod_c, config).ok()["ips"][0]["address"] == "198.18.16.2/32"
    assert node.allocated() == {"198.18.16.2": "c-c eth0", "198.18.16.3": "c-b eth0"}


def test_a_second_attachment_in_the_same_pod_is_refused(node: Node) -> None:
    """Both would own the pod's default routes; the second is refused before any change."""
    pod = node.pod()
    first = node.add("c-multi", pod, ifname="eth0").ok()
    error = node.add("c-multi", pod, ifname="net1").error(101)
    assert "default route" in error["msg"]
    assert set(links_of(pod)) == {"lo", "eth0"}
    assert node.veths() == {first["interfaces"][0]["name"]}
    assert set(node.allocated().values()) == {"c-multi eth0"}


def test_gc_removes_attachments_that_are_not_valid(node: Node) -> None:
    pod_keep, pod_drop = node.pod(), node.pod()
    keep = node.add("c-keep", pod_keep).ok()
    drop = node.add("c-drop", pod_drop).ok()
    config = node.config(cniVersion="1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": "c-keep", "ifname": "eth0"}]})
    outcome = node.invoke("GC", config, ifname=None)
    assert (outcome.rc, outcome.stdout) == (0, "")
    assert node.veths() == {keep["interfaces"][0]["name"]}
    assert drop["interfaces"][0]["name"] not in node.links()
    assert set(node.allocated().values()) == {"c-keep eth0"}
    assert [p.name for p in node.record_files()] == ["c-keep-eth0.json"]
    assert node.check("c-keep", pod_keep, keep).ok() is None


def test_gc_needs_the_valid_attachments(node: Node) -> None:
    node.add("c-stays", node.pod()).ok()
    error = node.invoke("GC", node.config(cniVersion="1.1.0"), ifname=None).error(7)
    assert "cni.dev/valid-attachments" in error["msg"]
    assert len(node.record_files()) == 1


def test_status_reports_exhaustion(node: Node) -> None:
    config = node.config(cniVersion="1.1.0", ipam={"ranges": [["198.18.16.0/30"]]})
    outcome = node.invoke("STATUS", config, ifname=None)
    assert (outcome.rc, outcome.stdout) == (0, "")
    node.add("c-only", node.pod(), config).ok()
    assert "198.18.16.0/30" in node.invoke("STATUS", config, ifname=None).error(50)["msg"]


def test_concurrent_adds_get_distinct_addresses(node: Node) -> None:
    pods = [node.pod() for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: node.add(f"c-par-{i}", pods[i]), range(8)))
    docs = [r.ok() for r in results]
    v4 = {d["ips"][0]["address"] for d in docs}
    v6 = {d["ips"][1]["address"] for d in docs}
    assert len(v4) == len(v6) == 8
    assert v4 == {f"198.18.16.{i}/32" for i in range(2, 10)}
    assert len(node.veths()) == 8 and len(node.record_files()) == 8
    for i, pod in enumerate(pods):
        assert view_pod(pod).addresses == {docs[i]["ips"][0]["address"],
                                           docs[i]["ips"][1]["address"]}
    with ThreadPoolExecutor(max_workers=8) as pool:
        deleted = list(pool.map(lambda i: node.delete(f"c-par-{i}", pods[i]), range(8)))
    assert all(d.rc == 0 for d in deleted)
    node.assert_empty()


def test_the_agent_is_notified(node: Node) -> None:
    node.state_dir.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(node.state_dir / "agent.sock"))
    server.listen(4)
    server.settimeout(10)
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(256))

    listener = threading.Thread(target=serve)
    listener.start()
    try:
        pod = node.pod()
        node.add("c-notify", pod).ok()
        assert node.delete("c-notify", pod).rc == 0
    finally:
        listener.join(timeout=15)
        server.close()
    assert received == [b"endpoint-changed c-notify-eth0\n"] * 2


def test_a_dead_agent_socket_does_not_fail_add(node: Node) -> None:
    node.state_dir.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(node.state_dir / "agent.sock"))
    dead.close()
    node.add("c-dead-agent", node.pod()).ok()


def test_records_list_for_the_agent(node: Node) -> None:
    pods = [node.pod(), node.pod()]
    for i, pod in enumerate(pods):
        node.add(f"c-rec-{i}", pod, cni_args=f"K8S_POD_NAMESPACE=ns{i};K8S_POD_NAME=p{i}").ok()
    records = list_records(node.state_dir)
    assert [(r.container_id, r.pod_namespace, r.pod_name) for r in records] == [
        ("c-rec-0", "ns0", "p0"), ("c-rec-1", "ns1", "p1")]
    assert {r.key for r in records} == {"c-rec-0-eth0", "c-rec-1-eth0"}
    assert all(ip_address(str(r.ipv4)) in ip_interface(V4_RANGE).network for r in records)
    assert json.loads(records[0].to_json())["containerID"] == "c-rec-0"
