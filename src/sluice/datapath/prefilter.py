"""Layouts of prefilter.h: the source-CIDR verdict table of the prefilter program."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from enum import IntEnum

from sluice.datapath.addr import IPNetwork, LpmKey


class PrefilterAction(IntEnum):
    PASS = 0
    DROP = 1


PrefilterKey = LpmKey


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
