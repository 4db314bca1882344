"""The host-stack objects a node needs: devices, routes, neighbour and VXLAN forwarding
entries. In iptables mode they carry all pod traffic; in bpf mode only the host's own
traffic and the FIB lookups of native routing use them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import ip_network

from sluice.compile.devices import HOST_DEVICE, TUNNEL_DEVICE, TUNNEL_PORT, TUNNEL_VNI, tunnel_mac
from sluice.compile.endpoints import LocalEndpoints
from sluice.compile.podroutes import PodCidrPlace, PodCidrRoute, pod_cidr_routes
from sluice.compile.topology import Dataplane, NodeView, RoutingMode
from sluice.model.addresses import IPAddress, IPNetwork


class DeviceKind(Enum):
    # A device that only sinks what is routed to it, so a tc egress program sees it
    # (apply makes a `dummy`, or an `ifb` on kernels built without dummy).
    DUMMY = "dummy"
    VXLAN = "vxlan"  # fixed VNI, peers programmed as forwarding entries
    VXLAN_METADATA = "vxlan-metadata"  # collect-metadata: BPF sets the remote per packet


@dataclass(frozen=True)
class Device:
    name: str
    kind: DeviceKind
    mac: str | None = None
    local: IPAddress | None = None
    vni: int = TUNNEL_VNI
    port: int = TUNNEL_PORT


@dataclass(frozen=True, order=True)
class KernelRoute:
    dst: IPNetwork
    dev: str
    gateway: IPAddress | None = None
    onlink: bool = False


@dataclass(frozen=True)
class Neighbor:
    ip: IPAddress
    mac: str
    dev: str


@dataclass(frozen=True)
class ForwardingEntry:
    """A VXLAN forwarding database entry: frames for MAC go to the underlay address DST."""

    mac: str
    dst: IPAddress
    dev: str


@dataclass(frozen=True)
class KernelState:
    devices: tuple[Device, ...]
    routes: frozenset[KernelRoute]
    neighbors: frozenset[Neighbor] = frozenset()
    forwarding: frozenset[ForwardingEntry] = frozenset()
    problems: tuple[str, ...] = ()


def kernel_state(view: NodeView, endpoints: LocalEndpoints, mode: RoutingMode,
                 dataplane: Dataplane, uplink: str) -> KernelState:
    cidr_routes = pod_cidr_routes(view, mode)
    problems = cidr_routes.problems
    if dataplane is Dataplane.BPF:
        return _bpf_mode(cidr_routes.routes, uplink, problems)
    local_ip = view.local.internal_ip(view.underlay_version)
    if mode is RoutingMode.VXLAN and local_ip is None:
        problems += (f"node {view.name} has no InternalIP: no tunnel endpoint",)
    state = _iptables_mode(view, cidr_routes.routes, mode, uplink, local_ip)
    pods = [(e, address) for e in endpoints.endpoints for address in e.addresses]
    per_pod_routes = frozenset(KernelRoute(ip_network(a), e.host_ifname) for e, a in pods)
    # Known pod MACs: the host never has to ARP or solicit for its own pods.
    per_pod_neighbors = frozenset(Neighbor(a, e.pod_mac, e.host_ifname) for e, a in pods)
    return KernelState(state.devices, state.routes | per_pod_routes,
                       state.neighbors | per_pod_neighbors, state.forwarding,
                       problems + endpoints.problems)


def _bpf_mode(cidr_routes: tuple[PodCidrRoute, ...], uplink: str,
              problems: tuple[str, ...]) -> KernelState:
    # The tunnel exists in native mode too: service traffic from outside clients crosses
    # it to a remote backend, so the replies come back through the node the client chose.
    devices = [Device(HOST_DEVICE, DeviceKind.DUMMY),
               Device(TUNNEL_DEVICE, DeviceKind.VXLAN_METADATA)]
    routes = frozenset(
        # The FIB lookup of native routing and the host's own packets need the gateway.
        KernelRoute(r.cidr, uplink, r.next_hop) if r.place is PodCidrPlace.NATIVE
        else KernelRoute(r.cidr, HOST_DEVICE)
        for r in cidr_routes
    )
    return KernelState(tuple(devices), routes, problems=problems)


def _iptables_mode(view: NodeView, cidr_routes: tuple[PodCidrRoute, ...], mode: RoutingMode,
                   uplink: str, local_ip: IPAddress | None) -> KernelState:
    routes: set[KernelRoute] = set()
    neighbors: set[Neighbor] = set()
    forwarding: set[ForwardingEntry] = set()
    for route in cidr_routes:
        if route.place is PodCidrPlace.NATIVE:
            routes.add(KernelRoute(route.cidr, uplink, route.next_hop))
        elif route.place is PodCidrPlace.TUNNEL and route.next_hop is not None:
            # Flannel's scheme: the peer's CIDR network address stands for its tunnel
            # endpoint; a permanent neighbour maps it to the peer's device MAC and the
            # forwarding entry maps that MAC to the peer's underlay address.
            gateway = route.cidr.network_address
            mac = tunnel_mac(route.node)
            routes.add(KernelRoute(route.cidr, TUNNEL_DEVICE, gateway, onlink=True))
            neighbors.add(Neighbor(gateway, mac, TUNNEL_DEVICE))
            forwarding.add(ForwardingEntry(mac, route.next_hop, TUNNEL_DEVICE))
    devices: tuple[Device, ...] = ()
    if mode is RoutingMode.VXLAN and local_ip is not None:
        devices = (Device(TUNNEL_DEVICE, DeviceKind.VXLAN, tunnel_mac(view.name), local_ip),)
    return KernelState(devices, frozenset(routes), frozenset(neighbors), frozenset(forwarding))
