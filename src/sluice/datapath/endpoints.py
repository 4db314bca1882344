"""Layouts of endpoints.h: the local endpoints map, keyed by pod address."""

from __future__ import annotations

import ctypes
from enum import IntFlag

from sluice.datapath.addr import SlAddr

MAP_NAME = "endpoints"
MacBytes = ctypes.c_uint8 * 6


class EndpointFlags(IntFlag):
    POD = 1 << 0


def mac_bytes(mac: str) -> ctypes.Array[ctypes.c_uint8]:
    return MacBytes(*bytes.fromhex(mac.replace(":", "")))


def mac_text(raw: ctypes.Array[ctypes.c_uint8]) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


class EndpointInfo(ctypes.Structure):
    _c_name_ = "endpoint_info"
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("mac", MacBytes),
        ("host_mac", MacBytes),
    ]

    @classmethod
    def pod(cls, *, ifindex: int, mac: str, host_mac: str, identity: int = 0) -> EndpointInfo:
        return cls(ifindex=ifindex, flags=int(EndpointFlags.POD), identity=identity,
                   mac=mac_bytes(mac), host_mac=mac_bytes(host_mac))


EndpointKey = SlAddr
