"""What every Service means on one node: its frontends (address, port, protocol) and the
backends new flows to each may go to. Both dataplanes program exactly this."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from ipaddress import ip_network

from sluice.compile.serviceendpoints import ServiceEndpoint, service_endpoints, slices_of
from sluice.datastore.state import ClusterState
from sluice.model import Node, Service
from sluice.model.addresses import IPAddress, IPNetwork
from sluice.model.fieldtypes import Protocol
from sluice.model.service import ServicePort

NODE_PORT_RANGE = range(30000, 32768)
ANNOTATION_PREFIX = "sluice.io/"


class FrontendScope(Enum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_IP = "ExternalIP"

    @property
    def is_external(self) -> bool:
        return self is not FrontendScope.CLUSTER_IP


@dataclass(frozen=True, order=True)
class Frontend:
    address: IPAddress
    port: int
    protocol: Protocol

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class ServicePlan:
    service: str  # "namespace/name"
    port_name: str | None
    frontend: Frontend
    scope: FrontendScope
    backends: tuple[ServiceEndpoint, ...]  # where new flows go; empty: reject at once
    local_only: bool = False  # traffic policy Local restricted the backends to this node
    affinity_timeout: int | None = None
    source_ranges: tuple[IPNetwork, ...] = ()  # LoadBalancer only; empty: everyone
    annotations: tuple[tuple[str, str], ...] = ()  # the Service's sluice.io/ annotations

    def annotation(self, name: str) -> str | None:
        return dict(self.annotations).get(ANNOTATION_PREFIX + name)


@dataclass(frozen=True)
class ServiceTable:
    plans: tuple[ServicePlan, ...]
    problems: tuple[str, ...] = ()

    def for_frontend(self, frontend: Frontend) -> ServicePlan | None:
        return next((p for p in self.plans if p.frontend == frontend), None)


@dataclass(frozen=True)
class _Remembered:
    """One Service's plans and what they were made from (objects compared by identity:
    the datastore shares unchanged objects between states, and they are immutable)."""

    objects: tuple[object, ...]
    node_ports: tuple[int | None, ...]
    plans: tuple[ServicePlan, ...]

    def still(self, objects: tuple[object, ...], node_ports: tuple[int | None, ...]) -> bool:
        return (len(objects) == len(self.objects) and node_ports == self.node_ports
                and all(a is b for a, b in zip(objects, self.objects, strict=True)))


_remembered: dict[str, dict[tuple[str, str], _Remembered]] = {}
"""By node: the last table's plans per Service, so that a change recompiles only the
Services it touched."""


def service_table(state: ClusterState, node_name: str) -> ServiceTable:
    node = next((n for n in state.nodes() if n.name == node_name), None)
    node_ips = _node_ips(node)
    node_ports = node_port_allocation(state.services())
    plans: list[ServicePlan] = []
    problems: list[str] = []
    last = _remembered.get(node_name, {})
    remembered: dict[tuple[str, str], _Remembered] = {}
    for service in state.services():
        if service.spec.type == "ExternalName" or service.spec.is_headless:
            continue
        if not service.spec.cluster_ip_addresses:
            problems.append(f"Service {service.namespace}/{service.name} has no clusterIP; "
                            "only its external frontends are programmed")
        name = (service.namespace, service.name)
        slices = slices_of(state, service)
        ports = tuple(node_ports.get((*name, index)) for index in range(len(service.spec.ports)))
        # Endpoints derived from pods (no slices, a selector) depend on every pod: not kept.
        objects = (service, node, *slices) if slices or not service.spec.selector else None
        earlier = last.get(name)
        if objects is not None and earlier is not None and earlier.still(objects, ports):
            plans.extend(earlier.plans)
            remembered[name] = earlier
            continue
        made: list[ServicePlan] = []
        for index, port in enumerate(service.spec.ports):
            endpoints = service_endpoints(state, service, port)
            for scope, address, number in _frontends(service, port, ports[index], node_ips):
                made.append(_plan(service, port, Frontend(address, number, port.protocol),
                                  scope, endpoints=endpoints, node_name=node_name))
        plans.extend(made)
        if objects is not None:
            remembered[name] = _Remembered(objects, ports, tuple(made))
    _remembered[node_name] = remembered
    plans.sort(key=lambda p: (p.frontend.address.version, int(p.frontend.address),
                              p.frontend.port, p.frontend.protocol))
    return ServiceTable(tuple(plans), tuple(problems))


def _node_ips(node: Node | None) -> tuple[IPAddress, ...]:
    if node is None:
        return ()
    return node.addresses_of("InternalIP") + node.addresses_of("ExternalIP")


def _frontends(service: Service, port: ServicePort, node_port: int | None,
               node_ips: tuple[IPAddress, ...]) -> list[tuple[FrontendScope, IPAddress, int]]:
    spec = service.spec
    found = [(FrontendScope.CLUSTER_IP, ip, port.port) for ip in spec.cluster_ip_addresses]
    families = {ip.version for ip in spec.cluster_ip_addresses}
    found += [(FrontendScope.EXTERNAL_IP, ip, port.port) for ip in spec.external_ips]
    if spec.type == "LoadBalancer":
        found += [(FrontendScope.LOAD_BALANCER, ingress.ip, port.port)
                  for ingress in service.status.load_balancer.ingress if ingress.ip is not None]
    if node_port is not None:
        # A node port listens on the node's addresses of the service's families.
        found += [(FrontendScope.NODE_PORT, ip, node_port) for ip in node_ips
                  if not families or ip.version in families]
    return found


def _plan(service: Service, port: ServicePort, frontend: Frontend, scope: FrontendScope, *,
          endpoints: tuple[ServiceEndpoint, ...], node_name: str) -> ServicePlan:
    spec = service.spec
    policy = (spec.external_traffic_policy if scope.is_external
              else spec.internal_traffic_policy)
    local_only = policy == "Local"
    candidates = [e for e in endpoints if e.address.version == frontend.address.version]
    if local_only:
        candidates = [e for e in candidates if e.node == node_name]
    selected = [e for e in candidates if e.ready]
    if not selected:
        # Kubernetes falls back to serving-but-terminating endpoints rather than fail.
        selected = [e for e in candidates if e.serving and e.terminating]
    ranges: tuple[IPNetwork, ...] = ()
    if scope is FrontendScope.LOAD_BALANCER:
        ranges = tuple(ip_network(r) for r in spec.load_balancer_source_ranges
                       if ip_network(r).version == frontend.address.version)
    annotations = tuple(sorted((k, v) for k, v in service.metadata.annotations.items()
                               if k.startswith(ANNOTATION_PREFIX)))
    return ServicePlan(f"{service.namespace}/{service.name}", port.name, frontend, scope,
                       tuple(selected), local_only, spec.affinity_timeout, ranges, annotations)


def node_port_allocation(services: tuple[Service, ...]) -> dict[tuple[str, str, int], int]:
    """Node ports by (namespace, name, port index): the declared ones, and for ports that
    declare none a stable choice every node makes alike (the API server's job in a real
    cluster; the file datastore has no API server)."""
    wanting: list[tuple[str, str, int]] = []
    taken: dict[tuple[str, str, int], int] = {}
    for service in services:
        spec = service.spec
        if spec.type not in ("NodePort", "LoadBalancer"):
            continue
        if spec.type == "LoadBalancer" and spec.allocate_load_balancer_node_ports is False:
            continue
        for index, port in enumerate(spec.ports):
            key = (service.namespace, service.name, index)
            if port.node_port is not None:
                taken[key] = port.node_port
            else:
                wanting.append(key)
    used = set(taken.values())
    for key in sorted(wanting):
        digest = int.from_bytes(hashlib.sha256("/".join(map(str, key)).encode()).digest()[:4])
        offset = digest % len(NODE_PORT_RANGE)
        for step in range(len(NODE_PORT_RANGE)):
            candidate = NODE_PORT_RANGE[(offset + step) % len(NODE_PORT_RANGE)]
            if candidate not in used:
                taken[key] = candidate
                used.add(candidate)
                break
    return taken
