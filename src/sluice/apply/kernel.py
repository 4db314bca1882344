"""Apply a KernelState (compile.kernelstate) with netlink, in this thread's namespace:
devices first, then neighbour and forwarding entries, then routes (which need both)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sluice.apply.devices import remove_devices, sync_devices
from sluice.apply.diff import ChangeLog
from sluice.apply.links import ifindexes, read_links
from sluice.apply.neighbors import sync_forwarding, sync_neighbors
from sluice.apply.routes import remove_own_routes, sync_routes
from sluice.compile.devices import TUNNEL_DEVICE
from sluice.compile.kernelstate import KernelState


@dataclass
class KernelSync:
    changes: ChangeLog = field(default_factory=ChangeLog)
    problems: list[str] = field(default_factory=list)
    ifindexes: dict[str, int] = field(default_factory=dict)  # every device, after the sync


def apply_kernel_state(ipr: Any, state: KernelState,
                       endpoint_devices: Collection[str]) -> KernelSync:
    """ENDPOINT_DEVICES are the pods' host veths: neighbours on them are Sluice's."""
    result = KernelSync()
    result.changes["devices"] = sync_devices(ipr, state.devices)
    result.ifindexes = ifindexes(read_links(ipr))
    owned = {TUNNEL_DEVICE, *endpoint_devices}
    result.changes["neighbours"] = sync_neighbors(ipr, state.neighbors, owned, result.ifindexes,
                                                  result.problems)
    result.changes["fdb"] = sync_forwarding(ipr, state.forwarding, TUNNEL_DEVICE,
                                            result.ifindexes, result.problems)
    routes = sync_routes(ipr, state.routes, result.ifindexes)
    result.changes["kernel routes"] = routes.changes
    result.problems.extend(routes.problems)
    return result


def remove_kernel_state(ipr: Any, endpoint_devices: Collection[str]) -> ChangeLog:
    """Uninstall: Sluice's routes, its devices, its neighbours on the pods' veths."""
    log = ChangeLog()
    log["kernel routes"].removed = remove_own_routes(ipr)
    devices = ifindexes(read_links(ipr))
    log["neighbours"] = sync_neighbors(ipr, frozenset(), endpoint_devices, devices, [])
    log["devices"].removed = remove_devices(ipr)
    return log
