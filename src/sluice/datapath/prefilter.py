"""Layouts of prefilter.h: the source-CIDR verdict table of the prefilter program."""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from sluice.datapath.addr import IPNetwork, SlAddr, lpm_prefixlen, network_of


class PrefilterAction(IntEnum):
    PASS = 0
    DROP = 1


class PrefilterKey(ctypes.Structure):
    _c_name_ = "prefilter_key"
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", SlAddr)]

    @classmethod
    def of(cls, cidr: IPNetwork | str) -> PrefilterKey:
        network = ipaddress.ip_network(cidr)
        return cls(prefixlen=lpm_prefixlen(network), addr=SlAddr.of(network.network_address))

    def network(self) -> IPNetwork:
        return network_of(self.addr, self.prefixlen)


class PrefilterEntry(ctypes.Structure):
    _c_name_ = "prefilter_entry"
    _fields_ = [
        ("action", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class PrefilterRule:
    cidr: IPNetwork
    action: PrefilterAction
    rule_id: int = 0

    def key(self) -> PrefilterKey:
        return PrefilterKey.of(self.cidr)

    def entry(self) -> PrefilterEntry:
        return PrefilterEntry(action=int(self.action), rule_id=self.rule_id)


MAP_NAME = "prefilter_cidrs"
