"""Layouts of routing.h: the node's LPM route table of pod CIDRs."""

from __future__ import annotations

import ctypes
from enum import IntEnum

from sluice.datapath.addr import IPAddress, LpmKey, SlAddr

MAP_NAME = "routes"


class RouteKind(IntEnum):
    LOCAL_PODS = 1
    REMOTE_TUNNEL = 2
    REMOTE_NATIVE = 3


RouteKey = LpmKey


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
