"""What a lab looks like before anything is made: pure functions of its name and options.

Addresses (per --ip-family; dual-stack labs use both):

    underlay     198.18.0.0/24        fd00:ff::/64
    node i       198.18.0.(10+i)      fd00:ff::(10+i)      (i = 1..MAX_NODES)
    external     198.18.0.250         fd00:ff::250
    pods, node i 198.18.(16+i).0/24   fd00:10:i::/64
    services     198.19.0.0/16        fd00:96::/108        (clusterIPs the lab allocates)
    load balancer 198.18.200.0/24     fd00:97::/112        (ingress IPs of LoadBalancer
                                                            Services; external routes
                                                            them via node1)

Nodes route the service and load balancer ranges out of their uplink (no gateway), as a
real node's default route would; see NodePlan.uplink_routes.

Pod MTU leaves room for the VXLAN encapsulation (50 bytes over an IPv4 underlay, 70 over
IPv6-only) and is 1500 with native routing; every underlay link has MTU 1500.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

from sluice.apply import xtables
from sluice.lab import names
from sluice.lab.errors import LabError

Dataplane: TypeAlias = Literal["bpf", "iptables"]
Routing: TypeAlias = Literal["vxlan", "native"]
IPFamilyOption: TypeAlias = Literal["ipv4", "ipv6", "dual"]
DatastoreKind: TypeAlias = Literal["file", "etcd"]

DATAPLANES: tuple[Dataplane, ...] = ("bpf", "iptables")
ROUTINGS: tuple[Routing, ...] = ("vxlan", "native")
IP_FAMILIES: tuple[IPFamilyOption, ...] = ("ipv4", "ipv6", "dual")
DATASTORES: tuple[DatastoreKind, ...] = ("file", "etcd")

MAX_NODES = 64
UNDERLAY_V4 = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY_V6 = ipaddress.IPv6Network("fd00:ff::/64")
SERVICE_V4 = ipaddress.IPv4Network("198.19.0.0/16")
SERVICE_V6 = ipaddress.IPv6Network("fd00:96::/108")
LOAD_BALANCER_V4 = ipaddress.IPv4Network("198.18.200.0/24")
LOAD_BALANCER_V6 = ipaddress.IPv6Network("fd00:97::/112")
EXTERNAL_HOST = 250
NODE_HOST_BASE = 10
POD_V4_BASE = 16
UNDERLAY_MTU = 1500
VXLAN_OVERHEAD = {4: 50, 6: 70}  # by underlay family: outer IP + UDP + VXLAN + inner Ethernet
AGENT_LISTEN = "127.0.0.1:9962"
UPLINK = "eth0"
ETCD_HOST = 2
"""With --datastore etcd, etcd listens on host 2 of the underlay (198.18.0.2, fd00:ff::2),
an address of the underlay namespace's bridge."""
ETCD_CLIENT_PORT = 2379


@dataclass(frozen=True)
class LabOptions:
    nodes: int = 2
    dataplane: Dataplane = "bpf"
    routing: Routing = "vxlan"
    ip_family: IPFamilyOption = "dual"
    node_dataplanes: tuple[tuple[str, Dataplane], ...] = ()
    """(node, dataplane) pairs that override `dataplane` for those nodes (mixed clusters,
    and what `lab switch` changed)."""
    masquerade: bool = False
    """Agents masquerade pod traffic leaving the cluster (off by default: the underlay
    routes pod CIDRs, as a routed fabric would, and `external` sees pod addresses)."""
    non_masquerade_cidrs: str = ""
    """The agents' --non-masquerade-cidrs ("": the agent's default)."""
    datastore: DatastoreKind = "file"
    """Where the lab's objects live: a file:// directory, or an etcd the lab runs."""
    iptables_backend: str = "system"
    """The iptables-mode agents' --iptables-backend."""

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {MAX_NODES}, got {self.nodes}")
        # state.json gives lists; keep the options hashable and comparable.
        pairs = tuple((str(node), dataplane) for node, dataplane in self.node_dataplanes)
        object.__setattr__(self, "node_dataplanes", pairs)
        known = {names.node_name(index) for index in range(1, self.nodes + 1)}
        for node, dataplane in pairs:
            if node not in known:
                raise LabError(f"--node-dataplane {node}={dataplane}: the lab has no node "
                               f"{node!r} (nodes: {', '.join(sorted(known))})")
            if dataplane not in DATAPLANES:
                raise LabError(f"--node-dataplane {node}={dataplane}: the dataplane must be "
                               f"one of {', '.join(DATAPLANES)}")
        backends = [b.value for b in xtables.Backend]
        if self.iptables_backend not in backends:
            raise LabError(f"--iptables-backend {self.iptables_backend}: must be one of "
                           f"{', '.join(backends)}")

    def dataplane_of(self, node: str) -> Dataplane:
        """The dataplane NODE runs: its override, else the lab's."""
        return dict(self.node_dataplanes).get(node, self.dataplane)

    def with_node_dataplane(self, node: str, dataplane: Dataplane) -> LabOptions:
        """These options with NODE running DATAPLANE."""
        pairs = dict(self.node_dataplanes)
        pairs[node] = dataplane
        return replace(self, node_dataplanes=tuple(sorted(pairs.items())))

    @property
    def families(self) -> tuple[int, ...]:
        """IP versions in the lab, primary first: (4,), (6,) or (4, 6)."""
        return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[self.ip_family]

    @property
    def pod_mtu(self) -> int:
        if self.routing != "vxlan":
            return UNDERLAY_MTU
        # Tunnels run over IPv4 whenever the nodes have it (see compile.topology).
        underlay = 4 if 4 in self.families else 6
        return UNDERLAY_MTU - VXLAN_OVERHEAD[underlay]


def parse_node_dataplanes(text: str) -> tuple[tuple[str, Dataplane], ...]:
    """`NODE=DATAPLANE[,NODE=DATAPLANE...]` as (node, dataplane) pairs; LabError naming
    the bad part."""
    pairs: dict[str, Dataplane] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        node, sep, dataplane = part.partition("=")
        if not sep or not node or dataplane not in DATAPLANES:
            raise LabError(f"--node-dataplane {text!r}: {part!r} is not NODE=DATAPLANE with "
                           f"DATAPLANE one of {', '.join(DATAPLANES)}")
        pairs[node] = dataplane
    return tuple(sorted(pairs.items()))


def _host(network: ipaddress.IPv4Network | ipaddress.IPv6Network, number: int) -> str:
    """Host NUMBER of NETWORK; in IPv6 the decimal digits are reused (::11 for 11)."""
    if network.version == 4:
        return str(network.network_address + number)
    return str(ipaddress.IPv6Address(f"{network.network_address}{number}"))


def underlay_address(family: int, number: int) -> str:
    return _host(UNDERLAY_V4 if family == 4 else UNDERLAY_V6, number)


def etcd_addresses(options: LabOptions) -> tuple[str, ...]:
    """The addresses the lab's etcd listens on, primary family first."""
    return tuple(underlay_address(family, ETCD_HOST) for family in options.families)


def etcd_endpoint(options: LabOptions) -> str:
    """HOST:PORT of the lab's etcd for clients, in the primary family."""
    address = etcd_addresses(options)[0]
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{ETCD_CLIENT_PORT}"


def underlay_prefix(family: int) -> int:
    return (UNDERLAY_V4 if family == 4 else UNDERLAY_V6).prefixlen


def service_range(family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return SERVICE_V4 if family == 4 else SERVICE_V6


def load_balancer_pool(family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return LOAD_BALANCER_V4 if family == 4 else LOAD_BALANCER_V6


def pod_cidr(family: int, index: int) -> str:
    if family == 4:
        return f"198.18.{POD_V4_BASE + index}.0/24"
    return str(ipaddress.IPv6Network(f"fd00:10:{index}::/64"))


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int
    netns: str
    addresses: tuple[str, ...]
    """Underlay (InternalIP) addresses, primary family first."""
    pod_cidrs: tuple[str, ...]
    """Pod CIDRs, in the same family order."""
    pin_dir: str
    cgroup: str
    uplink_routes: tuple[str, ...] = ()
    """CIDRs routed out of the uplink without a gateway: the service and load balancer
    ranges. They stand in for a real node's default route, which kube-proxy-style rules
    rely on: a locally made connection to a clusterIP is routed before it is DNATed, and
    a packet to a Service without endpoints is rejected in the filter table only after
    it was routed."""


@dataclass(frozen=True)
class EndpointPlan:
    """A namespace on the underlay that is not a node (the external one)."""

    netns: str
    addresses: tuple[str, ...]
    routes: tuple[tuple[str, str], ...] = ()
    """(CIDR, via) besides those to the nodes' pod CIDRs: the load balancer pools via
    node1, whose datapath answers for every LoadBalancer IP."""


@dataclass(frozen=True)
class LabPlan:
    name: str
    options: LabOptions
    underlay_netns: str
    external: EndpointPlan
    nodes: tuple[NodePlan, ...]

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise LabError(f"lab {self.name} has no node {name!r} (nodes: {known})")


def plan_lab(name: str, options: LabOptions) -> LabPlan:
    names.check_lab_name(name)
    families = options.families
    nodes = tuple(
        NodePlan(
            name=names.node_name(index),
            index=index,
            netns=names.node_netns(name, names.node_name(index)),
            addresses=tuple(underlay_address(f, NODE_HOST_BASE + index) for f in families),
            pod_cidrs=tuple(pod_cidr(f, index) for f in families),
            pin_dir=str(names.pin_dir(name, names.node_name(index))),
            cgroup=names.node_cgroup(name, names.node_name(index)),
            uplink_routes=tuple(str(cidr) for f in families
                                for cidr in (service_range(f), load_balancer_pool(f))),
        )
        for index in range(1, options.nodes + 1)
    )
    external = EndpointPlan(
        netns=names.external_netns(name),
        addresses=tuple(underlay_address(f, EXTERNAL_HOST) for f in families),
        routes=tuple((str(load_balancer_pool(f)), via)
                     for f, via in zip(families, nodes[0].addresses, strict=True)),
    )
    return LabPlan(name, options, names.underlay_netns(name), external, nodes)
