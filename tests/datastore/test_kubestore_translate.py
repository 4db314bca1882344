"""Recorded apiserver JSON (tests/datastore/k8s/*.json) translated into the model."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from sluice.datastore.kubeapi import ApiKind
from sluice.datastore.kubetranslate import translate
from sluice.model import (
    EndpointSlice,
    GlobalNetworkPolicy,
    HostEndpoint,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PrefilterDenyList,
    Resource,
    Service,
)

RECORDED = Path(__file__).parent / "k8s"


def recorded(file: str) -> list[dict[str, Any]]:
    listing = json.loads((RECORDED / file).read_text())
    assert listing["kind"].endswith("List") and listing["metadata"]["resourceVersion"]
    return list(listing["items"])


def translated(cls: type[Resource], file: str) -> dict[str, Resource]:
    found: dict[str, Resource] = {}
    for raw in recorded(file):
        result = translate(cls, raw, ApiKind(cls).list_path)
        assert result.resource is not None, result.problems
        assert isinstance(result.resource, cls)
        found[result.resource.name] = result.resource
    return found


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_services_clusterip_nodeport_dual_stack_headless_loadbalancer() -> None:
    services = translated(Service, "services.json")
    assert set(services) == {"kubernetes", "web", "api", "db", "edge"}
    kubernetes = services["kubernetes"]
    assert kubernetes.namespace == "default"
    assert kubernetes.spec.cluster_ip_addresses == (ip("10.96.0.1"),)
    assert kubernetes.spec.ports[0].target == 6443
    assert kubernetes.metadata.uid == "0b2f2a4e-8f43-4a3c-9d7c-1f1d7d0f3b61"
    assert kubernetes.metadata.resource_version == "196"
    assert kubernetes.metadata.managed_fields is None

    web = services["web"]
    assert web.spec.type == "NodePort" and web.spec.external_traffic_policy == "Local"
    assert [(p.name, p.port, p.target, p.node_port) for p in web.spec.ports] == [
        ("http", 80, "http", 31080), ("metrics", 9100, 9100, 31910)]
    assert web.spec.selector == {"app": "web"}

    api = services["api"]
    assert api.spec.cluster_ip_addresses == (ip("10.96.201.33"), ip("fd00:10:96::c9a1"))
    assert api.spec.ip_families == ("IPv4", "IPv6")
    assert api.spec.affinity_timeout == 600
    assert api.spec.ports[0].app_protocol == "kubernetes.io/h2c"

    db = services["db"]
    assert db.spec.is_headless and db.spec.cluster_ip_addresses == ()
    assert db.spec.publish_not_ready_addresses

    edge = services["edge"]
    assert edge.spec.type == "LoadBalancer"
    assert edge.spec.ports[0].protocol == "UDP" and edge.spec.ports[0].name is None
    assert edge.status.load_balancer.ingress[0].ip == ip("198.18.200.10")


def test_endpointslices_conditions_named_ports_and_null_lists() -> None:
    slices = translated(EndpointSlice, "endpointslices.json")
    web = slices["web-7xq2k"]
    assert web.service_name == "web" and web.address_type == "IPv4"
    ready, not_ready, terminating = web.endpoints
    assert ready.is_ready and ready.node_name == "n1" and ready.ips == (ip("198.18.16.5"),)
    assert ready.target_ref is not None and ready.target_ref.name == "web-6d4cf56db6-2lq9x"
    assert not not_ready.is_ready and not_ready.conditions.serving is False
    assert not terminating.is_ready
    assert terminating.conditions.terminating and terminating.conditions.serving
    assert [(p.name, p.port, p.protocol) for p in web.ports] == [
        ("http", 8080, "TCP"), ("metrics", 9100, "TCP")]

    empty = slices["edge-pn4rt"]
    assert empty.service_name == "edge" and empty.endpoints == () and empty.ports == ()

    v6 = slices["api-v6-hc2rd"]
    assert v6.address_type == "IPv6" and v6.endpoints[0].ips == (ip("fd00:10:1::7"),)
    assert v6.ports[0].name is None and v6.ports[0].port == 8443


def test_pods_scheduled_host_network_and_pending() -> None:
    pods = translated(Pod, "pods.json")
    web = pods["web-6d4cf56db6-2lq9x"]
    assert web.namespace == "shop" and web.spec.node_name == "n1"
    assert web.ips == (ip("198.18.16.5"), ip("fd00:10:1::5"))
    assert web.is_ready and web.labels["app"] == "web"
    named = web.spec.named_port("http")
    assert named is not None and named.container_port == 8080

    exporter = pods["node-exporter-hz8vb"]
    assert exporter.spec.host_network and exporter.spec.node_name == "n2"
    assert exporter.ips == (ip("198.18.0.12"),)
    assert exporter.spec.containers[0].ports[0].host_port == 9100

    pending = pods["batch-5k9wz"]
    assert pending.spec.node_name is None and pending.ips == () and not pending.is_ready
    assert pending.status.phase == "Pending"


def test_nodes_internal_ips_and_pod_cidrs() -> None:
    nodes = translated(Node, "nodes.json")
    n1, n2 = nodes["n1"], nodes["n2"]
    assert n1.internal_ips == (ip("198.18.0.11"), ip("fd00:198:18::11"))
    assert [str(cidr) for cidr in n1.spec.cidrs] == ["198.18.16.0/24", "fd00:10:1::/64"]
    assert n1.labels["node-role.kubernetes.io/control-plane"] == ""
    assert n2.internal_ips == (ip("198.18.0.12"),)
    assert n2.addresses_of("ExternalIP") == (ip("203.0.113.12"),)


def test_namespaces_labels_and_phase() -> None:
    namespaces = translated(Namespace, "namespaces.json")
    assert namespaces["shop"].labels == {"kubernetes.io/metadata.name": "shop", "team": "retail"}
    assert namespaces["old"].status.phase == "Terminating"
    assert namespaces["default"].namespace == ""


def test_network_policies() -> None:
    policies = translated(NetworkPolicy, "networkpolicies.json")
    web = policies["web-from-frontend"]
    assert web.spec.pod_selector.match_labels == {"app": "web"}
    [rule] = web.spec.ingress
    pods, namespaces, block = rule.from_
    assert pods.pod_selector is not None and pods.pod_selector.match_labels == {"role": "frontend"}
    assert namespaces.namespace_selector is not None
    assert namespaces.namespace_selector.match_expressions[0].values == ("retail", "edge")
    assert block.ip_block is not None and str(block.ip_block.cidr) == "198.18.0.0/16"
    assert [port.port for port in rule.ports] == ["http", 9000]
    assert rule.ports[1].port_range == (9000, 9100)
    deny = policies["default-deny-egress"]
    assert deny.effective_policy_types == ("Egress",) and deny.spec.pod_selector.is_empty


def test_sluice_kinds() -> None:
    host = translated(HostEndpoint, "hostendpoints.json")["n1-eth0"]
    assert host.node == "n1" and host.expected_ips == (ip("198.18.0.11"),)
    deny = translated(PrefilterDenyList, "prefilterdenylists.json")["scanners"]
    assert [str(cidr) for cidr in deny.cidrs] == ["203.0.113.0/24", "2001:db8:bad::/48"]
    good = translate(GlobalNetworkPolicy, recorded("sluice.json")[0], "gnp").resource
    assert isinstance(good, GlobalNetworkPolicy)
    assert good.spec.order == 10 and [rule.action for rule in good.spec.egress] == ["Deny", "Pass"]


def test_untranslatable_object_names_kind_name_and_field() -> None:
    raw = recorded("sluice.json")[1]
    result = translate(GlobalNetworkPolicy, raw, "/apis/sluice.io/v1/globalnetworkpolicies/x")
    assert result.resource is None
    [problem] = result.problems
    assert problem.object == "GlobalNetworkPolicy selects-nothing"
    assert "selects nothing" in problem.message
    assert problem.file == "/apis/sluice.io/v1/globalnetworkpolicies/x"


@pytest.mark.parametrize(("field", "value", "path"), [
    ("podIPs", [{"ip": "198.18.16.5"}, {"ip": "198.18.16.6"}], "status.podIPs[1]"),
    ("podIP", "not-an-ip", "status.podIP"),
])
def test_bad_pod_status_field_is_named(field: str, value: object, path: str) -> None:
    raw = json.loads(json.dumps(recorded("pods.json")[0]))
    raw["status"][field] = value
    result = translate(Pod, raw, "pods")
    assert result.resource is None
    assert any(problem.field == path for problem in result.problems), result.problems
    assert result.problems[0].object == "Pod shop/web-6d4cf56db6-2lq9x"
