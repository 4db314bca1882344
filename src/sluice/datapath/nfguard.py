"""Layouts of nfguard.h: the netfilter blocker's scope, allowlist, counters and the
records of what it refused."""

from __future__ import annotations

import ctypes
from enum import IntEnum

OBJECT_NAME = "nfguard"
SCOPE_MAP = "nfguard_scope"  # u64 netns cookie -> u32 1
ALLOW_MAP = "nfguard_allow"  # u32 tgid -> u32 1
CGROUP_MAP = "nfguard_cgroup"  # slot 0: a cgroup fd (no BTF key/value)
COUNTS_MAP = "nfguard_counts"  # per CPU, indexed by Operation
EVENTS_MAP = "nfguard_events"  # ring buffer of NfguardEvent
SETSOCKOPT_PROGRAM = "nfguard_setsockopt"
NETLINK_PROGRAM = "nfguard_netlink_socket"
NETLINK_TRACEPOINT = ("syscalls", "sys_enter_socket")
ALLOW_DEPTH = 4  # NFGUARD_ALLOW_DEPTH: ancestors an allowlisted process covers

AF_NETLINK = 16
NETLINK_NETFILTER = 12

SOL_IP = 0
SOL_IPV6 = 41
# (level, optname) of the setsockopt calls that replace a whole table.
RULE_REPLACING_OPTIONS = {
    (SOL_IP, 64): "IPT_SO_SET_REPLACE",
    (SOL_IPV6, 64): "IP6T_SO_SET_REPLACE",
    (SOL_IP, 96): "ARPT_SO_SET_REPLACE",
    (SOL_IP, 128): "EBT_SO_SET_ENTRIES",
}


class Operation(IntEnum):
    """enum nfguard_op; the lower-case name is the `operation` label of the metrics."""

    SETSOCKOPT = 0
    NETLINK_SOCKET = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class NfguardCounter(ctypes.Structure):
    _c_name_ = "nfguard_counter"
    _fields_ = [("refused", ctypes.c_uint64), ("allowed", ctypes.c_uint64),
                ("lost", ctypes.c_uint64)]


class NfguardEvent(ctypes.Structure):
    """A record of `nfguard_events`: one refusal."""

    _c_name_ = "nfguard_event"
    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("op", ctypes.c_uint32),  # Operation
        ("level", ctypes.c_int32),  # setsockopt level, or the socket's address family
        ("option", ctypes.c_int32),  # setsockopt option name, or the socket's protocol
        ("pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    ]

    @classmethod
    def parse(cls, record: bytes) -> NfguardEvent:
        if len(record) < ctypes.sizeof(cls):
            raise ValueError(f"nfguard event: {len(record)} bytes, "
                             f"expected {ctypes.sizeof(cls)}")
        return cls.from_buffer_copy(record[:ctypes.sizeof(cls)])

    @property
    def command(self) -> str:
        return bytes(self.comm).split(b"\0", 1)[0].decode(errors="replace")

    def describe(self) -> str:
        """One line: what was refused, from whom."""
        who = f"pid {self.pid} ({self.command}, uid {self.uid})"
        if self.op == Operation.SETSOCKOPT:
            name = RULE_REPLACING_OPTIONS.get((self.level, self.option),
                                              f"level {self.level} option {self.option}")
            return f"refused setsockopt {name} (a legacy iptables table write) by {who}"
        if self.op == Operation.NETLINK_SOCKET:
            return (f"refused a netfilter netlink socket (nftables, iptables-nft, conntrack): "
                    f"killed {who}")
        return f"refused operation {self.op} by {who}"
