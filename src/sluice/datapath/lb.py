"""Layouts of lb.h and the socket hooks' reverse map: service frontends, backend slots,
backends and ClientIP affinity."""

from __future__ import annotations

import ctypes
import socket
from enum import IntFlag

from sluice.datapath.addr import IPAddress, IPNetwork, SlAddr, lpm_prefixlen

SERVICES_MAP = "lb_services"
BACKENDS_MAP = "lb_backends"
AFFINITY_MAP = "lb_affinity"
SOCK_REV_MAP = "lb_sock_rev"

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}


class LbFlags(IntFlag):
    AFFINITY = 1 << 0
    LOCAL_ONLY = 1 << 1
    SOURCE_RANGES = 1 << 2
    MAGLEV = 1 << 3
    DSR = 1 << 4


NO_FLAGS = LbFlags(0)


class BackendFlags(IntFlag):
    FOREIGN = 1 << 0  # on a node without the bpf datapath: outside clients' flows are SNATed


NO_BACKEND_FLAGS = BackendFlags(0)


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
        ("maglev_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]

    @classmethod
    def service(cls, service_id: int, count: int, flags: int = 0,
                affinity_timeout: int = 0, maglev_id: int = 0) -> LbValue:
        return cls(service_id=service_id, count=count, flags=int(flags),
                   affinity_timeout=affinity_timeout, maglev_id=maglev_id)

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
    def of(cls, address: IPAddress | str, port: int, protocol: str,
           flags: BackendFlags = NO_BACKEND_FLAGS) -> LbBackend:
        return cls(addr=SlAddr.of(address), port=socket.htons(port), proto=PROTOCOLS[protocol],
                   flags=int(flags))


BackendId = ctypes.c_uint32

MAGLEV_MAP = "lb_maglev"
SOURCE_RANGES_MAP = "lb_source_ranges"
SELECTIONS_MAP = "lb_selections"  # per-CPU new flows per backend id


class LbMaglevKey(ctypes.Structure):
    _c_name_ = "lb_maglev_key"
    _fields_ = [("table", ctypes.c_uint32), ("index", ctypes.c_uint32)]


class LbSourceKey(ctypes.Structure):
    """An LPM key over (service id, client address): the prefix covers the id's 32 bits."""

    _c_name_ = "lb_source_key"
    _fields_ = [("prefixlen", ctypes.c_uint32), ("service_id", ctypes.c_uint32),
                ("addr", SlAddr)]

    @classmethod
    def of(cls, service_id: int, network: IPNetwork) -> LbSourceKey:
        return cls(prefixlen=32 + lpm_prefixlen(network), service_id=service_id,
                   addr=SlAddr.of(network.network_address))


MaglevSlot = ctypes.c_uint32
SourceAllowed = ctypes.c_uint32


def _mix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def flow_hash(client: IPAddress | str, port: int, protocol: str) -> int:
    """lb_flow_hash of lb.h: which Maglev slot a client's flow falls in (hash % size).
    The C code mixes the address words and the port as they sit in memory."""
    h = 0x5109E
    raw = bytes(SlAddr.of(client))
    for offset in range(0, 16, 4):
        h = _mix32(h ^ int.from_bytes(raw[offset:offset + 4], "little"))
    port_in_memory = int.from_bytes(socket.htons(port).to_bytes(2, "little"), "little")
    return _mix32(h ^ ((port_in_memory << 8) & 0xFFFFFFFF) ^ PROTOCOLS[protocol])
