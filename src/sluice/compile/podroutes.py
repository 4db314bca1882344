"""Where every pod CIDR of the cluster lives, seen from this node: the routing decision
both dataplanes share."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sluice.compile.topology import NodeAddressing, NodeView, RoutingMode
from sluice.model.addresses import IPAddress, IPNetwork


class PodCidrPlace(Enum):
    LOCAL = "local"  # this node's own pods
    TUNNEL = "tunnel"  # another node's, reached by encapsulating toward next_hop
    NATIVE = "native"  # another node's, reached by routing via next_hop on the underlay


@dataclass(frozen=True)
class PodCidrRoute:
    cidr: IPNetwork
    place: PodCidrPlace
    node: str
    next_hop: IPAddress | None = None  # the peer's underlay address

    @property
    def is_remote(self) -> bool:
        return self.place is not PodCidrPlace.LOCAL


@dataclass(frozen=True)
class PodCidrRoutes:
    routes: tuple[PodCidrRoute, ...]
    problems: tuple[str, ...] = ()


def pod_cidr_routes(view: NodeView, mode: RoutingMode) -> PodCidrRoutes:
    routes = [PodCidrRoute(cidr, PodCidrPlace.LOCAL, view.name) for cidr in view.local.pod_cidrs]
    problems: list[str] = []
    claimed = {cidr: view.name for cidr in view.local.pod_cidrs}
    for peer in view.peers:
        for cidr in peer.pod_cidrs:
            overlap = next((c for c in claimed if c.version == cidr.version and c.overlaps(cidr)),
                           None)
            if overlap is not None:
                problems.append(f"pod CIDR {cidr} of node {peer.name} overlaps {overlap} of "
                                f"node {claimed[overlap]}; not routed")
                continue
            next_hop = _next_hop(view, peer, cidr, mode)
            if next_hop is None:
                problems.append(f"node {peer.name} has no InternalIP to reach {cidr} by "
                                f"{mode.value} routing; not routed")
                continue
            claimed[cidr] = peer.name
            place = PodCidrPlace.TUNNEL if mode is RoutingMode.VXLAN else PodCidrPlace.NATIVE
            routes.append(PodCidrRoute(cidr, place, peer.name, next_hop))
    return PodCidrRoutes(tuple(routes), tuple(problems))


def _next_hop(view: NodeView, peer: NodeAddressing, cidr: IPNetwork,
              mode: RoutingMode) -> IPAddress | None:
    if mode is RoutingMode.VXLAN:
        # One underlay family carries both pod families through the tunnel.
        return peer.internal_ip(view.underlay_version)
    # Routed natively, a pod packet needs a gateway of its own family.
    return peer.internal_ip(cidr.version)
