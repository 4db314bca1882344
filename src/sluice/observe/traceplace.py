"""What `sluice trace` knows of the cluster around a traced packet, and the names its
--from and --to take.

    NS/POD          a pod's IP (of --family, else its first)
    svc:NS/NAME     (--to) a Service's clusterIP, on its port --port (default: its first)
    node:NAME       a node's InternalIP; from a node, the packet is the host's own
    host            the traced node's own InternalIP (with --node)
    world:IP, IP    an address as given (world: says it is outside the cluster)

Names are resolved through the cluster's datastore (a lab's, or --datastore URL); the
nodes a trace may cross come from the lab plan (pin directory and network namespace of
each), or are the one node given by --pin-dir/--node.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sluice.compile.policy import RESERVED_RULE_ORIGINS, rule_ids
from sluice.compile.services import node_port_allocation
from sluice.datastore import ClusterState
from sluice.lab.state import LabState
from sluice.model import Pod, Service
from sluice.model.addresses import IPAddress, IPNetwork

SOURCE_FORMS = "NS/POD, node:NAME, host, world:IP or an IP"
DESTINATION_FORMS = "NS/POD, svc:NS/NAME, node:NAME, host, world:IP or an IP"


class TraceInputError(ValueError):
    """--from or --to names nothing the trace can find."""


@dataclass(frozen=True)
class NodeRef:
    """A node of the cluster: where its pins are (empty: not traceable from here), and
    the network namespace its devices live in (None: the caller's)."""

    name: str
    pin_dir: str
    netns: str | None = None
    addresses: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Party:
    """One end of the traced flow."""

    text: str
    kind: str  # pod, service, node, world, ip
    address: IPAddress
    name: str | None = None  # NS/POD, NS/NAME of a Service, node name
    node: str | None = None  # a pod's node, or the node itself
    port: int | None = None  # a Service's port

    def label(self) -> str:
        if self.kind == "service":
            return f"service {self.name}"
        if self.kind in ("pod", "node"):
            return f"{self.kind} {self.name}"
        return "world" if self.kind == "world" else str(self.address)

    def as_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"text": self.text, "kind": self.kind,
                                  "address": str(self.address)}
        if self.name:
            doc["name"] = self.name
        if self.node:
            doc["node"] = self.node
        return doc


@dataclass
class Cluster:
    """Names of addresses, as far as the trace knows them."""

    nodes: dict[str, NodeRef] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)  # NS/POD
    services: dict[str, Service] = field(default_factory=dict)  # NS/NAME
    pod_by_ip: dict[IPAddress, str] = field(default_factory=dict)
    frontends: dict[tuple[IPAddress, int, str], str] = field(default_factory=dict)
    rule_origins: dict[int, str] = field(default_factory=lambda: dict(RESERVED_RULE_ORIGINS))
    has_datastore: bool = False

    @classmethod
    def from_state(cls, snapshot: ClusterState | None, nodes: dict[str, NodeRef]) -> Cluster:
        cluster = cls(nodes=dict(nodes))
        if snapshot is None:
            return cluster
        cluster.has_datastore = True
        for pod in snapshot.pods():
            if not pod.spec.host_network:
                cluster.pods[f"{pod.namespace}/{pod.name}"] = pod
                cluster.pod_by_ip.update({ip: f"{pod.namespace}/{pod.name}" for ip in pod.ips})
        services = snapshot.services()
        node_ports = node_port_allocation(services)
        node_ips = [ip for node in snapshot.nodes() for ip in node.internal_ips]
        for service in services:
            name = f"{service.namespace}/{service.name}"
            cluster.services[name] = service
            addresses = (*service.spec.cluster_ip_addresses, *service.spec.external_ips)
            for index, port in enumerate(service.spec.ports):
                for address in addresses:
                    cluster.frontends[(address, port.port, port.protocol)] = name
                node_port = node_ports.get((service.namespace, service.name, index))
                for address in node_ips if node_port else ():
                    cluster.frontends[(address, node_port or 0, port.protocol)] = \
                        f"{name} (node port)"
        origins = {rule_id: origin for origin, rule_id in rule_ids(snapshot).items()}
        cluster.rule_origins.update(origins)
        for node in snapshot.nodes():
            ref = cluster.nodes.get(node.name) or NodeRef(node.name, "")
            if not ref.addresses:
                cidrs = tuple(ipaddress.ip_network(c) for c in node.spec.pod_cidrs)
                cluster.nodes[node.name] = NodeRef(ref.name, ref.pin_dir, ref.netns,
                                                   node.internal_ips, cidrs)
        return cluster

    def node_with_address(self, address: IPAddress) -> NodeRef | None:
        return next((n for n in self.nodes.values() if address in n.addresses), None)

    def node_with_pod_cidr(self, address: IPAddress) -> NodeRef | None:
        return next((n for n in self.nodes.values()
                     if any(address.version == c.version and address in c
                            for c in n.pod_cidrs)), None)

    def name_of(self, address: IPAddress, port: int | None = None,
                protocol: str | None = None) -> str | None:
        """What ADDRESS (and PORT) is: a pod, a service frontend, a node."""
        if port is not None and protocol is not None:
            frontend = self.frontends.get((address, port, protocol))
            if frontend:
                return f"service {frontend}"
        pod = self.pod_by_ip.get(address)
        if pod:
            return f"pod {pod}"
        node = self.node_with_address(address)
        return f"node {node.name}" if node else None


def lab_nodes(state: LabState) -> dict[str, NodeRef]:
    return {node.name: NodeRef(node.name, node.pin_dir, node.netns,
                               tuple(ipaddress.ip_address(a) for a in node.addresses),
                               tuple(ipaddress.ip_network(c) for c in node.pod_cidrs))
            for node in state.plan.nodes}


def _pick(text: str, candidates: tuple[IPAddress, ...], family: int | None) -> IPAddress:
    for address in candidates:
        if family is None or address.version == family:
            return address
    have = ", ".join(map(str, candidates)) or "none"
    raise TraceInputError(f"{text} has no IPv{family} address (it has: {have})")


def resolve(text: str, cluster: Cluster, *, family: int | None, node: str | None,
            destination: bool) -> Party:
    """The party TEXT names (see the module's docstring)."""
    forms = DESTINATION_FORMS if destination else SOURCE_FORMS
    literal = text.removeprefix("world:")
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        address = None
    if address is not None:
        if family is not None and address.version != family:
            raise TraceInputError(f"{text} is IPv{address.version}, not IPv{family}")
        known = cluster.pod_by_ip.get(address)
        if text.startswith("world:"):
            return Party(text, "world", address)
        if known:
            return Party(text, "pod", address, known, cluster.pods[known].spec.node_name)
        owner = cluster.node_with_address(address)
        if owner:
            return Party(text, "node", address, owner.name, owner.name)
        return Party(text, "ip", address)
    if text == "host" or text.startswith("node:"):
        name = node if text == "host" else text.removeprefix("node:")
        if not name:
            raise TraceInputError("host: say which node with --node")
        ref = cluster.nodes.get(name)
        if ref is None or not ref.addresses:
            raise TraceInputError(f"{text}: the addresses of node {name} are unknown "
                                  "(give its IP, or --lab / --datastore)")
        return Party(text, "node", _pick(text, ref.addresses, family), name, name)
    if text.startswith("svc:"):
        if not destination:
            raise TraceInputError(f"{text}: a Service is a destination only")
        return _service(text, cluster, family)
    namespace, sep, name = text.partition("/")
    if sep and namespace and name and "/" not in name:
        if not cluster.has_datastore:
            raise TraceInputError(f"{text}: pods are resolved through the datastore: give "
                                  "--lab or --datastore, or the pod's IP")
        pod = cluster.pods.get(text)
        if pod is None:
            raise TraceInputError(f"no pod {text} in the datastore")
        return Party(text, "pod", _pick(text, pod.ips, family), text, pod.spec.node_name)
    raise TraceInputError(f"{text!r} is not a {'destination' if destination else 'source'}: "
                          f"expected {forms}")


def _service(text: str, cluster: Cluster, family: int | None) -> Party:
    ref = text.removeprefix("svc:")
    if not cluster.has_datastore:
        raise TraceInputError(f"{text}: Services are resolved through the datastore: give "
                              "--lab or --datastore, or the clusterIP")
    service = cluster.services.get(ref)
    if service is None:
        raise TraceInputError(f"no Service {ref} in the datastore")
    addresses = service.spec.cluster_ip_addresses
    if not addresses:
        raise TraceInputError(f"{text}: Service {ref} has no clusterIP (headless)")
    return Party(text, "service", _pick(text, addresses, family), ref)


def service_port(party: Party, cluster: Cluster, port: int | None,
                 protocol: str) -> int:
    """The destination port: --port, or a Service's first port of PROTOCOL."""
    if port is not None:
        return port
    if party.kind == "service" and party.name in cluster.services:
        ports = [p.port for p in cluster.services[party.name].spec.ports
                 if p.protocol == protocol]
        if ports:
            return ports[0]
        raise TraceInputError(f"Service {party.name} has no {protocol} port")
    if protocol == "ICMP":
        return 0
    raise TraceInputError(f"say which port with --port (to {party.text})")
