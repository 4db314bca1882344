"""Layouts of masq.h: masquerade's configuration, non-masquerade CIDRs and mappings."""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from sluice.datapath.addr import IPAddress, LpmKey, SlAddr

CONFIG_MAP = "masq_config"
SCRATCH_MAP = "masq_scratch"
NONMASQ_MAP = "masq_nonmasq"
MAPPINGS_MAP = "masq_mappings"


class MasqDir(IntEnum):
    OUT = 1  # key: the pod's tuple; value: the node's address and port
    IN = 2  # key: the node's tuple; value: the pod's address and port


class MasqFlags(IntFlag):
    INBOUND = 1 << 0  # OUT: an outside peer opened the flow, the pod's packets keep its address


class MasqConfig(ctypes.Structure):
    _c_name_ = "masq_config"
    _fields_ = [
        ("addr4", SlAddr),  # zero: IPv4 is not masqueraded
        ("addr6", SlAddr),
        ("port_min", ctypes.c_uint16),  # host order, inclusive
        ("port_max", ctypes.c_uint16),
        ("enabled", ctypes.c_uint32),
    ]

    @classmethod
    def of(cls, *, enabled: bool, addr4: IPAddress | None, addr6: IPAddress | None,
           ports: tuple[int, int]) -> MasqConfig:
        return cls(addr4=SlAddr.of(addr4) if addr4 is not None else SlAddr(),
                   addr6=SlAddr.of(addr6) if addr6 is not None else SlAddr(),
                   port_min=ports[0], port_max=ports[1], enabled=int(enabled))


NonMasqKey = LpmKey


class MasqKey(ctypes.Structure):
    _c_name_ = "masq_key"
    _fields_ = [
        ("addr", SlAddr),  # OUT: the pod; IN: the node
        ("peer", SlAddr),
        ("port", ctypes.c_uint16),  # network order; ICMP echo: the identifier
        ("peer_port", ctypes.c_uint16),  # 0 for ICMP echo
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),  # MasqDir
        ("pad", ctypes.c_uint16),
    ]

    @classmethod
    def of(cls, direction: MasqDir, *, addr: IPAddress | str, port: int,
           peer: IPAddress | str, peer_port: int, proto: int) -> MasqKey:
        return cls(addr=SlAddr.of(addr), peer=SlAddr.of(peer), port=socket.htons(port),
                   peer_port=socket.htons(peer_port), proto=proto, dir=int(direction))


class MasqEntry(ctypes.Structure):
    _c_name_ = "masq_entry"
    _fields_ = [
        ("last_seen_ns", ctypes.c_uint64),
        ("addr", SlAddr),  # what the key's address becomes
        ("port", ctypes.c_uint16),  # network order
        ("flags", ctypes.c_uint8),  # MasqFlags
        ("pad", ctypes.c_uint8),
        ("pad2", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class Mapping:
    """One direction of a mapping, decoded (ports in host order)."""

    direction: MasqDir
    proto: int
    addr: IPAddress
    port: int
    peer: IPAddress
    peer_port: int
    to_addr: IPAddress
    to_port: int
    inbound: bool
    packets: int
    last_seen_ns: int

    @classmethod
    def decode(cls, key: MasqKey, entry: MasqEntry) -> Mapping:
        return cls(MasqDir(key.dir), int(key.proto), key.addr.to_ip(), socket.ntohs(key.port),
                   key.peer.to_ip(), socket.ntohs(key.peer_port), entry.addr.to_ip(),
                   socket.ntohs(entry.port), bool(entry.flags & MasqFlags.INBOUND),
                   int(entry.packets), int(entry.last_seen_ns))
