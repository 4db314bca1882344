"""What every Service means on one node: its frontends (address, port, protocol) and the
backends new flows to each may go to. Both dataplanes program exactly this."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from ipaddress import ip_network

from sluice.compile.serviceendpoints import (
    ServiceEndpoint,
    _slices_by_service,
    service_endpoints,
)
from sluice.compile.topology import Dataplane, node_dataplane
from sluice.datastore.changes import ResourceKey
from sluice.datastore.state import ClusterState
from sluice.model import EndpointSlice, Node, Pod, Service
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


@dataclass(frozen=True, slots=True, order=True)
class Frontend:
    address: IPAddress
    port: int
    protocol: Protocol

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
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


ServiceKey = tuple[str, str]  # (namespace, name)


class ServiceTable:
    """Every frontend's plan, grouped by Service (`groups`) and as one list sorted by
    frontend (`plans`, made when first asked for). A table made by `service_table` from
    the previous one knows which groups it changed (`changed_since`)."""

    __slots__ = ("__weakref__", "_base", "_changed", "_plans", "groups", "problem_keys",
                 "problems")

    def __init__(self, plans: Iterable[ServicePlan] = (), problems: tuple[str, ...] = (), *,
                 groups: Mapping[ServiceKey, tuple[ServicePlan, ...]] | None = None,
                 base: ServiceTable | None = None,
                 changed: frozenset[ServiceKey] = frozenset(),
                 problem_keys: frozenset[ServiceKey] = frozenset()) -> None:
        self.problem_keys = problem_keys  # the Services with a problem
        if groups is None:
            grouped: dict[ServiceKey, list[ServicePlan]] = {}
            for plan in plans:
                namespace, _, name = plan.service.partition("/")
                grouped.setdefault((namespace, name), []).append(plan)
            groups = {key: tuple(found) for key, found in grouped.items()}
        self.groups = groups
        self.problems = problems
        self._plans: tuple[ServicePlan, ...] | None = None
        self._base = weakref.ref(base) if base is not None else None
        self._changed = changed

    @property
    def plans(self) -> tuple[ServicePlan, ...]:
        if self._plans is None:
            self._plans = tuple(sorted((p for group in self.groups.values() for p in group),
                                       key=_plan_order))
        return self._plans

    def changed_since(self, earlier: ServiceTable) -> frozenset[ServiceKey]:
        """The Services whose plans differ between EARLIER and this table (a superset)."""
        if self._base is not None and self._base() is earlier:
            return self._changed
        old, new = earlier.groups, self.groups
        return frozenset([key for key, plans in new.items() if old.get(key) is not plans]
                         + [key for key in old if key not in new])

    def for_frontend(self, frontend: Frontend) -> ServicePlan | None:
        return next((p for p in self.plans if p.frontend == frontend), None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServiceTable):
            return NotImplemented
        return self.plans == other.plans and self.problems == other.problems

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ServiceTable({len(self.groups)} services, {len(self.plans)} plans)"


def _plan_order(plan: ServicePlan) -> tuple[int, int, int, str, str]:
    frontend = plan.frontend
    return (frontend.address.version, int(frontend.address), frontend.port, frontend.protocol,
            plan.service)


@dataclass(frozen=True, slots=True)
class _Remembered:
    """One Service's plans and what they were made from."""

    objects: tuple[object, ...]
    node_ports: tuple[int | None, ...]
    plans: tuple[ServicePlan, ...]
    problem: str | None
    from_pods: bool  # endpoints derived from pods (a selector, no slices)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The last table of one node and what an incremental compile needs of its state."""

    state: ClusterState
    table: ServiceTable
    node: Node | None
    node_ports: dict[tuple[str, str, int], int]
    services: dict[ServiceKey, _Remembered]
    slices: dict[ServiceKey, tuple[EndpointSlice, ...]]
    slice_owner: dict[tuple[str, str], ServiceKey]


_remembered: dict[str, _Compiled] = {}
"""By node: the last compile, so that a change recompiles only the Services it touched
(the datastore's states say which objects changed: `ClusterState.changes_since`)."""


def service_table(state: ClusterState, node_name: str) -> ServiceTable:
    last = _remembered.get(node_name)
    changed = state.changes_since(last.state) if last is not None else None
    if last is None or changed is None or _touches_node(changed, node_name):
        compiled = _compile_all(state, node_name)
    elif not changed:
        compiled = replace(last, state=state)
    else:
        del _remembered[node_name]  # updated in place: forgotten if this fails midway
        compiled = _compile_changes(last, state, node_name, changed)
    _remembered[node_name] = compiled
    return compiled.table


def _touches_node(changed: frozenset[ResourceKey], node_name: str) -> bool:
    return any(key.kind == Node.KIND and key.name == node_name for key in changed)


def _compile_all(state: ClusterState, node_name: str) -> _Compiled:
    node = next((n for n in state.nodes() if n.name == node_name), None)
    node_ports = node_port_allocation(state.services())
    slices = {key: found for key, found in state.derived(_slices_by_service).items()}
    owner = {(s.namespace, s.name): key for key, found in slices.items() for s in found}
    remembered: dict[ServiceKey, _Remembered] = {}
    for service in state.services():
        made = _compile_service(state, service, node=node, node_name=node_name,
                                node_ports=node_ports,
                                slices=slices.get((service.namespace, service.name), ()))
        if made is not None:
            remembered[(service.namespace, service.name)] = made
    return _Compiled(state, _table(remembered), node, node_ports, remembered, slices, owner)


def _compile_changes(last: _Compiled, state: ClusterState, node_name: str,
                     changed: frozenset[ResourceKey]) -> _Compiled:
    affected: set[ServiceKey] = set()
    slices = last.slices
    owner = last.slice_owner
    pod_namespaces: set[str] = set()
    node_ports_may_move = False
    for key in changed:
        if key.kind == Service.KIND:
            affected.add((key.namespace, key.name))
            for service in (last.state.get(key), state.get(key)):
                if isinstance(service, Service) and _has_node_ports(service):
                    node_ports_may_move = True
        elif key.kind == EndpointSlice.KIND:
            _move_slice(state, key, slices, owner, affected)
        elif key.kind == Pod.KIND:
            pod_namespaces.add(key.namespace)
    if pod_namespaces:
        affected.update(key for key, made in last.services.items()
                        if made.from_pods and key[0] in pod_namespaces)
    node_ports = last.node_ports
    if node_ports_may_move:
        node_ports = node_port_allocation(state.services())
        affected.update((namespace, name) for namespace, name, _ in
                        node_ports.keys() ^ last.node_ports.keys()
                        | {k for k in node_ports.keys() & last.node_ports.keys()
                           if node_ports[k] != last.node_ports[k]})
    remembered = last.services
    for name in affected:
        service = state.get(ResourceKey(Service.KIND, *name))
        made = None
        if isinstance(service, Service):
            made = _compile_service(state, service, node=last.node, node_name=node_name,
                                    node_ports=node_ports, slices=slices.get(name, ()),
                                    earlier=remembered.get(name))
        if made is None:
            remembered.pop(name, None)
        else:
            remembered[name] = made
    table = _table(remembered, base=last.table, changed=frozenset(affected))
    return _Compiled(state, table, last.node, node_ports, remembered, slices, owner)


def _has_node_ports(service: Service) -> bool:
    return service.spec.type in ("NodePort", "LoadBalancer")


def _move_slice(state: ClusterState, key: ResourceKey,
                slices: dict[ServiceKey, tuple[EndpointSlice, ...]],
                owner: dict[tuple[str, str], ServiceKey], affected: set[ServiceKey]) -> None:
    """Take the slice KEY out of the index, put its current version back in."""
    name = (key.namespace, key.name)
    before = owner.pop(name, None)
    if before is not None:
        affected.add(before)
        kept = tuple(s for s in slices.get(before, ()) if s.name != key.name)
        if kept:
            slices[before] = kept
        else:
            slices.pop(before, None)
    current = state.get(key)
    if not isinstance(current, EndpointSlice) or current.service_name is None \
            or current.address_type == "FQDN":
        return
    service = (key.namespace, current.service_name)
    owner[name] = service
    affected.add(service)
    # Listing order: by name within the namespace.
    slices[service] = tuple(sorted((*slices.get(service, ()), current), key=lambda s: s.name))


def _compile_service(state: ClusterState, service: Service, *, node: Node | None,
                     node_name: str, node_ports: Mapping[tuple[str, str, int], int],
                     slices: tuple[EndpointSlice, ...],
                     earlier: _Remembered | None = None) -> _Remembered | None:
    if service.spec.type == "ExternalName" or service.spec.is_headless:
        return None
    problem = None
    if not service.spec.cluster_ip_addresses:
        problem = (f"Service {service.namespace}/{service.name} has no clusterIP; only its "
                   "external frontends are programmed")
    name = (service.namespace, service.name)
    ports = tuple(node_ports.get((*name, index)) for index in range(len(service.spec.ports)))
    objects = (service, node, *slices)
    from_pods = not slices and bool(service.spec.selector)
    if earlier is not None and not from_pods and earlier.node_ports == ports \
            and len(objects) == len(earlier.objects) \
            and all(a is b for a, b in zip(objects, earlier.objects, strict=True)):
        return earlier
    node_ips = _node_ips(node)
    made: list[ServicePlan] = []
    for index, port in enumerate(service.spec.ports):
        endpoints = service_endpoints(state, service, port, slices)
        for scope, address, number in _frontends(service, port, ports[index], node_ips):
            made.append(_plan(service, port, Frontend(address, number, port.protocol),
                              scope, endpoints=endpoints, node_name=node_name))
    if earlier is not None and tuple(made) == earlier.plans:
        made = list(earlier.plans)  # the same plans keep their identity: nothing to write
    return _Remembered(objects, ports, tuple(made), problem, from_pods)


def _table(remembered: Mapping[ServiceKey, _Remembered], *, base: ServiceTable | None = None,
           changed: frozenset[ServiceKey] = frozenset()) -> ServiceTable:
    if base is None:
        groups = {key: made.plans for key, made in remembered.items() if made.plans}
    else:
        groups = dict(base.groups)
        for key in changed:
            made = remembered.get(key)
            if made is not None and made.plans:
                groups[key] = made.plans
            else:
                groups.pop(key, None)
    if base is None:
        with_problems = [key for key, made in remembered.items() if made.problem is not None]
    else:
        with_problems = [key for key in base.problem_keys | changed
                         if key in remembered and remembered[key].problem is not None]
    problems = tuple(remembered[key].problem or "" for key in sorted(with_problems))
    return ServiceTable(groups=groups, problems=problems, base=base, changed=changed,
                        problem_keys=frozenset(with_problems))


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


def foreign_nodes(state: ClusterState) -> frozenset[str]:
    """Nodes whose agent runs without the bpf datapath (annotation sluice.io/dataplane):
    a bpf node SNATs outside clients' flows to their backends (see compile/lbstate.py)."""
    return frozenset(node.name for node in state.nodes()
                     if node_dataplane(node) is Dataplane.IPTABLES)
