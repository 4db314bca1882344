"""bpf mode services: a ServiceTable as the load balancer's map contents.

Backends are named by (address, port, protocol); apply gives each a numeric id (reusing
the ids already in the map, so an unchanged backend keeps its id and its flows). Maglev
tables are computed here, from the backend set alone, so every node fills them alike.

Per-service choices (annotations on the Service, falling back to the agent's options):
  sluice.io/lb-algorithm: random | maglev      how new flows pick a backend
  sluice.io/lb-mode: tunnel | dsr              how a remote backend answers outside clients
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from sluice.compile.maglev import DEFAULT_TABLE_SIZE, backend_table
from sluice.compile.services import Frontend, FrontendScope, ServicePlan, ServiceTable
from sluice.datapath.lb import LbFlags
from sluice.model.addresses import IPAddress, IPNetwork
from sluice.model.fieldtypes import Protocol


class LbAlgorithm(Enum):
    RANDOM = "random"
    MAGLEV = "maglev"


class ExternalMode(Enum):
    """How a backend on another node answers a client from outside the cluster."""

    TUNNEL = "tunnel"  # replies go back through the node the client reached (source IP kept)
    DSR = "dsr"  # direct server return: the backend's node answers the client itself


@dataclass(frozen=True)
class LbOptions:
    algorithm: LbAlgorithm = LbAlgorithm.RANDOM
    maglev_table_size: int = DEFAULT_TABLE_SIZE
    external_mode: ExternalMode = ExternalMode.TUNNEL


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
    maglev_id: int = 0  # LbFlags.MAGLEV: the table in LbState.maglev
    source_ranges: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class LbState:
    frontends: Mapping[Frontend, FrontendEntry]
    maglev: Mapping[int, tuple[BackendRef, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def backends(self) -> frozenset[BackendRef]:
        return frozenset(b for entry in self.frontends.values() for b in entry.backends)

    @property
    def source_ranges(self) -> frozenset[tuple[int, IPNetwork]]:
        return frozenset((e.service_id, r) for e in self.frontends.values()
                         for r in e.source_ranges)


def service_id(plan: ServicePlan) -> int:
    """A stable id for affinity and source ranges: the same on every node and restart."""
    name = f"{plan.service}/{plan.port_name or ''}/{plan.frontend.protocol}"
    return _id32(name)


def maglev_id(plan: ServicePlan) -> int:
    """One table per distinct backend set of a service port: per family, and apart for
    frontends a Local traffic policy restricts."""
    return _id32(f"{plan.service}/{plan.port_name or ''}/{plan.frontend.protocol}/"
                 f"{plan.frontend.address.version}/{'local' if plan.local_only else 'all'}")


def _id32(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4]) or 1


def _choice(plan: ServicePlan, name: str, kind: type[LbAlgorithm] | type[ExternalMode],
            default: Enum, problems: list[str]) -> Enum:
    value = plan.annotation(name)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        problems.append(f"Service {plan.service}: annotation sluice.io/{name}={value!r} is "
                        f"not one of {allowed}; using {default.value}")
        return default


def lb_state(table: ServiceTable, options: LbOptions | None = None) -> LbState:
    options = options or LbOptions()
    frontends: dict[Frontend, FrontendEntry] = {}
    maglev: dict[int, tuple[BackendRef, ...]] = {}
    problems: list[str] = []
    for plan in table.plans:
        backends = tuple(BackendRef(b.address, b.port, plan.frontend.protocol)
                         for b in plan.backends)
        flags = LbFlags(0)
        if plan.affinity_timeout is not None:
            flags |= LbFlags.AFFINITY
        if plan.local_only:
            flags |= LbFlags.LOCAL_ONLY
        if plan.source_ranges:
            flags |= LbFlags.SOURCE_RANGES
        table_id = 0
        algorithm = _choice(plan, "lb-algorithm", LbAlgorithm, options.algorithm, problems)
        if algorithm is LbAlgorithm.MAGLEV and backends:
            flags |= LbFlags.MAGLEV
            table_id = maglev_id(plan)
            if table_id not in maglev:
                maglev[table_id] = backend_table(backends, options.maglev_table_size)
        mode = _choice(plan, "lb-mode", ExternalMode, options.external_mode, problems)
        if mode is ExternalMode.DSR and plan.scope is not FrontendScope.CLUSTER_IP:
            flags |= LbFlags.DSR
        frontends[plan.frontend] = FrontendEntry(service_id(plan), backends, flags,
                                                 plan.affinity_timeout or 0, table_id,
                                                 plan.source_ranges)
    return LbState(frontends, maglev, tuple(dict.fromkeys(problems)))
