"""bpf mode: masq.h's configuration and non-masquerade CIDRs from a MasqueradeState.

The mappings themselves are the datapath's: it creates them, conntrack's timeouts expire
them, and the LRU evicts the oldest when full. The agent only reads them (`sluice bpf nat`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from sluice.apply.bpfmaps import sync_map
from sluice.apply.diff import Changes
from sluice.compile.masquerade import MasqueradeState, port_range_problem
from sluice.datapath import masq
from sluice.datapath.addr import LpmKey
from sluice.loader.maps import Map

LOCAL_PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
NONMASQ_VALUE = 1


@dataclass
class MasqMaps:
    config: Map[ctypes.c_uint32, masq.MasqConfig]
    nonmasq: Map[LpmKey, ctypes.c_uint32]
    mappings: Map[masq.MasqKey, masq.MasqEntry]


def sync_masquerade(maps: MasqMaps, state: MasqueradeState) -> Changes:
    """CIDRs first, then the configuration: masquerade never starts with a partial list.
    Off: the configuration says so first, and the list empties."""
    wanted = {}
    if state.enabled:
        for network in state.nonmasq:
            key = LpmKey.of(network)
            wanted[bytes(key)] = (key, ctypes.c_uint32(NONMASQ_VALUE))
    zero = ctypes.c_uint32(0)
    config = state.config_entry()
    current = maps.config.lookup(zero)
    config_changed = current is None or bytes(current) != bytes(config)
    if not state.enabled and config_changed:
        maps.config.update(zero, config)
    changes = sync_map(maps.nonmasq, wanted, same=lambda old, new: old.value == new.value)
    if state.enabled and config_changed:
        maps.config.update(zero, config)
    if config_changed:
        changes.changed += 1
    else:
        changes.unchanged += 1
    return changes


def local_port_range(path: str = LOCAL_PORT_RANGE) -> tuple[int, int]:
    """The host's ephemeral ports in the calling thread's network namespace."""
    with open(path, encoding="ascii") as f:
        low, high = f.read().split()
    return int(low), int(high)


def mappings(maps: MasqMaps) -> list[masq.Mapping]:
    """Every mapping, both directions, decoded."""
    return [masq.Mapping.decode(key, entry) for key, entry in maps.mappings.lookup_batch()]


def ports_problem(ports: tuple[int, int]) -> str | None:
    """Why PORTS cannot be masquerade's on this node (read in the calling thread's network
    namespace: the node's), or None."""
    try:
        local = local_port_range()
    except (OSError, ValueError) as err:
        return f"--masquerade-ports: cannot read {LOCAL_PORT_RANGE}: {err}"
    return port_range_problem(ports, local)
