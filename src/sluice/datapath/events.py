"""Layouts of events.h: flow events, their configuration and statistics, and the datapath's
packet counters by hook and drop reason. The numbers are the datapath's and stable."""

from __future__ import annotations

import ctypes
import socket
from enum import IntEnum, IntFlag

from sluice.datapath.addr import IPAddress, SlAddr

EVENTS_MAP = "flow_events"
CONFIG_MAP = "events_config"
STATS_MAP = "events_stats"
WINDOW_MAP = "events_window"
COUNTERS_MAP = "datapath_counters"


class Verdict(IntEnum):
    FORWARDED = 1
    DROPPED = 2
    TRANSLATED = 3  # socket-level load balancing rewrote a connect or sendmsg
    LOGGED = 4  # a Log rule of global policy matched (from the policy_events ring buffer)


class DropReason(IntEnum):
    """Why the datapath dropped a packet; the README's table documents each."""

    NONE = 0
    POLICY_DENIED = 1
    POLICY_CUT = 2
    NO_BACKEND = 3
    NO_LOCAL_BACKEND = 4
    SOURCE_RANGE = 5
    CT_INSERT = 6
    FIB = 7
    MALFORMED = 8
    NAT = 9
    PREFILTER = 10
    UNTRACKED = 11
    NO_ENDPOINT = 12
    ENCAP = 13
    DELIVER = 14
    UNKNOWN = 15


DROP_REASON_SLOTS = 32

DROP_REASON_TEXT: dict[DropReason, str] = {
    DropReason.POLICY_DENIED: "a new flow no policy allows",
    DropReason.POLICY_CUT: "a flow a policy change no longer allows",
    DropReason.NO_BACKEND: "a service without backends (answered with a reset or ICMP error)",
    DropReason.NO_LOCAL_BACKEND: "traffic policy Local without a backend on this node",
    DropReason.SOURCE_RANGE: "loadBalancerSourceRanges does not hold the client",
    DropReason.CT_INSERT: "the conntrack entry could not be created",
    DropReason.FIB: "the kernel's FIB has no route for it",
    DropReason.MALFORMED: "truncated or inconsistent headers",
    DropReason.NAT: "rewriting its addresses or ports failed",
    DropReason.PREFILTER: "its source is on the deny list (XDP)",
    DropReason.UNTRACKED: "a doNotTrack policy denies it (XDP)",
    DropReason.NO_ENDPOINT: "a local pod address no pod uses",
    DropReason.ENCAP: "tunnel encapsulation or the DSR option failed",
    DropReason.DELIVER: "rewriting MACs for a local pod failed",
    DropReason.UNKNOWN: "dropped without a recorded reason",
}


class Hook(IntEnum):
    FROM_ENDPOINT = 1
    FROM_NETWORK = 2
    FROM_HOST = 3
    TO_NETWORK = 4
    PREFILTER = 5
    SOCK_CONNECT = 6
    SOCK_SENDMSG = 7


HOOK_SLOTS = 8

# Hubble's traffic_direction, from the endpoint's point of view.
HOOK_DIRECTION: dict[Hook, str] = {
    Hook.FROM_ENDPOINT: "EGRESS",
    Hook.FROM_NETWORK: "INGRESS",
    Hook.FROM_HOST: "INGRESS",
    Hook.TO_NETWORK: "EGRESS",
    Hook.PREFILTER: "INGRESS",
    Hook.SOCK_CONNECT: "EGRESS",
    Hook.SOCK_SENDMSG: "EGRESS",
}


class EventKinds(IntFlag):
    DROPS = 1 << 0
    FLOWS = 1 << 1
    SOCK = 1 << 2


class EventStat(IntEnum):
    SENT = 0
    LOST_FULL = 1
    RATE_LIMITED = 2
    SAMPLED_OUT = 3


class EventsConfig(ctypes.Structure):
    _c_name_ = "events_config"
    _fields_ = [
        ("kinds", ctypes.c_uint32),  # EventKinds
        ("sample", ctypes.c_uint32),  # flow and sock events: one in SAMPLE (0, 1: all)
        ("rate_per_cpu", ctypes.c_uint32),  # events per second per CPU (0: no limit)
        ("pad", ctypes.c_uint32),
    ]


class DatapathCounter(ctypes.Structure):
    _c_name_ = "datapath_counter"
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


def counter_index(hook: int, reason: int) -> int:
    return hook * DROP_REASON_SLOTS + reason


class FlowEvent(ctypes.Structure):
    """A record of the `flow_events` ring buffer."""

    _c_name_ = "sl_flow_event"
    _fields_ = [
        ("time_ns", ctypes.c_uint64),  # CLOCK_MONOTONIC
        ("src", SlAddr),
        ("dst", SlAddr),
        ("nat_addr", SlAddr),
        ("sport", ctypes.c_uint16),  # network byte order, as are the other ports
        ("dport", ctypes.c_uint16),
        ("nat_port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),  # Verdict
        ("reason", ctypes.c_uint8),  # DropReason
        ("hook", ctypes.c_uint8),  # Hook
        ("tcp_flags", ctypes.c_uint8),
        ("ifindex", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("backend_id", ctypes.c_uint32),
        ("bytes", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("comm", ctypes.c_char * 16),
    ]

    @classmethod
    def parse(cls, record: bytes) -> FlowEvent:
        if len(record) < ctypes.sizeof(cls):
            raise ValueError(f"flow event: {len(record)} bytes, expected {ctypes.sizeof(cls)}")
        return cls.from_buffer_copy(record[:ctypes.sizeof(cls)])

    def addresses(self) -> tuple[IPAddress | None, IPAddress, IPAddress | None]:
        """(source, destination, backend); None where the event has none."""
        src = None if not any(self.src.b) else self.src.to_ip()
        nat = None if not any(self.nat_addr.b) else self.nat_addr.to_ip()
        return src, self.dst.to_ip(), nat

    def ports(self) -> tuple[int, int, int]:
        return socket.ntohs(self.sport), socket.ntohs(self.dport), socket.ntohs(self.nat_port)
