"""Links and addresses inside namespaces, through pyroute2 (never by parsing `ip`).

Every function takes the namespace to act in and enters it only for the call, so
nothing here can touch the caller's own namespace by accident.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute

from sluice import netns

IFA_F_NODAD = 0x02


def ifindex(ns: str, ifname: str) -> int:
    with netns.entered(ns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no interface {ifname} in namespace {ns}")
        return int(found[0])


def create_veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with one end in each namespace; both are created inside NS_A."""
    with netns.entered(ns_a), IPRoute() as ipr:
        ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b})
        peer = ipr.link_lookup(ifname=name_b)[0]
        ipr.link("set", index=peer, net_ns_fd=netns.netns_path(ns_b))


def configure(ns: str, ifname: str, addresses: Iterable[str], *, mtu: int | None = None) -> None:
    """Add addresses (CIDR notation; IPv6 without duplicate detection), bring it and lo up."""
    with netns.entered(ns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        for cidr in addresses:
            iface = ipaddress.ip_interface(cidr)
            flags = IFA_F_NODAD if iface.version == 6 else 0
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     flags=flags)
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
