"""Naming places in a lab on the command line.

Where a command runs (`exec` TARGET, `probe` FROM):
    NS/POD       the pod's namespace (the node's for a hostNetwork pod)
    node/NODE    the node's host namespace
    external     the namespace outside the cluster, on the underlay
    underlay     the underlay bridge's namespace (exec only)

Processes started there (probes, `exec`) join the place's cgroup: the pod's, the node's
`host/` leaf, or the lab's `external`/`underlay` one.

What a probe connects to (`probe` TO), on the PORT given:
    NS/POD                    the pod's IP of the probe's family
    svc/NS/NAME               the Service's clusterIP of that family, from the datastore
    nodeport/NODE/NS/NAME     the node's InternalIP of that family, on the nodePort of the
                              Service's port PORT (and the probe's protocol)
    lb/NS/NAME                the Service's first status.loadBalancer.ingress IP of that family
    node/NODE                 the node's InternalIP of that family
    an IP                     as given
The family, when not given, is that of a literal IP, a Service's primary one (svc/,
nodeport/), the first ingress IP's (lb/), or the lab's first (pods, nodes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sluice.compile.services import node_port_allocation
from sluice.datastore import ClusterState, ResourceKey, open_datastore
from sluice.lab import names
from sluice.lab.errors import LabError
from sluice.lab.state import LabState, pod_key
from sluice.model import Service

SOURCE_FORMS = "NS/POD, node/NODE or external"
EXEC_FORMS = "NS/POD, node/NODE, external or underlay"
DESTINATION_FORMS = ("NS/POD, svc/NS/NAME, nodeport/NODE/NS/NAME, lb/NS/NAME, node/NODE "
                     "or an IP address")


@dataclass(frozen=True)
class Place:
    """A namespace to run in, and the cgroup processes started there belong to."""

    label: str
    netns: str
    cgroup: str


def resolve_place(state: LabState, text: str, *, allow_underlay: bool = False) -> Place:
    lab = state.name
    if text == "external":
        return Place(text, names.external_netns(lab), names.outside_cgroup(lab, "external"))
    if text == "underlay" and allow_underlay:
        return Place(text, names.underlay_netns(lab), names.outside_cgroup(lab, "underlay"))
    kind, sep, rest = text.partition("/")
    if sep and kind == "node" and rest:
        node = state.plan.node(rest)
        return Place(text, node.netns, names.node_host_cgroup(lab, node.name))
    if sep and rest and "/" not in rest:
        record = state.pods.get(pod_key(kind, rest))
        if record is None:
            raise LabError(f"no pod {text} in lab {lab} (see: sluice lab get --name {lab} pods)")
        return Place(text, record.netns, record.cgroup)
    forms = EXEC_FORMS if allow_underlay else SOURCE_FORMS
    raise LabError(f"{text!r} is not a place in the lab: expected {forms}")


@dataclass(frozen=True)
class Destination:
    label: str
    address: str
    family: int
    port: int
    """The port to connect to: PORT as given, or for nodeport/ the node port."""
    service_port: int | None = None
    """For nodeport/: the Service port PORT that was mapped to its node port."""


def _pick(label: str, candidates: list[str], family: int | None) -> tuple[str, int]:
    for address in candidates:
        version = ipaddress.ip_address(address).version
        if family is None or version == family:
            return address, version
    have = ", ".join(candidates) or "none"
    raise LabError(f"{label} has no IPv{family} address (it has: {have})")


def resolve_destination(state: LabState, text: str, family: int | None, port: int,
                        protocol: str = "TCP") -> Destination:
    """Where TEXT points for a probe to PORT over PROTOCOL, in FAMILY (default: see the
    module's docstring)."""
    try:
        literal = ipaddress.ip_address(text)
    except ValueError:
        literal = None
    if literal is not None:
        if family is not None and literal.version != family:
            raise LabError(f"{text} is IPv{literal.version}, not IPv{family}")
        return Destination(text, str(literal), literal.version, port)
    parts = text.split("/")
    if len(parts) == 3 and parts[0] == "svc" and all(parts[1:]):
        service = _service(state, parts[1], parts[2])[0]
        ips = [str(ip) for ip in service.spec.cluster_ip_addresses]
        return Destination(text, *_pick(text, ips, family), port)
    if len(parts) == 3 and parts[0] == "lb" and all(parts[1:]):
        service = _service(state, parts[1], parts[2])[0]
        ips = load_balancer_ips(service)
        if not ips:
            raise LabError(f"{text}: {service.ref} has no load balancer IP "
                           f"(type {service.spec.type})")
        return Destination(text, *_pick(text, ips, family), port)
    if len(parts) == 4 and parts[0] == "nodeport" and all(parts[1:]):
        node = state.plan.node(parts[1])
        service, snapshot = _service(state, parts[2], parts[3])
        node_port = node_port_of(service, snapshot, port, protocol)
        if family is None:
            primary = [ip.version for ip in service.spec.cluster_ip_addresses][:1]
            family = next((f for f in primary if any(
                ipaddress.ip_address(a).version == f for a in node.addresses)), None)
        address, version = _pick(f"node {node.name}", list(node.addresses), family)
        return Destination(text, address, version, node_port, service_port=port)
    if len(parts) == 2 and parts[0] == "node" and parts[1]:
        addresses = list(state.plan.node(parts[1]).addresses)
        return Destination(text, *_pick(text, addresses, family), port)
    if len(parts) == 2 and all(parts):
        record = state.pods.get(pod_key(parts[0], parts[1]))
        if record is None:
            raise LabError(f"no pod {text} in lab {state.name} "
                           f"(see: sluice lab get --name {state.name} pods)")
        return Destination(text, *_pick(text, record.ips, family), port)
    raise LabError(f"{text!r} is not a destination: expected {DESTINATION_FORMS}")


def _service(state: LabState, namespace: str, name: str) -> tuple[Service, ClusterState]:
    with open_datastore(state.paths.datastore_url) as datastore:
        snapshot = datastore.snapshot()
    service = snapshot.get(ResourceKey("Service", namespace, name))
    if not isinstance(service, Service):
        raise LabError(f"no Service {namespace}/{name} in lab {state.name} "
                       f"(see: sluice lab get --name {state.name} services)")
    return service, snapshot


def load_balancer_ips(service: Service) -> list[str]:
    """The Service's status.loadBalancer.ingress IPs, in order."""
    return [str(ingress.ip) for ingress in service.status.load_balancer.ingress
            if ingress.ip is not None]


def node_port_of(service: Service, snapshot: ClusterState, port: int, protocol: str) -> int:
    """The node port of SERVICE's port PORT/PROTOCOL: declared, or the one every agent
    computes for it (`node_port_allocation` over all Services of SNAPSHOT)."""
    ports = service.spec.ports
    index = next((i for i, p in enumerate(ports) if (p.port, p.protocol) == (port, protocol)),
                 None)
    if index is None:
        listed = ", ".join(f"{p.port}/{p.protocol}" for p in ports) or "none"
        raise LabError(f"{service.ref} has no port {port}/{protocol} (ports: {listed})")
    node_port = node_port_allocation(snapshot.services()).get(
        (service.namespace, service.name, index))
    if node_port is None:
        why = ("allocateLoadBalancerNodePorts is false" if service.spec.type == "LoadBalancer"
               else f"it is of type {service.spec.type}")
        raise LabError(f"{service.ref} has no node port ({why})")
    return node_port
