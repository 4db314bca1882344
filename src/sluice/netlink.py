"""Links and addresses inside namespaces, through pyroute2 (never by parsing `ip`).

Every function takes the namespace to act in and enters it only for the call, so
nothing here can touch the caller's own namespace by accident.
"""

from __future__ import annotations

import ipaddress
import os
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


def add_route(ns: str, cidr: str, *, via: str | None = None, dev: str | None = None) -> None:
    with netns.entered(ns), IPRoute() as ipr:
        spec: dict[str, object] = {"dst": cidr}
        if via is not None:
            spec["gateway"] = via
        if dev is not None:
            spec["oif"] = ipr.link_lookup(ifname=dev)[0]
        ipr.route("add", **spec)


def set_sysctl(ns: str, name: str, value: str) -> None:
    """Write a net.* sysctl of namespace NS (never the caller's own).

    /proc/sys/net resolves to the writing thread's namespace; the identity of that
    namespace is checked before writing so a failed switch cannot touch the caller's.
    """
    if not name.startswith("net."):
        raise ValueError(f"only per-namespace net.* sysctls can be set: {name}")
    target = os.stat(netns.netns_path(ns)).st_ino
    with netns.entered(ns):
        if os.stat("/proc/thread-self/ns/net").st_ino != target:
            raise RuntimeError(f"not in namespace {ns}: refusing to write {name}")
        path = "/proc/sys/" + name.replace(".", "/")
        with open(path, "w", encoding="ascii") as sysctl:
            sysctl.write(value)


def link_mac(ns: str, ifname: str) -> str:
    with netns.entered(ns), IPRoute() as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return str(link.get_attr("IFLA_ADDRESS"))


def add_permanent_neighbor(ns: str, ifname: str, ip: str, mac: str) -> None:
    with netns.entered(ns), IPRoute() as ipr:
        ipr.neigh("add", dst=ip, lladdr=mac, ifindex=ipr.link_lookup(ifname=ifname)[0],
                  state=0x80)  # NUD_PERMANENT


def add_default_route_onlink(ns: str, ifname: str, gateway: str) -> None:
    """A default route via a gateway that is not on any of the interface's subnets."""
    family = 6 if ":" in gateway else 4
    with netns.entered(ns), IPRoute() as ipr:
        ipr.route("add", dst="::/0" if family == 6 else "0.0.0.0/0", gateway=gateway,
                  oif=ipr.link_lookup(ifname=ifname)[0], flags=4)  # RTNH_F_ONLINK


def create_vxlan(ns: str, ifname: str, *, port: int = 4789, mtu: int | None = None) -> None:
    """A collect-metadata VXLAN device: BPF sets the remote and VNI per packet."""
    with netns.entered(ns), IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="vxlan", vxlan_collect_metadata=1,
                 vxlan_port=port, vxlan_learning=0)
        index = ipr.link_lookup(ifname=ifname)[0]
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        ipr.link("set", index=index, state="up")
