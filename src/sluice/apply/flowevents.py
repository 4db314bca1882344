"""bpf mode: tell the datapath which flow events to send (events_config[0])."""

from __future__ import annotations

import ctypes
from typing import Any

from sluice.datapath.events import EventKinds, EventsConfig
from sluice.loader import Map


def write_events_config(config_map: Map[Any, Any], kinds: EventKinds, *, sample: int,
                        rate_per_cpu: int) -> bool:
    """Ask for KINDS of events, one in SAMPLE, at most RATE_PER_CPU a second per CPU;
    True if that changed what the map held."""
    wanted = EventsConfig(kinds=int(kinds), sample=sample, rate_per_cpu=rate_per_cpu)
    current = config_map.lookup(ctypes.c_uint32(0))
    if current is not None and bytes(current) == bytes(wanted):
        return False
    config_map.update(ctypes.c_uint32(0), wanted)
    return True
