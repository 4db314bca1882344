"""Sync the policy maps to a PolicyState, as diffs, in an order that leaves no gap.

The datapath judges new flows while we write, so: verdict entries that are new or changed
first (a pod moving to a new identity finds its entries already there), then the ipcache
(addresses move to their new identities), then the entries no longer wanted, and last the
revision: flows judged under the old one are judged again on their next packet, so a flow
the change now forbids is cut.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from sluice.apply.bpfmaps import plan_map, sync_map
from sluice.apply.diff import ChangeLog
from sluice.compile.policyflat import PolicyKeySpec, PolicyVerdictSpec, policy_entries
from sluice.compile.policytypes import Direction, IpcacheEntry, PolicyState
from sluice.datapath import policy as dp
from sluice.datapath.prefilter import PrefilterAction, PrefilterEntry, PrefilterKey
from sluice.loader.maps import Map
from sluice.model.addresses import IPNetwork

STATE_SLOT = 0
REVISION_MODULUS = 2**32
TRACKED_DIRECTIONS = frozenset(Direction) - {Direction.UNTRACKED}


@dataclass
class PolicyMaps:
    ipcache: Map[dp.IpcacheKey, dp.IpcacheEntry]
    policy: Map[dp.PolicyKey, dp.PolicyVerdict]
    states: Map[ctypes.c_uint32, dp.PolicyState]
    failsafe: Map[dp.FailsafeKey, ctypes.c_uint32]
    host_interfaces: Map[ctypes.c_uint32, ctypes.c_uint32]
    prefilter: Map[PrefilterKey, PrefilterEntry]


def policy_key(spec: PolicyKeySpec) -> dp.PolicyKey:
    return dp.PolicyKey(prefixlen=dp.POLICY_KEY_FIXED_BITS + spec.port_prefix,
                        endpoint=spec.endpoint, direction=int(spec.direction),
                        tier=int(spec.tier), proto=spec.proto, peer=spec.peer,
                        dport=socket.htons(spec.dport))


def _verdict_fields(verdict: dp.PolicyVerdict) -> tuple[int, int, int]:
    """What the agent decides; `flows` is the datapath's."""
    return verdict.rank, verdict.action, verdict.rule_id


def _carry_flows(old: dp.PolicyVerdict, new: dp.PolicyVerdict) -> dp.PolicyVerdict:
    new.flows = old.flows
    return new


def _carry_counts(old: PrefilterEntry, new: PrefilterEntry) -> PrefilterEntry:
    new.packets, new.bytes = old.packets, old.bytes
    return new


def _same_bytes(old: ctypes.Structure | ctypes.c_uint32,
                new: ctypes.Structure | ctypes.c_uint32) -> bool:
    return bytes(old) == bytes(new)


def sync_policy(maps: PolicyMaps, state: PolicyState,
                entries: Mapping[PolicyKeySpec, PolicyVerdictSpec] | None = None) -> ChangeLog:
    """Make the policy maps hold STATE (ENTRIES: its flattening, when already made)."""
    flat = policy_entries(state) if entries is None else entries
    log = ChangeLog()
    wanted_policy = {}
    for spec, verdict in flat.items():
        key = policy_key(spec)
        wanted_policy[bytes(key)] = (key, dp.PolicyVerdict(rank=verdict.rank,
                                                           action=int(verdict.action),
                                                           rule_id=verdict.rule_id))
    plan = plan_map(maps.policy, wanted_policy,
                    same=lambda old, new: _verdict_fields(old) == _verdict_fields(new),
                    merge=_carry_flows)
    maps.policy.update_batch(plan.writes)
    log["ipcache"] = sync_map(maps.ipcache, _ipcache_wanted(state.ipcache), same=_same_bytes)
    maps.policy.delete_batch(plan.stale)
    log["policy entries"] = plan.changes
    log["failsafe ports"] = sync_map(maps.failsafe, _failsafe_wanted(state), same=_same_bytes)
    log["host interfaces"] = sync_map(maps.host_interfaces, _host_interfaces_wanted(state),
                                      same=_same_bytes)
    log["prefilter"] = sync_map(maps.prefilter, _prefilter_wanted(state.prefilter_deny),
                                same=lambda old, new: (old.action, old.rule_id)
                                == (new.action, new.rule_id),
                                merge=_carry_counts)
    if log.any:
        bump_revision(maps.states)
    return log


def bump_revision(states: Map[ctypes.c_uint32, dp.PolicyState]) -> int:
    slot = ctypes.c_uint32(STATE_SLOT)
    current = states.lookup(slot)
    revision = ((current.revision if current is not None else 0) + 1) % REVISION_MODULUS
    states.update(slot, dp.PolicyState(revision=revision or 1))
    return revision or 1


def _ipcache_wanted(ipcache: Mapping[IPNetwork, IpcacheEntry]
                    ) -> dict[bytes, tuple[dp.IpcacheKey, dp.IpcacheEntry]]:
    wanted = {}
    for network, entry in ipcache.items():
        key = dp.IpcacheKey.of(network)
        wanted[bytes(key)] = (key, dp.IpcacheEntry(identity=entry.identity,
                                                   cidr_identity=entry.cidr_identity))
    return wanted


def _failsafe_wanted(state: PolicyState
                     ) -> dict[bytes, tuple[dp.FailsafeKey, ctypes.c_uint32]]:
    wanted = {}
    for port in state.failsafe:
        direction = (dp.FailsafeDirection.INBOUND if port.inbound
                     else dp.FailsafeDirection.OUTBOUND)
        key = dp.FailsafeKey.of(direction, port.protocol, port.port)
        wanted[bytes(key)] = (key, ctypes.c_uint32(1))
    return wanted


def _host_interfaces_wanted(state: PolicyState
                            ) -> dict[bytes, tuple[ctypes.c_uint32, ctypes.c_uint32]]:
    wanted = {}
    for endpoint in state.endpoints:
        if not endpoint.host_endpoint:
            continue
        flags = dp.HostInterfaceFlags(0)
        if TRACKED_DIRECTIONS & endpoint.directions.keys():
            flags |= dp.HostInterfaceFlags.ENDPOINT
        if Direction.UNTRACKED in endpoint.directions:
            flags |= dp.HostInterfaceFlags.UNTRACKED
        key = ctypes.c_uint32(endpoint.policy_id)
        wanted[bytes(key)] = (key, ctypes.c_uint32(int(flags)))
    return wanted


def _prefilter_wanted(cidrs: tuple[IPNetwork, ...]
                      ) -> dict[bytes, tuple[PrefilterKey, PrefilterEntry]]:
    wanted = {}
    for index, cidr in enumerate(sorted(set(cidrs), key=lambda n: (n.version, n)), start=1):
        key = PrefilterKey.of(cidr)
        wanted[bytes(key)] = (key, PrefilterEntry(action=int(PrefilterAction.DROP),
                                                  rule_id=index))
    return wanted
