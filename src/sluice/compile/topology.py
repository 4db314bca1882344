"""This node and its peers, as the datastore's Node objects describe them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sluice.datastore.state import ClusterState
from sluice.model import Node
from sluice.model.addresses import IPAddress, IPNetwork


class RoutingMode(Enum):
    """How pod traffic crosses between nodes."""

    VXLAN = "vxlan"  # an overlay: pod packets encapsulated toward the peer's underlay address
    NATIVE = "native"  # nodes on one L2 underlay: pod packets routed via the peer's address


class Dataplane(Enum):
    """Which datapath a node runs."""

    BPF = "bpf"  # eBPF host routing: pod traffic bypasses the host's routing and netfilter
    IPTABLES = "iptables"  # standard Linux: host routes, kernel VXLAN, the host stack forwards


# On a Node: the dataplane its agent runs (default bpf). A bpf node SNATs external flows it
# forwards to a backend on an iptables node, which could not return their replies.
DATAPLANE_ANNOTATION = "sluice.io/dataplane"


def node_dataplane(node: Node) -> Dataplane:
    """The dataplane NODE's annotation names; bpf when it names none or an unknown one."""
    value = node.metadata.annotations.get(DATAPLANE_ANNOTATION, Dataplane.BPF.value)
    return Dataplane.IPTABLES if value == Dataplane.IPTABLES.value else Dataplane.BPF


class UnknownNodeError(LookupError):
    """The datastore has no Node object of this name (yet)."""


@dataclass(frozen=True)
class NodeAddressing:
    name: str
    internal_ips: tuple[IPAddress, ...]
    pod_cidrs: tuple[IPNetwork, ...]

    def internal_ip(self, version: int) -> IPAddress | None:
        return next((ip for ip in self.internal_ips if ip.version == version), None)


@dataclass(frozen=True)
class NodeView:
    """This node and every other node that has pod CIDRs."""

    local: NodeAddressing
    peers: tuple[NodeAddressing, ...]

    @property
    def name(self) -> str:
        return self.local.name

    @property
    def underlay_version(self) -> int:
        """The address family tunnels use: IPv4 when this node has an IPv4 address."""
        return 4 if self.local.internal_ip(4) is not None else 6


def node_view(state: ClusterState, node_name: str) -> NodeView:
    addressing = {
        node.metadata.name: NodeAddressing(node.metadata.name, node.internal_ips, node.spec.cidrs)
        for node in state.nodes()
    }
    local = addressing.pop(node_name, None)
    if local is None:
        raise UnknownNodeError(f"the datastore has no Node named {node_name!r}")
    peers = tuple(sorted((p for p in addressing.values() if p.pod_cidrs), key=lambda p: p.name))
    return NodeView(local, peers)
