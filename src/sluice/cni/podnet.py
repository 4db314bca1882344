"""The pod's side of the wiring: a veth pair, addresses, default routes and neighbours.

The plugin runs in the node's network namespace; the host end of the pair stays there and
only the peer lives in the pod. Inside the pod every address is a host address (/32, /128)
and the default routes point at link-local gateways (169.254.1.1, fe80::1) that resolve,
through PERMANENT neighbour entries, to the host end's MAC: the pod never ARPs or solicits
for its gateway, and the node decides everything else. No host routes are added here; the
node agent owns routing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sluice import netns
from sluice.cni.spec import Address

GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::1")

HOST_IF_HASH_LEN = 11
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04
NUD_PERMANENT = 0x80
IFF_UP = 0x01
RT_TABLE_MAIN = 254
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000


class PodNetError(Exception):
    """A netlink step failed; the message says which step and where."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    kind: str


def host_ifname(prefix: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return prefix + digest[:HOST_IF_HASH_LEN]


def gateway(address: Address) -> Address:
    return GATEWAY_V4 if address.version == 4 else GATEWAY_V6


def is_netns(path: str) -> bool:
    """True if PATH is a network namespace handle (a bind mount or /proc/<pid>/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return int(fcntl.ioctl(fd, NS_GET_NSTYPE)) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    try:
        yield
    except (NetlinkError, OSError, IndexError) as err:
        raise PodNetError(f"{what}: {err}") from err


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        mac=str(msg.get_attr("IFLA_ADDRESS")),
        mtu=int(msg.get_attr("IFLA_MTU")),
        up=bool(msg["flags"] & IFF_UP),
        kind=str(kind or ""),
    )


def _find(ipr: Any, ifname: str) -> Link | None:
    found = ipr.link_lookup(ifname=ifname)
    return _link(ipr.get_links(found[0])[0]) if found else None


def host_link(name: str) -> Link | None:
    """The link NAME in this process's (the node's) namespace, if any."""
    with IPRoute() as ipr:
        return _find(ipr, name)


def pod_link(netns_path: str, ifname: str) -> Link | None:
    with netns.entered(netns_path), IPRoute() as ipr:
        return _find(ipr, ifname)


def default_route_families(netns_path: str) -> set[int]:
    """The IP versions (4, 6) for which the pod already has a main-table default route."""
    with netns.entered(netns_path), IPRoute() as ipr:
        return {version for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6))
                if any(r["dst_len"] == 0 for r in ipr.get_routes(family=family,
                                                                  table=RT_TABLE_MAIN))}


def create_pair(netns_path: str, ifname: str, host: str, mtu: int) -> tuple[Link, Link]:
    """A veth pair: HOST here, IFNAME created directly inside the pod namespace."""
    with _step(f"creating veth {host} <-> {ifname} in {netns_path}"):
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=host, kind="veth", mtu=mtu,
                         peer={"ifname": ifname, "mtu": mtu, "net_ns_fd": fd})
        finally:
            os.close(fd)
    with _step(f"reading back {host} and {ifname}"):
        host_side = host_link(host)
        pod_side = pod_link(netns_path, ifname)
    if host_side is None or pod_side is None:
        raise PodNetError(f"veth {host} <-> {ifname} vanished right after creation")
    return host_side, pod_side


def bring_up_host(host: Link) -> None:
    with _step(f"setting {host.name} up"), IPRoute() as ipr:
        ipr.link("set", index=host.index, state="up")


def configure_pod(netns_path: str, pod: Link, host_mac: str, addresses: list[Address]) -> None:
    """Addresses, lo and the link up, permanent gateway neighbours, onlink default routes."""
    where = f"{pod.name} in {netns_path}"
    with netns.entered(netns_path), IPRoute() as ipr:
        with _step(f"setting lo and {where} up"):
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("set", index=pod.index, state="up")
        for address in addresses:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            with _step(f"adding {address}/{address.max_prefixlen} to {where}"):
                ipr.addr("add", index=pod.index, address=str(address),
                         prefixlen=address.max_prefixlen,
                         flags=IFA_F_NODAD if address.version == 6 else 0)
            gw = gateway(address)
            with _step(f"adding permanent neighbour {gw} -> {host_mac} on {where}"):
                ipr.neigh("add", family=family, dst=str(gw), lladdr=host_mac,
                          ifindex=pod.index, state=NUD_PERMANENT)
            with _step(f"adding default route via {gw} onlink on {where}"):
                ipr.route("add", family=family, dst="::/0" if address.version == 6 else
                          "0.0.0.0/0", gateway=str(gw), oif=pod.index, flags=RTNH_F_ONLINK)


def delete_host_link(name: str) -> bool:
    """Delete the veth NAME here (its peer goes with it); False if there was none."""
    with IPRoute() as ipr:
        found = _find(ipr, name)
        if found is None or found.kind != "veth":
            return False
        try:
            ipr.link("del", index=found.index)
        except NetlinkError as err:
            if err.code == 19:
                return False
            raise PodNetError(f"deleting {name}: {err}") from err
        return True


def verify_host(name: str, index: int, mac: str, mtu: int) -> list[str]:
    link = host_link(name)
    if link is None:
        return [f"host interface {name} is missing"]
    return _compare(f"host interface {name}", link, kind="veth", index=index, mac=mac, mtu=mtu)


def _compare(what: str, link: Link, **expected: object) -> list[str]:
    problems = [f"{what} has {key} {getattr(link, key)}, expected {value}"
                for key, value in expected.items() if getattr(link, key) != value]
    if not link.up:
        problems.append(f"{what} is down")
    return problems


def verify_pod(netns_path: str, ifname: str, *, mac: str, mtu: int, host_mac: str,
               addresses: list[Address]) -> list[str]:
    """Everything configure_pod set up, as a list of what is missing or wrong."""
    if not is_netns(netns_path):
        return [f"pod network namespace {netns_path} is gone"]
    with netns.entered(netns_path), IPRoute() as ipr:
        link = _find(ipr, ifname)
        if link is None:
            return [f"no interface {ifname} in {netns_path}"]
        where = f"{ifname} in {netns_path}"
        problems = _compare(f"pod interface {where}", link, mac=mac, mtu=mtu)
        present = {(ipaddress.ip_address(m.get_attr("IFA_ADDRESS")), int(m["prefixlen"]))
                   for m in ipr.get_addr(index=link.index)}
        for address in addresses:
            if (address, address.max_prefixlen) not in present:
                problems.append(f"{where} lacks {address}/{address.max_prefixlen}")
            problems.extend(_verify_gateway(ipr, link, gateway(address), host_mac, where))
        return problems


def _verify_gateway(ipr: Any, link: Link, gw: Address, host_mac: str, where: str) -> list[str]:
    family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
    problems: list[str] = []
    routes = [r for r in ipr.get_routes(family=family)
              if r["dst_len"] == 0 and r.get_attr("RTA_OIF") == link.index
              and (r.get_attr("RTA_TABLE") or r["table"]) == RT_TABLE_MAIN
              and r.get_attr("RTA_GATEWAY") is not None
              and ipaddress.ip_address(r.get_attr("RTA_GATEWAY")) == gw]
    if not routes:
        problems.append(f"{where} has no default route via {gw}")
    neighbours = [n for n in ipr.get_neighbours(family=family, ifindex=link.index)
                  if n.get_attr("NDA_DST") is not None
                  and ipaddress.ip_address(n.get_attr("NDA_DST")) == gw]
    if not any(n["state"] & NUD_PERMANENT and n.get_attr("NDA_LLADDR") == host_mac
               for n in neighbours):
        problems.append(f"{where} has no permanent neighbour {gw} -> {host_mac}")
    return problems
