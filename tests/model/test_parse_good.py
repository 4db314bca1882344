from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pydantic
import pytest
from manifest_helpers import parse_ok

from sluice.model import (
    KINDS,
    EndpointSlice,
    GlobalNetworkPolicy,
    HostEndpoint,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPort,
    Node,
    Pod,
    PrefilterDenyList,
    Service,
    load_manifests,
    parse_file,
)


def test_kind_table_holds_every_kind() -> None:
    assert {
        ("v1", "Namespace"): Namespace,
        ("v1", "Node"): Node,
        ("v1", "Pod"): Pod,
        ("v1", "Service"): Service,
        ("discovery.k8s.io/v1", "EndpointSlice"): EndpointSlice,
        ("networking.k8s.io/v1", "NetworkPolicy"): NetworkPolicy,
        ("sluice.io/v1", "GlobalNetworkPolicy"): GlobalNetworkPolicy,
        ("sluice.io/v1", "HostEndpoint"): HostEndpoint,
        ("sluice.io/v1", "PrefilterDenyList"): PrefilterDenyList,
    } == KINDS


def test_namespace_and_pods(manifests: Path) -> None:
    result = parse_file(manifests / "good" / "01-namespace-and-pods.yaml")
    assert result.ok
    namespace, web0, web1 = result.resources
    assert isinstance(namespace, Namespace)
    assert namespace.name == "shop"
    assert namespace.namespace == ""
    assert namespace.ref == "Namespace shop"
    assert namespace.labels["team"] == "payments"

    assert isinstance(web0, Pod)
    assert web0.ref == "Pod shop/web-0"
    assert web0.labels == {"app": "web", "app.kubernetes.io/version": "1.2"}
    assert web0.metadata.annotations == {"example.com/owner": "team payments"}
    assert web0.metadata.resource_version == "4711"
    assert web0.spec.node_name == "node-a"
    assert web0.spec.host_network is False
    container = web0.spec.containers[0]
    assert container.image == "nginx:1.27"
    assert container.args == ("-g", "daemon off;")
    http, metrics, dns = container.ports
    assert (http.name, http.container_port, http.protocol) == ("http", 8080, "TCP")
    assert metrics.container_port == 9090
    assert (dns.name, dns.protocol, dns.host_port) == (None, "UDP", 5353)
    assert web0.spec.named_port("metrics") == metrics
    assert web0.spec.named_port("nope") is None
    assert web0.status.phase == "Running"
    assert web0.ips == (IPv4Address("198.18.1.10"),)
    assert web0.status.host_ip == IPv4Address("198.18.0.1")
    assert web0.is_ready

    assert isinstance(web1, Pod)
    assert web1.ips == (IPv4Address("198.18.2.10"), IPv6Address("fd00:18:2::10"))
    assert not web1.is_ready


def test_node(manifests: Path) -> None:
    [node] = parse_file(manifests / "good" / "02-node.yaml").resources
    assert isinstance(node, Node)
    assert node.ref == "Node node-a"
    assert node.spec.pod_cidr == IPv4Network("198.18.1.0/24")
    assert node.spec.cidrs == (IPv4Network("198.18.1.0/24"), IPv6Network("fd00:18:1::/64"))
    assert node.internal_ips == (IPv4Address("198.18.0.1"), IPv6Address("fd00:18::1"))
    assert node.addresses_of("ExternalIP") == (IPv4Address("203.0.113.7"),)
    assert node.status.addresses[3].ip is None


def test_services(manifests: Path) -> None:
    web, public, headless, upstream = parse_file(manifests / "good" / "03-services.yaml").resources
    assert isinstance(web, Service)
    spec = web.spec
    assert spec.type == "ClusterIP"
    assert spec.selector == {"app": "web"}
    assert spec.cluster_ip_addresses == (
        IPv4Address("198.18.128.10"),
        IPv6Address("fd00:18:128::10"),
    )
    assert spec.ip_families == ("IPv4", "IPv6")
    assert spec.ip_family_policy == "RequireDualStack"
    assert spec.internal_traffic_policy == "Local"
    assert spec.affinity_timeout == 600
    assert [(p.name, p.port, p.target, p.protocol) for p in spec.ports] == [
        ("http", 80, "http", "TCP"),
        ("metrics", 9090, 9090, "TCP"),
    ]
    assert spec.ports[1].app_protocol == "http"
    assert not spec.is_headless

    assert isinstance(public, Service)
    spec = public.spec
    assert spec.type == "LoadBalancer"
    assert spec.cluster_ip == IPv4Address("198.18.128.11")
    assert spec.cluster_ip_addresses == (IPv4Address("198.18.128.11"),)
    assert spec.external_ips == (IPv4Address("203.0.113.50"),)
    assert spec.load_balancer_ip == IPv4Address("203.0.113.51")
    assert spec.load_balancer_source_ranges == (
        IPv4Network("192.0.2.0/24"),
        IPv6Network("2001:db8::/32"),
    )
    assert spec.external_traffic_policy == "Local"
    assert spec.health_check_node_port == 32000
    assert spec.allocate_load_balancer_node_ports is True
    assert spec.ports[0].node_port == 30443
    assert spec.ports[0].target == 8443
    assert spec.session_affinity == "None"
    assert spec.affinity_timeout is None
    ingress = public.status.load_balancer.ingress
    assert ingress[0].ip == IPv4Address("203.0.113.51")
    assert ingress[1].hostname == "lb.example.com"

    assert isinstance(headless, Service)
    assert headless.spec.is_headless
    assert headless.spec.cluster_ip == "None"
    assert headless.spec.cluster_ip_addresses == ()
    assert headless.spec.publish_not_ready_addresses is True

    assert isinstance(upstream, Service)
    assert upstream.spec.external_name == "api.example.com"


def test_client_ip_affinity_defaults_to_three_hours() -> None:
    [service] = parse_ok(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: sticky}
        spec:
          sessionAffinity: ClientIP
          ports: [{port: 80}]
        """
    )
    assert isinstance(service, Service)
    assert service.spec.affinity_timeout == 10800


def test_endpointslice(manifests: Path) -> None:
    [eps] = parse_file(manifests / "good" / "04-endpointslice.yaml").resources
    assert isinstance(eps, EndpointSlice)
    assert eps.ref == "EndpointSlice shop/web-abc12"
    assert eps.service_name == "web"
    assert eps.address_type == "IPv4"
    first, second, third = eps.endpoints
    assert first.addresses == ("198.18.1.10",)
    assert first.ips == (IPv4Address("198.18.1.10"),)
    assert first.conditions.ready is True
    assert first.is_ready
    assert (first.node_name, first.zone, first.hostname) == ("node-a", "zone-1", "web-0")
    assert first.target_ref is not None
    assert (first.target_ref.kind, first.target_ref.name) == ("Pod", "web-0")
    assert not second.is_ready
    assert second.conditions.terminating is True
    assert third.conditions.ready is None
    assert third.is_ready
    assert [(p.name, p.port, p.protocol, p.app_protocol) for p in eps.ports] == [
        ("http", 8080, "TCP", "http"),
        ("metrics", 9090, "TCP", None),
    ]


def test_fqdn_endpointslice() -> None:
    [eps] = parse_ok(
        """
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: ext}
        addressType: FQDN
        endpoints:
          - addresses: [api.example.com]
        """
    )
    assert isinstance(eps, EndpointSlice)
    assert eps.endpoints[0].addresses == ("api.example.com",)
    assert eps.endpoints[0].ips == ()


def test_networkpolicy_with_every_feature(manifests: Path) -> None:
    [policy] = parse_file(manifests / "good" / "05-networkpolicy.yaml").resources
    assert isinstance(policy, NetworkPolicy)
    spec = policy.spec
    assert spec.pod_selector.match_labels == {"app": "web"}
    tier, canary = spec.pod_selector.match_expressions
    assert (tier.key, tier.operator, tier.values) == ("tier", "In", ("frontend", "edge"))
    assert (canary.key, canary.operator, canary.values) == ("canary", "DoesNotExist", ())
    assert policy.effective_policy_types == ("Ingress", "Egress")

    rule, allow_all = spec.ingress
    combined, by_namespace, block = rule.from_
    assert combined.pod_selector == LabelSelector(match_labels={"role": "client"})
    assert combined.namespace_selector is not None
    assert combined.namespace_selector.match_labels == {"kubernetes.io/metadata.name": "shop"}
    assert combined.ip_block is None
    assert by_namespace.pod_selector is None
    assert by_namespace.namespace_selector is not None
    assert by_namespace.namespace_selector.match_expressions[0].operator == "NotIn"
    assert block.ip_block is not None
    assert block.ip_block.cidr == IPv4Network("192.0.2.0/24")
    assert block.ip_block.except_ == (
        IPv4Network("192.0.2.128/25"),
        IPv4Network("192.0.2.7/32"),
    )
    assert block.ip_block.contains(IPv4Address("192.0.2.1"))
    assert not block.ip_block.contains(IPv4Address("192.0.2.7"))
    assert not block.ip_block.contains(IPv4Address("192.0.2.200"))
    assert not block.ip_block.contains(IPv6Address("fd00::1"))

    named, ranged, sctp = rule.ports
    assert (named.protocol, named.port, named.end_port, named.port_range) == (
        "TCP",
        "http",
        None,
        None,
    )
    assert ranged.port_range == (8000, 8100)
    assert (sctp.protocol, sctp.port_range) == ("SCTP", (9000, 9000))
    assert allow_all.from_ == () and allow_all.ports == ()

    to_v6, dns_only = spec.egress
    assert to_v6.to[0].ip_block is not None
    assert to_v6.to[0].ip_block.cidr == IPv6Network("fd00::/8")
    assert to_v6.to[0].ip_block.except_ == (IPv6Network("fd00:dead::/32"),)
    assert to_v6.to[1].pod_selector is not None and to_v6.to[1].pod_selector.is_empty
    assert to_v6.ports == (NetworkPolicyPort(protocol="UDP", port=53),)
    assert dns_only.to == ()
    assert dns_only.ports[0].port is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", ("Ingress",)),
        ("egress: [{}]", ("Ingress", "Egress")),
        ("egress: []", ("Ingress",)),
        ("policyTypes: [Egress]", ("Egress",)),
        ("policyTypes: [Egress]\n  ingress: [{}]", ("Egress",)),
    ],
)
def test_effective_policy_types(extra: str, expected: tuple[str, ...]) -> None:
    [policy] = parse_ok(
        f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p}}
spec:
  podSelector: {{}}
  {extra}
"""
    )
    assert isinstance(policy, NetworkPolicy)
    assert policy.effective_policy_types == expected
    assert policy.spec.isolates_egress == ("Egress" in expected)


def test_json_list(manifests: Path) -> None:
    namespace, policy = parse_file(manifests / "good" / "06-list.json").resources
    assert isinstance(namespace, Namespace) and namespace.name == "tools"
    assert isinstance(policy, NetworkPolicy)
    assert policy.ref == "NetworkPolicy tools/default-deny"
    assert policy.spec.pod_selector.is_empty


def test_json_single_object() -> None:
    [namespace] = parse_ok(
        '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "solo"}}', "ns.json"
    )
    assert isinstance(namespace, Namespace) and namespace.name == "solo"


def test_yaml_list_and_empty_documents() -> None:
    resources = parse_ok(
        """
        ---
        ---
        apiVersion: v1
        kind: List
        items:
          - {apiVersion: v1, kind: Namespace, metadata: {name: a}}
          - {apiVersion: v1, kind: Namespace, metadata: {name: b}}
        ---
        """
    )
    assert [resource.name for resource in resources] == ["a", "b"]


def test_namespace_defaults_to_default() -> None:
    [pod] = parse_ok(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: lonely}
        spec:
          containers: [{name: app}]
        """
    )
    assert pod.namespace == "default"
    assert pod.ref == "Pod default/lonely"


def test_models_are_frozen(manifests: Path) -> None:
    [node] = parse_file(manifests / "good" / "02-node.yaml").resources
    with pytest.raises(pydantic.ValidationError):
        node.metadata = node.metadata  # type: ignore[misc]


def test_load_manifests_reads_files_and_directories(manifests: Path) -> None:
    resources = load_manifests([manifests / "good", manifests / "good" / "02-node.yaml"])
    kinds = [resource.KIND for resource in resources]
    assert kinds == [
        "Namespace",
        "Pod",
        "Pod",
        "Node",
        "Service",
        "Service",
        "Service",
        "Service",
        "EndpointSlice",
        "NetworkPolicy",
        "Namespace",
        "NetworkPolicy",
        "GlobalNetworkPolicy",
        "GlobalNetworkPolicy",
        "GlobalNetworkPolicy",
        "HostEndpoint",
        "PrefilterDenyList",
        "Node",
    ]


def test_json_dump_uses_kubernetes_names(manifests: Path) -> None:
    [node] = parse_file(manifests / "good" / "02-node.yaml").resources
    dumped = node.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped["spec"] == {
        "podCIDR": "198.18.1.0/24",
        "podCIDRs": ["198.18.1.0/24", "fd00:18:1::/64"],
    }


def test_endpoint_hints() -> None:
    [eps] = parse_ok(
        """
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: hinted}
        addressType: IPv6
        endpoints:
          - addresses: ["fd00::1"]
            zone: zone-a
            hints: {forZones: [{name: zone-a}]}
        """
    )
    assert isinstance(eps, EndpointSlice)
    hints = eps.endpoints[0].hints
    assert hints is not None and hints.for_zones[0].name == "zone-a"
    assert eps.endpoints[0].ips == (IPv6Address("fd00::1"),)


def test_direct_validation_checks_kind_and_api_version() -> None:
    with pytest.raises(pydantic.ValidationError, match='expected kind "Pod", got "Service"'):
        Pod.model_validate(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}}
        )
    with pytest.raises(pydantic.ValidationError, match='needs apiVersion "v1", got "v2"'):
        Namespace.model_validate(
            {"apiVersion": "v2", "kind": "Namespace", "metadata": {"name": "x"}}
        )
