"""Layouts of lb.h and the socket hooks' reverse map: service frontends, backend slots,
backends and ClientIP affinity."""

from __future__ import annotations

import ctypes
import socket
from enum import IntFlag

from sluice.datapath.addr import IPAddress, SlAddr

SERVICES_MAP = "lb_services"
BACKENDS_MAP = "lb_backends"
AFFINITY_MAP = "lb_affinity"
SOCK_REV_MAP = "lb_sock_rev"

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}


class LbFlags(IntFlag):
    AFFINITY = 1 << 0
    LOCAL_ONLY = 1 << 1
    SOURCE_RANGES = 1 << 2


NO_FLAGS = LbFlags(0)


class LbKey(ctypes.Structure):
    _c_name_ = "lb_key"
    _fields_ = [
        ("addr", SlAddr),
        ("port", ctypes.c_uint16),  # network byte order
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("slot", ctypes.c_uint16),
        ("pad2", ctypes.c_uint16),
    ]

    @classmethod
    def of(cls, address: IPAddress | str, port: int, protocol: str, slot: int = 0) -> LbKey:
        return cls(addr=SlAddr.of(address), port=socket.htons(port),
                   proto=PROTOCOLS[protocol], slot=slot)


class LbValue(ctypes.Structure):
    _c_name_ = "lb_value"
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("service_id", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("affinity_timeout", ctypes.c_uint32),
    ]

    @classmethod
    def service(cls, service_id: int, count: int, flags: int = 0,
                affinity_timeout: int = 0) -> LbValue:
        return cls(service_id=service_id, count=count, flags=int(flags),
                   affinity_timeout=affinity_timeout)

    @classmethod
    def slot(cls, backend_id: int) -> LbValue:
        return cls(backend_id=backend_id)


class LbBackend(ctypes.Structure):
    _c_name_ = "lb_backend"
    _fields_ = [
        ("addr", SlAddr),
        ("port", ctypes.c_uint16),  # network byte order
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint32),
    ]

    @classmethod
    def of(cls, address: IPAddress | str, port: int, protocol: str) -> LbBackend:
        return cls(addr=SlAddr.of(address), port=socket.htons(port), proto=PROTOCOLS[protocol])


BackendId = ctypes.c_uint32
