"""Pure compile of Services: frontends, endpoint derivation, traffic policies, node ports."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from sluice.compile import services
from sluice.compile.lbstate import BackendRef, lb_state
from sluice.compile.services import (
    NODE_PORT_RANGE,
    Frontend,
    FrontendScope,
    ServicePlan,
    foreign_nodes,
    node_port_allocation,
    service_table,
)
from sluice.compile.topology import DATAPLANE_ANNOTATION
from sluice.datapath.lb import BackendFlags, LbFlags
from sluice.datastore import Change, ChangeKind, ClusterState, ResourceKey
from sluice.model import EndpointSlice, Service, parse_text
from tests.compile.helpers import N1, N2

IP = ip_address

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]
status:
  podIPs: [{ip: 198.18.16.2}, {ip: "fd00:10:1::2"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  nodeName: n2
  containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]
status:
  podIPs: [{ip: 198.18.17.2}, {ip: "fd00:10:2::2"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: web}}
spec:
  nodeName: n2
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status:
  podIPs: [{ip: 198.18.17.3}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec:
  nodeName: n1
  containers: [{name: c}]
status:
  podIPs: [{ip: 198.18.16.9}]
  conditions: [{type: Ready, status: "True"}]
"""

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  clusterIPs: [198.19.0.10, "fd00:96::10"]
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
"""


def state(*texts: str) -> ClusterState:
    resources = [r for text in texts for r in parse_text(text, "test.yaml").resources]
    return ClusterState([N1, N2, *resources])


def plan(table_state: ClusterState, frontend: str, node: str = "n1") -> ServicePlan:
    address, rest = frontend.rsplit(":", 1)
    port, protocol = rest.split("/")
    found = service_table(table_state, node).for_frontend(
        Frontend(IP(address.strip("[]")), int(port), protocol))  # type: ignore[arg-type]
    assert found is not None, f"no frontend {frontend}"
    return found


def backends(p: ServicePlan) -> set[str]:
    return {f"{b.address}:{b.port}" for b in p.backends}


def test_cluster_ip_backends_are_ready_selected_pods_with_named_ports_resolved_per_pod() -> None:
    s = state(PODS, WEB)
    assert backends(plan(s, "198.19.0.10:80/TCP")) == {"198.18.16.2:8080", "198.18.17.2:9090"}
    assert backends(plan(s, "[fd00:96::10]:80/TCP")) == {"fd00:10:1::2:8080",
                                                         "fd00:10:2::2:9090"}
    assert backends(plan(s, "198.19.0.10:53/UDP")) == {"198.18.16.2:53"}, \
        "a pod without the named port of that protocol is no endpoint of that port"


def test_node_port_listens_on_this_nodes_addresses_of_the_service_families() -> None:
    s = state(PODS, WEB)
    on_n1 = [p for p in service_table(s, "n1").plans if p.scope is FrontendScope.NODE_PORT]
    addresses = {(str(p.frontend.address), p.frontend.port) for p in on_n1}
    assert ("198.18.0.11", 30080) in addresses and ("fd00:ff::11", 30080) in addresses
    assert ("198.18.0.12", 30080) not in addresses
    dns = [p for p in on_n1 if p.frontend.protocol == "UDP"]
    assert dns and all(p.frontend.port in NODE_PORT_RANGE for p in dns)


def test_external_traffic_policy_local_keeps_only_this_nodes_backends() -> None:
    local = WEB.replace("type: NodePort", "type: NodePort\n  externalTrafficPolicy: Local")
    s = state(PODS, local)
    assert backends(plan(s, "198.18.0.11:30080/TCP")) == {"198.18.16.2:8080"}
    assert plan(s, "198.18.0.12:30080/TCP", node="n2").local_only
    assert backends(plan(s, "198.19.0.10:80/TCP")) == {"198.18.16.2:8080", "198.18.17.2:9090"}, \
        "the cluster IP follows internalTrafficPolicy, not the external one"


def test_internal_traffic_policy_local_with_no_local_backend_has_no_backends() -> None:
    s = state(PODS.replace("nodeName: n1", "nodeName: n2"),
              WEB.replace("ipFamilies: [IPv4, IPv6]",
                          "ipFamilies: [IPv4, IPv6]\n  internalTrafficPolicy: Local"))
    assert plan(s, "198.19.0.10:80/TCP").backends == ()


def test_publish_not_ready_addresses_includes_unready_pods() -> None:
    s = state(PODS, WEB.replace("selector:", "publishNotReadyAddresses: true\n  selector:"))
    assert "198.18.17.3:8080" in backends(plan(s, "198.19.0.10:80/TCP"))


SLICES = """
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.20
  loadBalancerSourceRanges: [198.18.0.0/24, "fd00::/8"]
  sessionAffinity: ClientIP
  ports: [{port: 443, targetPort: 8443, nodePort: 30443}]
status:
  loadBalancer: {ingress: [{ip: 198.19.255.1}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{port: 8443}]
endpoints:
- {addresses: [198.18.16.5], nodeName: n1, conditions: {ready: true}}
- addresses: [198.18.17.5]
  nodeName: n2
  conditions: {ready: false, serving: true, terminating: true}
"""


def test_slices_win_over_selectors_and_terminating_endpoints_get_no_new_flows() -> None:
    s = state(SLICES)
    lb = plan(s, "198.19.255.1:443/TCP")
    assert lb.scope is FrontendScope.LOAD_BALANCER
    assert backends(lb) == {"198.18.16.5:8443"}
    assert lb.source_ranges == (ip_network("198.18.0.0/24"),)
    assert lb.affinity_timeout == 10800
    assert plan(s, "198.19.0.20:443/TCP").source_ranges == ()


def test_only_terminating_endpoints_left_still_serve() -> None:
    s = state(SLICES.replace("conditions: {ready: true}",
                             "conditions: {ready: false, serving: false}"))
    assert backends(plan(s, "198.19.0.20:443/TCP")) == {"198.18.17.5:8443"}


def test_headless_and_external_name_services_have_no_frontends() -> None:
    headless = WEB.replace("type: NodePort", "type: ClusterIP").replace(
        "clusterIPs: [198.19.0.10, \"fd00:96::10\"]", "clusterIP: None").replace(
        ", nodePort: 30080", "")
    assert service_table(state(PODS, headless), "n1").plans == ()


def test_node_ports_are_allocated_stably_and_without_collisions() -> None:
    services = [r for r in parse_text("\n---\n".join(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: x}}\n"
        f"spec: {{type: NodePort, clusterIP: 198.19.0.{i + 1}, ports: [{{port: 80}}]}}"
        for i in range(50)), "s.yaml").resources if isinstance(r, Service)]
    first = node_port_allocation(tuple(services))
    again = node_port_allocation(tuple(reversed(services)))
    assert first == again
    assert len(set(first.values())) == 50
    assert all(port in NODE_PORT_RANGE for port in first.values())


def test_lb_state_slots_backends_and_flags() -> None:
    table = service_table(state(PODS, WEB, SLICES), "n1")
    lbs = lb_state(table)
    web = lbs.frontends[Frontend(IP("198.19.0.10"), 80, "TCP")]
    assert web.backends == (BackendRef(IP("198.18.16.2"), 8080, "TCP"),
                            BackendRef(IP("198.18.17.2"), 9090, "TCP"))
    api = lbs.frontends[Frontend(IP("198.19.255.1"), 443, "TCP")]
    assert api.flags == LbFlags.AFFINITY | LbFlags.SOURCE_RANGES
    assert api.affinity_timeout == 10800
    assert api.service_id == lbs.frontends[Frontend(IP("198.19.0.20"), 443, "TCP")].service_id, \
        "affinity is per service port, whichever frontend the client used"
    assert BackendRef(IP("198.18.16.5"), 8443, "TCP") in lbs.backends


def test_a_table_after_a_change_equals_one_compiled_from_scratch() -> None:
    """Services whose objects did not change keep their plans from the last table; the
    result must be what a fresh compile gives."""
    before = state(PODS, WEB, SLICES)
    service_table(before, "n1")
    moved = parse_text(SLICES.replace("198.18.16.5", "198.18.16.9"), "moved.yaml").resources
    changes = [Change(ChangeKind.MODIFIED, ResourceKey.of(r), r, 2) for r in moved
               if isinstance(r, EndpointSlice)]
    after = before.with_changes(changes)
    remembered = service_table(after, "n1")
    services._remembered.clear()
    fresh = service_table(after, "n1")
    assert remembered == fresh
    assert remembered != service_table(before, "n1")


def test_backends_on_iptables_nodes_are_flagged_foreign() -> None:
    iptables_n2 = N2.model_copy(update={"metadata": N2.metadata.model_copy(
        update={"annotations": {DATAPLANE_ANNOTATION: "iptables"}})})
    objects = [r for r in state(PODS, WEB).all() if r.KIND != "Node"]
    mixed = ClusterState([N1, iptables_n2, *objects])
    assert foreign_nodes(mixed) == {"n2"}
    assert foreign_nodes(state(PODS, WEB)) == frozenset()
    lbs = lb_state(service_table(mixed, "n1"), foreign_nodes=foreign_nodes(mixed))
    web = lbs.frontends[Frontend(IP("198.19.0.10"), 80, "TCP")]
    assert web.backends == (BackendRef(IP("198.18.16.2"), 8080, "TCP"),
                            BackendRef(IP("198.18.17.2"), 9090, "TCP", BackendFlags.FOREIGN))
    back = lb_state(service_table(state(PODS, WEB), "n1"))
    assert all(not ref.flags for ref in back.frontends[
        Frontend(IP("198.19.0.10"), 80, "TCP")].backends), "the flag goes with the annotation"
