"""The lab's pure parts, without root: names, the address plan, the objects it writes to
the datastore (clusterIPs, load balancer IPs), node port targets, probe reports, the pod
server's reply and the state file."""

from __future__ import annotations

import ipaddress

import pytest

from sluice.compile.services import NODE_PORT_RANGE, node_port_allocation
from sluice.compile.topology import Dataplane, node_dataplane
from sluice.datastore import ClusterState
from sluice.lab import names, objects, views
from sluice.lab.errors import LabError
from sluice.lab.plan import LabOptions, plan_lab
from sluice.lab.podserver import Port, client_ip, reply_line
from sluice.lab.probe import Outcome, report, report_many, summary_result
from sluice.lab.state import LabState, PodRecord, PortSpec, ProcessRecord
from sluice.lab.targets import load_balancer_ips, node_port_of
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
    assert names.node_host_cgroup("x", "node2") == "sluice-lab-x/node2/host"
    assert names.pod_cgroup("x", "node2", "shop", "web") == "sluice-lab-x/node2/pods/shop_web"
    assert node2.uplink_routes == ("198.19.0.0/16", "198.18.200.0/24", "fd00:96::/108",
                                   "fd00:97::/112")
    assert plan.external.routes == (("198.18.200.0/24", "198.18.0.11"),
                                    ("fd00:97::/112", "fd00:ff::11"))
    assert plan.external.addresses == ("198.18.0.250", "fd00:ff::250")
    v6 = plan_lab("x", LabOptions(ip_family="ipv6", routing="native"))
    assert v6.nodes[0].addresses == ("fd00:ff::11",)
    assert v6.nodes[0].pod_cidrs == ("fd00:10:1::/64",)
    assert v6.options.pod_mtu == 1500
    assert v6.external.routes == (("fd00:97::/112", "fd00:ff::11"),)
    assert v6.nodes[1].uplink_routes == ("fd00:96::/108", "fd00:97::/112")
    assert LabOptions().pod_mtu == 1450
    assert LabOptions(ip_family="ipv6").pod_mtu == 1430, "an IPv6 underlay costs 70 bytes"
    with pytest.raises(LabError, match="no node 'node4'"):
        plan.node("node4")
    with pytest.raises(LabError, match="--nodes"):
        LabOptions(nodes=0)



def test_iptables_backend_option() -> None:
    assert LabOptions().iptables_backend == "system"
    assert LabOptions(iptables_backend="legacy").iptables_backend == "legacy"
    with pytest.raises(LabError, match="--iptables-backend ebtables: must be one of "
                                        "system, legacy, nft"):
        LabOptions(iptables_backend="ebtables")

def test_node_objects_are_valid_nodes() -> None:
    node = objects.node_resource(plan_lab("x", LabOptions()).nodes[0], "bpf")
    assert [str(ip) for ip in node.internal_ips] == ["198.18.0.11", "fd00:ff::11"]
    assert [str(cidr) for cidr in node.spec.cidrs] == ["198.18.17.0/24", "fd00:10:1::/64"]
    assert node_dataplane(node) is Dataplane.BPF
    other = objects.node_resource(plan_lab("x", LabOptions()).nodes[1], "iptables")
    assert node_dataplane(other) is Dataplane.IPTABLES


def _service(spec: str, name: str = "web", ports: str = "[{port: 80}]",
             status: str = "") -> Service:
    text = f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  ports: {ports}
{spec}
{status}"""
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


def _ips(service: Service) -> list[str]:
    return load_balancer_ips(service)


def test_load_balancer_ips_one_per_family_stable_and_not_reused() -> None:
    taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    cluster: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()

    def lb(spec: str, name: str, previous: Service | None = None) -> Service:
        service = objects.with_cluster_ips(_service(f"  type: LoadBalancer\n{spec}", name),
                                           (4, 6), cluster, previous)
        return objects.with_load_balancer_ips(service, taken, previous)

    dual = lb("  ipFamilyPolicy: PreferDualStack", "a")
    assert _ips(dual) == ["198.18.200.10", "fd00:97::10"]
    v6 = lb("  ipFamilies: [IPv6]", "b")
    assert _ips(v6) == ["fd00:97::11"]
    v4 = lb("", "c")
    assert _ips(v4) == ["198.18.200.11"]
    again = lb("  ipFamilyPolicy: PreferDualStack", "a", previous=dual)
    assert _ips(again) == _ips(dual), "a Service applied again keeps its IPs"
    assert objects.load_balancer_ips_in_use([dual, v6, v4]) == taken
    wanted = lb("  loadBalancerIP: 198.18.200.77", "d")
    assert _ips(wanted) == ["198.18.200.77"]
    with pytest.raises(LabError, match=r"loadBalancerIP 198\.18\.200\.77 is the load balancer"):
        lb("  loadBalancerIP: 198.18.200.77", "f")
    free = set(taken) - {ipaddress.ip_address("198.18.200.10")}
    reused = objects.with_load_balancer_ips(
        objects.with_cluster_ips(_service("  type: LoadBalancer", "e"), (4, 6), set()), free)
    assert _ips(reused) == ["198.18.200.10"], "a freed IP is used again"


def test_load_balancer_ips_only_for_load_balancers_without_ingress() -> None:
    plain = objects.with_cluster_ips(_service("  type: NodePort"), (4, 6), set())
    assert objects.with_load_balancer_ips(plain, set()) is plain
    given = objects.with_cluster_ips(
        _service("  type: LoadBalancer",
                 status="status: {loadBalancer: {ingress: [{ip: 203.0.113.9}]}}"), (4,), set())
    assert objects.with_load_balancer_ips(given, set()) is given
    assert _ips(given) == ["203.0.113.9"]
    full = {ipaddress.ip_address("198.18.200.0") + i for i in range(256)}
    with pytest.raises(LabError, match=r"no free load balancer IP left in 198\.18\.200\.0/24"):
        objects.with_load_balancer_ips(
            objects.with_cluster_ips(_service("  type: LoadBalancer"), (4,), set()), full)


def test_node_port_targets_resolve_like_the_agents() -> None:
    ports = "[{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]"
    web = _service("  type: NodePort", "web", ports)
    fixed = _service("  type: NodePort", "fixed", "[{port: 80, nodePort: 30080}]")
    plain = _service("", "plain")
    state = ClusterState([web, fixed, plain])
    allocated = node_port_allocation(state.services())
    assert node_port_of(web, state, 80, "TCP") == allocated[("shop", "web", 0)]
    assert node_port_of(web, state, 53, "UDP") == allocated[("shop", "web", 1)]
    assert node_port_of(web, state, 80, "TCP") in NODE_PORT_RANGE
    assert node_port_of(fixed, state, 80, "TCP") == 30080
    with pytest.raises(LabError, match=r"has no port 53/TCP \(ports: 80/TCP, 53/UDP\)"):
        node_port_of(web, state, 53, "TCP")
    with pytest.raises(LabError, match=r"no node port .*type ClusterIP"):
        node_port_of(plain, state, 80, "TCP")


def test_service_rows_show_node_ports_and_targets() -> None:
    port = _service("  type: NodePort", ports="[{port: 80, targetPort: http}]").spec.ports[0]
    assert views._port(port, 31234) == "80:31234/TCP->http"
    assert views._port(port, None) == "80/TCP->http"


def test_probe_reports() -> None:
    one = Outcome("connected", peer="a", client_ip="198.18.17.2", latency_ms=0.5,
                  cgroup="/sluice-lab-x/node1/host")
    doc = report(one, **{"from": "node/node1", "port": 80})
    assert list(doc) == ["result", "peer", "client_ip", "latency_ms", "from", "port",
                         "cgroup", "error"]
    refused = Outcome("refused", latency_ms=0.1)
    timeout = Outcome("timeout", error="no answer within 1s")
    outcomes = [one, one, refused, Outcome("connected", peer="b", client_ip="198.18.17.2"),
                timeout]
    assert summary_result([one, one]) == "connected"
    assert summary_result(outcomes) == "refused"
    many = report_many(outcomes, port=80)
    assert many["result"] == "refused" and many["port"] == 80 and many["count"] == 5
    assert many["results"] == {"connected": 3, "refused": 1, "timeout": 1}
    assert many["peers"] == {"a": 2, "b": 1}
    assert many["client_ips"] == {"198.18.17.2": 3}
    assert many["cgroup"] == "/sluice-lab-x/node1/host"
    assert [p["result"] for p in many["probes"]] == [o.result for o in outcomes]
    assert many["probes"][4]["error"] == "no answer within 1s"


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
