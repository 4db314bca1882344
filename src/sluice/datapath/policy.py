"""Layouts of policy.h: the ipcache, per-endpoint verdict tables (LPM), the policy
revision, failsafe ports, host interfaces, the flow table, counters and flow events.

The enums that compile shares with the datapath are those of `compile.policytypes`,
re-exported here; the rest are the datapath's own.
"""

from __future__ import annotations

import ctypes
import socket
from enum import IntEnum, IntFlag

from sluice.compile.policytypes import Action, Direction, Identity, Tier
from sluice.datapath.addr import IPAddress, LpmKey
from sluice.datapath.conntrack import CtKey

__all__ = [
    "COUNTERS_MAP",
    "COUNTER_SLOTS",
    "EVENTS_MAP",
    "FAILSAFE_MAP",
    "FLOWS_MAP",
    "HOST_INTERFACES_MAP",
    "IPCACHE_MAP",
    "POLICY_KEY_FIXED_BITS",
    "POLICY_KEY_MAX_BITS",
    "POLICY_MAP",
    "STATES_MAP",
    "Action",
    "CounterReason",
    "Direction",
    "FailsafeDirection",
    "FailsafeKey",
    "FailsafeValue",
    "HostInterfaceFlags",
    "HostInterfaceKey",
    "HostInterfaceValue",
    "Identity",
    "IpcacheEntry",
    "IpcacheKey",
    "PolicyCounter",
    "PolicyEvent",
    "PolicyFlow",
    "PolicyHook",
    "PolicyKey",
    "PolicyState",
    "PolicyVerdict",
    "StateIndex",
    "Tier",
]

IPCACHE_MAP = "ipcache"
POLICY_MAP = "policy"
STATES_MAP = "policy_states"
FAILSAFE_MAP = "failsafe_ports"
HOST_INTERFACES_MAP = "host_interfaces"
COUNTERS_MAP = "policy_counters"
FLOWS_MAP = "policy_flows"
EVENTS_MAP = "policy_events"

# A policy key matches endpoint, direction, tier, protocol and peer in full; the prefix
# then runs into the destination port's 16 bits.
POLICY_KEY_FIXED_BITS = 96
POLICY_KEY_MAX_BITS = POLICY_KEY_FIXED_BITS + 16


class FailsafeDirection(IntEnum):
    INBOUND = 0
    OUTBOUND = 1


class HostInterfaceFlags(IntFlag):
    ENDPOINT = 1 << 0  # tc: the interface's host endpoint policy applies
    UNTRACKED = 1 << 1  # XDP: the interface has doNotTrack policy to judge per packet


class CounterReason(IntEnum):
    """Index of the per-CPU `policy_counters` array."""

    DROP_DENIED = 0  # a new flow (or a hook's first sight of one) denied
    DROP_FLOW_CUT = 1  # a flow judged again and now denied, and its later packets
    DROP_UNTRACKED = 2  # XDP: a doNotTrack deny
    DROP_PREFILTER = 3  # prefilter: a denied source CIDR
    PASS_FAILSAFE = 4  # a failsafe port bypassed host endpoint policy
    PASS_NEW_FLOW = 5  # a new flow allowed and recorded


COUNTER_SLOTS = 8  # POLICY_COUNTER_MAX


class PolicyHook(IntFlag):
    """Where a flow was judged (`policy_flow.hooks`, `policy_event.hook`)."""

    ENDPOINT = 1 << 0  # from_endpoint: a pod sends
    NETWORK = 1 << 1  # from_network: arrives by the tunnel or the uplink
    HOST = 1 << 2  # from_host: the node sends to a pod
    UPLINK = 1 << 3  # to_network: leaves by the uplink


IpcacheKey = LpmKey


class IpcacheEntry(ctypes.Structure):
    _c_name_ = "ipcache_entry"
    _fields_ = [("identity", ctypes.c_uint32), ("cidr_identity", ctypes.c_uint32)]


class PolicyKey(ctypes.Structure):
    _c_name_ = "policy_key"
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("endpoint", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),  # Direction
        ("tier", ctypes.c_uint8),  # Tier
        ("proto", ctypes.c_uint8),  # 0: any protocol
        ("pad", ctypes.c_uint8),
        ("peer", ctypes.c_uint32),  # identity; 0: any peer
        ("dport", ctypes.c_uint16),  # network byte order
        ("pad2", ctypes.c_uint16),
    ]

    @classmethod
    def of(cls, endpoint: int, direction: Direction, tier: Tier, *, peer: int = Identity.ANY,
           proto: int = 0, port: int = 0, port_bits: int = 16) -> PolicyKey:
        """An entry for PORT's first PORT_BITS bits (16: the port alone; 0: any port).
        Any protocol (proto 0) covers every port."""
        if not 0 <= port_bits <= 16:
            raise ValueError(f"policy key: port_bits {port_bits} is not within 0..16")
        if proto == 0 and (port or port_bits not in (0, 16)):
            raise ValueError("policy key: a port needs a protocol")
        bits = 0 if proto == 0 else port_bits
        return cls(prefixlen=POLICY_KEY_FIXED_BITS + bits, endpoint=endpoint,
                   direction=int(direction), tier=int(tier), proto=proto, peer=int(peer),
                   dport=socket.htons(port))


class PolicyVerdict(ctypes.Structure):
    _c_name_ = "policy_verdict"
    _fields_ = [
        ("rank", ctypes.c_uint32),
        ("action", ctypes.c_uint8),  # Action
        ("pad", ctypes.c_uint8 * 3),
        ("rule_id", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
        ("flows", ctypes.c_uint64),
    ]

    @classmethod
    def of(cls, action: Action, rank: int, rule_id: int = 0) -> PolicyVerdict:
        return cls(rank=rank, action=int(action), rule_id=rule_id)


class PolicyState(ctypes.Structure):
    _c_name_ = "policy_state"
    _fields_ = [("revision", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


StateIndex = ctypes.c_uint32


class FailsafeKey(ctypes.Structure):
    _c_name_ = "failsafe_key"
    _fields_ = [
        ("direction", ctypes.c_uint8),  # FailsafeDirection
        ("proto", ctypes.c_uint8),
        ("port", ctypes.c_uint16),  # network byte order
    ]

    @classmethod
    def of(cls, direction: FailsafeDirection, proto: int, port: int) -> FailsafeKey:
        return cls(direction=int(direction), proto=proto, port=socket.htons(port))


FailsafeValue = ctypes.c_uint32
HostInterfaceKey = ctypes.c_uint32  # ifindex
HostInterfaceValue = ctypes.c_uint32  # HostInterfaceFlags


class PolicyCounter(ctypes.Structure):
    _c_name_ = "policy_counter"
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class PolicyFlow(ctypes.Structure):
    """A flow's verdict, keyed by the `CtKey` of its first packet."""

    _c_name_ = "policy_flow"
    _fields_ = [
        ("last_seen_ns", ctypes.c_uint64),
        ("revision", ctypes.c_uint32),
        ("verdict", ctypes.c_uint8),  # Action.ALLOW, or Action.DENY once cut
        ("hooks", ctypes.c_uint8),  # PolicyHook
        ("orig_dport", ctypes.c_uint16),  # network byte order
        ("src_endpoint", ctypes.c_uint32),
        ("src_identity", ctypes.c_uint32),
        ("in_ifindex", ctypes.c_uint32),
        ("out_ifindex", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
    ]


class PolicyEvent(ctypes.Structure):
    """A record of the `policy_events` ring buffer: a Log rule ranked before a decision."""

    _c_name_ = "policy_event"
    _fields_ = [
        ("tuple", CtKey),
        ("endpoint", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),  # Direction
        ("action", ctypes.c_uint8),  # Action of the Log rule
        ("verdict", ctypes.c_uint8),  # Action.ALLOW or Action.DENY
        ("hook", ctypes.c_uint8),  # PolicyHook
    ]

    @classmethod
    def parse(cls, record: bytes) -> PolicyEvent:
        if len(record) < ctypes.sizeof(cls):
            raise ValueError(f"policy event: {len(record)} bytes, "
                             f"expected {ctypes.sizeof(cls)}")
        return cls.from_buffer_copy(record[:ctypes.sizeof(cls)])

    @property
    def flow(self) -> tuple[IPAddress, int, IPAddress, int, int]:
        """(source, source port, destination, destination port, protocol), host order."""
        t = self.tuple
        return (t.src.to_ip(), socket.ntohs(t.sport), t.dst.to_ip(), socket.ntohs(t.dport),
                t.proto)
