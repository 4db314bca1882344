"""bpf mode services: a ServiceTable as the load balancer's map contents.

Backends are named by (address, port, protocol); apply gives each a numeric id (reusing
the ids already in the map, so an unchanged backend keeps its id and its flows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from sluice.compile.services import Frontend, ServicePlan, ServiceTable
from sluice.datapath.lb import LbFlags
from sluice.model.addresses import IPAddress
from sluice.model.fieldtypes import Protocol


@dataclass(frozen=True, order=True)
class BackendRef:
    address: IPAddress
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class FrontendEntry:
    service_id: int
    backends: tuple[BackendRef, ...]  # slot i+1 holds backends[i]
    flags: LbFlags
    affinity_timeout: int = 0


@dataclass(frozen=True)
class LbState:
    frontends: Mapping[Frontend, FrontendEntry]

    @property
    def backends(self) -> frozenset[BackendRef]:
        return frozenset(b for entry in self.frontends.values() for b in entry.backends)


def service_id(plan: ServicePlan) -> int:
    """A stable id for affinity: the same on every node and across restarts."""
    name = f"{plan.service}/{plan.port_name or ''}/{plan.frontend.protocol}"
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4]) or 1


def lb_state(table: ServiceTable) -> LbState:
    frontends: dict[Frontend, FrontendEntry] = {}
    for plan in table.plans:
        flags = LbFlags(0)
        if plan.affinity_timeout is not None:
            flags |= LbFlags.AFFINITY
        if plan.local_only:
            flags |= LbFlags.LOCAL_ONLY
        if plan.source_ranges:
            flags |= LbFlags.SOURCE_RANGES
        backends = tuple(BackendRef(b.address, b.port, plan.frontend.protocol)
                         for b in plan.backends)
        frontends[plan.frontend] = FrontendEntry(service_id(plan), backends, flags,
                                                 plan.affinity_timeout or 0)
    return LbState(frontends)
