"""Layouts of routing.h: the node's LPM route table of pod CIDRs."""

from __future__ import annotations

import ctypes
import ipaddress
from enum import IntEnum

from sluice.datapath.addr import IPAddress, IPNetwork, SlAddr, lpm_prefixlen, network_of

MAP_NAME = "routes"


class RouteKind(IntEnum):
    LOCAL_PODS = 1
    REMOTE_TUNNEL = 2
    REMOTE_NATIVE = 3


class RouteKey(ctypes.Structure):
    _c_name_ = "route_key"
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", SlAddr)]

    @classmethod
    def of(cls, cidr: IPNetwork | str) -> RouteKey:
        network = ipaddress.ip_network(cidr)
        return cls(prefixlen=lpm_prefixlen(network), addr=SlAddr.of(network.network_address))

    def network(self) -> IPNetwork:
        return network_of(self.addr, self.prefixlen)


class RouteEntry(ctypes.Structure):
    _c_name_ = "route_entry"
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("next_hop", SlAddr),
        ("hits", ctypes.c_uint64),
    ]

    @classmethod
    def of(cls, kind: RouteKind, *, ifindex: int = 0,
           next_hop: IPAddress | str | None = None) -> RouteEntry:
        hop = SlAddr.of(next_hop) if next_hop is not None else SlAddr()
        return cls(kind=int(kind), ifindex=ifindex, next_hop=hop)
