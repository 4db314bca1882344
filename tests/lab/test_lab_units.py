"""The lab's pure parts, without root: names, the address plan, the objects it writes to
the datastore, the pod server's reply and the state file."""

from __future__ import annotations

import ipaddress

import pytest

from sluice.lab import names, objects
from sluice.lab.errors import LabError
from sluice.lab.plan import LabOptions, plan_lab
from sluice.lab.podserver import Port, client_ip, reply_line
from sluice.lab.state import LabState, PodRecord, PortSpec, ProcessRecord
from sluice.model import Service, parse_text


@pytest.mark.parametrize("name", ["a", "sluice", "lab-2", "abcdefghijklmnop"])
def test_valid_lab_names(name: str) -> None:
    assert names.check_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "1lab", "Lab", "a_b", "abcdefghijklmnopq", "a/b"])
def test_invalid_lab_names(name: str) -> None:
    with pytest.raises(LabError, match="invalid lab name"):
        names.check_lab_name(name)


def test_namespaces_of_one_lab_never_match_another() -> None:
    labs = ["a", "a-p", "a-p-p", "a-node1", "a-underlay", "ab"]
    made = {
        lab: [names.underlay_netns(lab), names.external_netns(lab),
              names.node_netns(lab, "node1"), names.node_netns(lab, "node12"),
              names.pod_netns(lab, "default", "web"), names.pod_netns(lab, "x", "deadbeef")]
        for lab in labs
    }
    for lab in labs:
        for owner, namespaces in made.items():
            for ns in namespaces:
                assert names.is_lab_netns(lab, ns) == (owner == lab), (lab, ns)


def test_long_pod_names_make_short_file_names() -> None:
    slug = names.pod_slug("ns", "p" * 250)
    assert len(slug) <= names.MAX_SLUG
    assert slug != names.pod_slug("ns", "p" * 249)
    assert names.pod_slug("shop", "web") == "shop_web"


def test_plan_addresses() -> None:
    plan = plan_lab("x", LabOptions(nodes=3))
    node2 = plan.node("node2")
    assert node2.netns == "sl-x-node2"
    assert node2.addresses == ("198.18.0.12", "fd00:ff::12")
    assert node2.pod_cidrs == ("198.18.18.0/24", "fd00:10:2::/64")
    assert node2.pin_dir == "/sys/fs/bpf/sluice-lab-x/node2"
    assert node2.cgroup == "sluice-lab-x/node2"
    assert plan.external.addresses == ("198.18.0.250", "fd00:ff::250")
    v6 = plan_lab("x", LabOptions(ip_family="ipv6", routing="native"))
    assert v6.nodes[0].addresses == ("fd00:ff::11",)
    assert v6.nodes[0].pod_cidrs == ("fd00:10:1::/64",)
    assert v6.options.pod_mtu == 1500
    assert LabOptions().pod_mtu == 1450
    assert LabOptions(ip_family="ipv6").pod_mtu == 1430, "an IPv6 underlay costs 70 bytes"
    with pytest.raises(LabError, match="no node 'node4'"):
        plan.node("node4")
    with pytest.raises(LabError, match="--nodes"):
        LabOptions(nodes=0)


def test_node_objects_are_valid_nodes() -> None:
    node = objects.node_resource(plan_lab("x", LabOptions()).nodes[0])
    assert [str(ip) for ip in node.internal_ips] == ["198.18.0.11", "fd00:ff::11"]
    assert [str(cidr) for cidr in node.spec.cidrs] == ["198.18.17.0/24", "fd00:10:1::/64"]


def _service(spec: str) -> Service:
    text = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  ports: [{{port: 80}}]
{spec}"""
    result = parse_text(text, "svc.yaml")
    assert not result.problems, result.problems
    service = result.resources[0]
    assert isinstance(service, Service)
    return service


def test_cluster_ips_follow_the_family_policy() -> None:
    taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    single = objects.with_cluster_ips(_service(""), (4, 6), taken)
    assert [str(ip) for ip in single.spec.cluster_ip_addresses] == ["198.19.0.10"]
    dual = objects.with_cluster_ips(_service("  ipFamilyPolicy: PreferDualStack"), (4, 6),
                                    taken)
    assert [str(ip) for ip in dual.spec.cluster_ip_addresses] == ["198.19.0.11", "fd00:96::10"]
    assert dual.spec.ip_families == ("IPv4", "IPv6")
    v6_first = objects.with_cluster_ips(
        _service("  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6]"), (4, 6), taken)
    assert [str(ip) for ip in v6_first.spec.cluster_ip_addresses] == \
        ["fd00:96::11", "198.19.0.12"]
    kept = objects.with_cluster_ips(_service(""), (4, 6), taken, previous=single)
    assert kept.spec.cluster_ip_addresses == single.spec.cluster_ip_addresses
    given = _service("  clusterIP: 198.19.9.9")
    assert objects.with_cluster_ips(given, (4, 6), taken) is given
    with pytest.raises(LabError, match="needs IPv6"):
        objects.with_cluster_ips(_service("  ipFamilies: [IPv6]"), (4,), set())
    with pytest.raises(LabError, match="RequireDualStack needs a dual-stack lab"):
        objects.with_cluster_ips(_service("  ipFamilyPolicy: RequireDualStack"), (6,), set())


def test_pod_server_reply() -> None:
    assert reply_line("web", "::ffff:198.18.17.2") == b"web 198.18.17.2\n"
    assert client_ip("fe80::1%eth0") == "fe80::1"
    assert Port.parse("53/udp") == Port(53, "UDP")
    assert Port.parse("80") == Port(80, "TCP")


def test_state_round_trip() -> None:
    state = LabState(name="x", options=LabOptions(nodes=1, dataplane="iptables"),
                     created_at="2024-01-01T00:00:00Z", phase="ready")
    state.agents["node1"] = ProcessRecord(1, 2, "agent node1", "/log")
    state.pods["shop/web"] = PodRecord(
        namespace="shop", name="web", node="node1", host_network=False, netns="sl-x-p-1",
        container_id="x-1", ips=["198.18.17.2"], ports=[PortSpec(80, "TCP")],
        cgroup="sluice-lab-x/node1/pods/shop_web", log="/log2",
        server=ProcessRecord(3, 4, "server", "/log2"))
    assert LabState.from_json(state.to_json()) == state
