"""bpf mode: the map entries and program attachments a node needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sluice.compile.devices import HOST_DEVICE, TUNNEL_DEVICE
from sluice.compile.endpoints import LocalEndpoints
from sluice.compile.podroutes import PodCidrPlace, pod_cidr_routes
from sluice.compile.topology import NodeView, RoutingMode
from sluice.datapath.routing import RouteKind
from sluice.model.addresses import IPAddress, IPNetwork

_ROUTE_KINDS = {
    PodCidrPlace.LOCAL: RouteKind.LOCAL_PODS,
    PodCidrPlace.TUNNEL: RouteKind.REMOTE_TUNNEL,
    PodCidrPlace.NATIVE: RouteKind.REMOTE_NATIVE,
}


@dataclass(frozen=True)
class EndpointSpec:
    host_ifname: str
    host_ifindex: int
    pod_mac: str
    host_mac: str
    identity: int = 0


@dataclass(frozen=True)
class RouteSpec:
    kind: RouteKind
    next_hop: IPAddress | None = None

    @property
    def via_tunnel(self) -> bool:
        """Pod traffic needs the tunnel device (apply fills in its ifindex)."""
        return self.kind is RouteKind.REMOTE_TUNNEL

    @property
    def remote(self) -> bool:
        """Service traffic for outside clients goes through the tunnel on any remote route."""
        return self.kind is not RouteKind.LOCAL_PODS


@dataclass(frozen=True)
class BpfState:
    endpoints: Mapping[IPAddress, EndpointSpec]
    routes: Mapping[IPNetwork, RouteSpec]
    endpoint_devices: frozenset[str]  # host veths: from_endpoint on tc ingress
    network_devices: frozenset[str]  # tunnel device and uplink: from_network on tc ingress
    host_device: str  # from_host on tc egress
    uplink: str = ""  # to_network on tc egress, prefilter_xdp on XDP ("" when unknown)
    problems: tuple[str, ...] = ()


def bpf_state(view: NodeView, endpoints: LocalEndpoints, mode: RoutingMode,
              uplink: str, identities: Mapping[IPAddress, int] | None = None) -> BpfState:
    """IDENTITIES: each local pod address's policy identity (0 where absent)."""
    identity_of = identities or {}
    entries = {
        address: EndpointSpec(e.host_ifname, e.host_ifindex, e.pod_mac, e.host_mac,
                              identity_of.get(address, 0))
        for e in endpoints.endpoints for address in e.addresses
    }
    cidr_routes = pod_cidr_routes(view, mode)
    routes = {r.cidr: RouteSpec(_ROUTE_KINDS[r.place], r.next_hop) for r in cidr_routes.routes}
    return BpfState(
        endpoints=entries,
        routes=routes,
        endpoint_devices=frozenset(e.host_ifname for e in endpoints.endpoints),
        # The uplink takes node port traffic; the tunnel carries pod traffic in VXLAN mode
        # and, in both modes, service traffic forwarded for outside clients.
        network_devices=frozenset(d for d in (TUNNEL_DEVICE, uplink) if d),
        host_device=HOST_DEVICE,
        uplink=uplink,
        problems=endpoints.problems + cidr_routes.problems,
    )
