"""Layouts of conntrack.h: the LRU of service flows, one entry per direction of a flow."""

from __future__ import annotations

import ctypes
import socket
from enum import IntEnum, IntFlag

from sluice.datapath.addr import IPAddress, SlAddr
from sluice.datapath.lb import PROTOCOLS

MAP_NAME = "conntrack"


class CtKind(IntEnum):
    DNAT = 1  # forward leg: the destination becomes nat_addr:nat_port
    REPLY_SNAT = 2  # reply leg: the source becomes nat_addr:nat_port again
    RETURN_TUNNEL = 3  # reply of a flow another node forwarded: back to that node


class CtFlags(IntFlag):
    DSR = 1 << 0
    REMOTE = 1 << 1
    HAIRPIN = 1 << 2
    MASQ = 1 << 3  # from outside to a backend on a node without the bpf datapath: SNATed


class CtKey(ctypes.Structure):
    """The tuple a packet carries, as it carries it (ports in network byte order)."""

    _c_name_ = "ct_key"
    _fields_ = [
        ("src", SlAddr),
        ("dst", SlAddr),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]

    @classmethod
    def of(cls, src: IPAddress | str, sport: int, dst: IPAddress | str, dport: int,
           protocol: str) -> CtKey:
        return cls(src=SlAddr.of(src), dst=SlAddr.of(dst), sport=socket.htons(sport),
                   dport=socket.htons(dport), proto=PROTOCOLS[protocol])

    def reversed(self) -> CtKey:
        return CtKey(src=self.dst, dst=self.src, sport=self.dport, dport=self.sport,
                     proto=self.proto)


class CtEntry(ctypes.Structure):
    _c_name_ = "ct_entry"
    _fields_ = [
        ("last_seen_ns", ctypes.c_uint64),
        ("nat_addr", SlAddr),
        ("nat_port", ctypes.c_uint16),  # network byte order
        ("kind", ctypes.c_uint8),  # CtKind
        ("flags", ctypes.c_uint8),  # CtFlags
        ("backend_id", ctypes.c_uint32),
        ("peer", SlAddr),  # RETURN_TUNNEL: the forwarding node's underlay address
        ("ifindex", ctypes.c_uint32),  # RETURN_TUNNEL: the tunnel device
        ("pad", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
    ]

    @property
    def nat(self) -> tuple[IPAddress, int]:
        """Where the translation points: (address, port in host order)."""
        return self.nat_addr.to_ip(), socket.ntohs(self.nat_port)
