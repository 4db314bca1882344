"""Kernel routes the agent owns, marked with Sluice's route protocol number.

Only routes carrying ROUTE_PROTOCOL are ever changed or deleted: the agent lists its own
routes by that mark and leaves every other route alone. A desired route whose destination
is already taken by a route Sluice did not make is reported, not replaced.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from sluice.apply.diff import Changes
from sluice.compile.kernelstate import KernelRoute
from sluice.model.addresses import IPAddress, IPNetwork

ROUTE_PROTOCOL = 83  # ASCII "S"; see /etc/iproute2/rt_protos (unassigned there)
MAIN_TABLE = 254
RTNH_F_ONLINK = 0x4
FAMILIES = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class RouteFacts:
    """One of our routes as the kernel holds it."""

    dst: IPNetwork
    oif: int
    gateway: IPAddress | None
    onlink: bool


@dataclass
class RouteSync:
    changes: Changes
    problems: list[str]


def _family(network: IPNetwork) -> int:
    return socket.AF_INET if network.version == 4 else socket.AF_INET6


def read_own_routes(ipr: Any) -> dict[IPNetwork, RouteFacts]:
    own: dict[IPNetwork, RouteFacts] = {}
    for family in FAMILIES:
        for msg in ipr.get_routes(family=family, table=MAIN_TABLE):
            if msg["proto"] != ROUTE_PROTOCOL:
                continue
            default = "0.0.0.0" if family == socket.AF_INET else "::"
            dst = ipaddress.ip_network(f"{msg.get_attr('RTA_DST') or default}/{msg['dst_len']}")
            gateway = msg.get_attr("RTA_GATEWAY")
            own[dst] = RouteFacts(dst, int(msg.get_attr("RTA_OIF") or 0),
                                  ipaddress.ip_address(gateway) if gateway else None,
                                  bool(msg["flags"] & RTNH_F_ONLINK))
    return own


def _spec(route: KernelRoute, oif: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"dst": str(route.dst), "family": _family(route.dst), "oif": oif,
                            "table": MAIN_TABLE, "proto": ROUTE_PROTOCOL}
    if route.gateway is not None:
        spec["gateway"] = str(route.gateway)
    if route.onlink:
        spec["flags"] = RTNH_F_ONLINK
    return spec


def _delete(ipr: Any, facts: RouteFacts) -> None:
    try:
        ipr.route("del", dst=str(facts.dst), family=_family(facts.dst), table=MAIN_TABLE,
                  proto=ROUTE_PROTOCOL, oif=facts.oif)
    except NetlinkError as err:
        if err.code != errno.ESRCH:  # already gone (its device was removed)
            raise


def sync_routes(ipr: Any, desired: frozenset[KernelRoute],
                ifindexes: Mapping[str, int]) -> RouteSync:
    result = RouteSync(Changes(), [])
    own = read_own_routes(ipr)
    wanted = {route.dst: route for route in desired}
    for dst, facts in own.items():
        if dst not in wanted:
            _delete(ipr, facts)
            result.changes.removed += 1
    for dst, route in sorted(wanted.items(), key=lambda item: (item[0].version, item[0])):
        oif = ifindexes.get(route.dev)
        if oif is None:
            result.problems.append(f"route {dst} via device {route.dev}: no such device")
            continue
        have = own.get(dst)
        if have is not None and (have.oif, have.gateway, have.onlink) == (
                oif, route.gateway, route.onlink):
            result.changes.unchanged += 1
            continue
        try:
            ipr.route("replace" if have is not None else "add", **_spec(route, oif))
        except NetlinkError as err:
            if err.code == errno.EEXIST:
                result.problems.append(f"a route to {dst} that Sluice did not make exists; "
                                       "left alone")
                continue
            result.problems.append(f"route {dst} dev {route.dev}: {err}")
            continue
        if have is None:
            result.changes.added += 1
        else:
            result.changes.changed += 1
    return result


def remove_own_routes(ipr: Any) -> int:
    own = read_own_routes(ipr)
    for facts in own.values():
        _delete(ipr, facts)
    return len(own)
