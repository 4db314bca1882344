"""bpf mode services: a ServiceTable as the load balancer's map contents.

Backends are named by (address, port, protocol); apply gives each a numeric id (reusing
the ids already in the map, so an unchanged backend keeps its id and its flows). Maglev
tables are computed here, from the backend set alone, so every node fills them alike.

Per-service choices (annotations on the Service, falling back to the agent's options):
  sluice.io/lb-algorithm: random | maglev      how new flows pick a backend
  sluice.io/lb-mode: tunnel | dsr              how a remote backend answers outside clients
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from sluice.compile.maglev import DEFAULT_TABLE_SIZE, backend_table
from sluice.compile.services import (
    Frontend,
    FrontendScope,
    ServiceKey,
    ServicePlan,
    ServiceTable,
)
from sluice.datapath.lb import NO_BACKEND_FLAGS, BackendFlags, LbFlags
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


@dataclass(frozen=True, slots=True, order=True)
class BackendRef:
    address: IPAddress
    port: int
    protocol: Protocol
    flags: BackendFlags = NO_BACKEND_FLAGS  # FOREIGN: on a node without the bpf datapath


@dataclass(frozen=True, slots=True)
class FrontendEntry:
    service_id: int
    backends: tuple[BackendRef, ...]  # slot i+1 holds backends[i]
    flags: LbFlags
    affinity_timeout: int = 0
    maglev_id: int = 0  # LbFlags.MAGLEV: the table in LbState.maglev
    source_ranges: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceLb:
    """One Service's share of the load balancer maps."""

    frontends: tuple[tuple[Frontend, FrontendEntry], ...]
    maglev: tuple[tuple[int, tuple[BackendRef, ...]], ...]
    problems: tuple[str, ...] = ()


class LbState:
    """The load balancer maps' contents, by Service (`groups`) and merged (`frontends`,
    `maglev`). When two Services claim one frontend (or Maglev table id), the one whose
    namespace/name sorts last wins. A state made by `lb_state` from the previous one
    knows which Services it changed (`changed_since`)."""

    __slots__ = ("__weakref__", "_base", "_changed", "frontends", "groups", "maglev",
                 "options", "problem_keys", "problems", "shared", "table")

    def __init__(self, groups: Mapping[ServiceKey, ServiceLb], *,
                 frontends: Mapping[Frontend, FrontendEntry] | None = None,
                 maglev: Mapping[int, tuple[BackendRef, ...]] | None = None,
                 shared: frozenset[object] = frozenset(),
                 table: ServiceTable | None = None, options: LbOptions | None = None,
                 base: LbState | None = None,
                 changed: frozenset[ServiceKey] = frozenset()) -> None:
        self.groups = groups
        if frontends is None or maglev is None:
            frontends, maglev, shared = _merged(groups)
        self.frontends = frontends
        self.maglev = maglev
        self.shared = shared  # frontends and table ids more than one Service claims
        if base is None:
            problem_keys = frozenset(k for k, g in groups.items() if g.problems)
        else:
            problem_keys = frozenset(k for k in base.problem_keys | changed
                                     if k in groups and groups[k].problems)
        self.problem_keys: frozenset[ServiceKey] = problem_keys
        self.problems = tuple(dict.fromkeys(
            p for key in sorted(problem_keys) for p in groups[key].problems))
        self.table = table
        self.options = options
        self._base = weakref.ref(base) if base is not None else None
        self._changed = changed

    @property
    def backends(self) -> frozenset[BackendRef]:
        return frozenset(b for entry in self.frontends.values() for b in entry.backends)

    @property
    def source_ranges(self) -> frozenset[tuple[int, IPNetwork]]:
        return frozenset((e.service_id, r) for e in self.frontends.values()
                         for r in e.source_ranges)

    def changed_since(self, earlier: LbState) -> frozenset[ServiceKey]:
        """The Services whose entries may differ between EARLIER and this state."""
        if self._base is not None and self._base() is earlier:
            return self._changed
        old, new = earlier.groups, self.groups
        return frozenset([key for key, group in new.items() if old.get(key) is not group]
                         + [key for key in old if key not in new])


def _merged(groups: Mapping[ServiceKey, ServiceLb]
            ) -> tuple[dict[Frontend, FrontendEntry], dict[int, tuple[BackendRef, ...]],
                       frozenset[object]]:
    frontends: dict[Frontend, FrontendEntry] = {}
    maglev: dict[int, tuple[BackendRef, ...]] = {}
    claimed: dict[object, ServiceKey] = {}
    shared: set[object] = set()
    for key in sorted(groups):
        group = groups[key]
        for frontend, entry in group.frontends:
            if claimed.setdefault(frontend, key) != key:
                shared.add(frontend)
            frontends[frontend] = entry
        for table_id, slots in group.maglev:
            if claimed.setdefault(table_id, key) != key:
                shared.add(table_id)
            maglev[table_id] = slots
    return frontends, maglev, frozenset(shared)


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


_last: dict[tuple[LbOptions, frozenset[str]], LbState] = {}
"""The last state by options and foreign nodes: a new ServiceTable made from its table
recompiles only the Services that changed."""


def lb_state(table: ServiceTable, options: LbOptions | None = None,
             foreign_nodes: frozenset[str] = frozenset()) -> LbState:
    """TABLE as load balancer map contents. Backends on FOREIGN_NODES (nodes that run
    without the bpf datapath) are flagged: outside clients' flows to them are SNATed."""
    options = options or LbOptions()
    cache_key = (options, foreign_nodes)
    last = _last.get(cache_key)
    if last is None or last.table is None:
        groups = {key: _service_lb(plans, options, foreign_nodes)
                  for key, plans in table.groups.items()}
        state = LbState(groups, table=table, options=options)
    elif last.table is table:
        return last
    else:
        state = _lb_changes(last, table, options, foreign_nodes,
                            table.changed_since(last.table))
    _last.clear()  # one agent, one set of options: keep only the newest state
    _last[cache_key] = state
    return state


def _lb_changes(last: LbState, table: ServiceTable, options: LbOptions,
                foreign_nodes: frozenset[str], changed: frozenset[ServiceKey]) -> LbState:
    groups = dict(last.groups)
    # Copies without deleted slots are cheap; so only what leaves is deleted.
    frontends = dict(last.frontends)
    maglev = dict(last.maglev)
    conflict = False
    for key in changed:
        old = groups.pop(key, None)
        plans = table.groups.get(key)
        new = _service_lb(plans, options, foreign_nodes) if plans is not None else None
        kept_frontends = dict(new.frontends) if new is not None else {}
        kept_tables = dict(new.maglev) if new is not None else {}
        old_frontends = dict(old.frontends) if old is not None else {}
        old_tables = dict(old.maglev) if old is not None else {}
        for frontend in old_frontends:
            conflict |= frontend in last.shared
            if frontend not in kept_frontends:
                frontends.pop(frontend, None)
        for table_id in old_tables:
            conflict |= table_id in last.shared
            if table_id not in kept_tables:
                maglev.pop(table_id, None)
        if new is None:
            continue
        groups[key] = new
        for frontend, entry in new.frontends:
            conflict |= frontend in frontends and frontend not in old_frontends
            frontends[frontend] = entry
        for table_id, slots in new.maglev:
            conflict |= table_id in maglev and table_id not in old_tables
            maglev[table_id] = slots
    if conflict:
        return LbState(groups, table=table, options=options, base=last, changed=changed)
    return LbState(groups, frontends=frontends, maglev=maglev, shared=last.shared, table=table,
                   options=options, base=last, changed=changed)


def _service_lb(plans: tuple[ServicePlan, ...], options: LbOptions,
                foreign_nodes: frozenset[str]) -> ServiceLb:
    frontends: dict[Frontend, FrontendEntry] = {}
    maglev: dict[int, tuple[BackendRef, ...]] = {}
    problems: list[str] = []
    for plan in plans:
        backends = tuple(_backend_ref(b.address, b.port, plan.frontend.protocol,
                                      BackendFlags.FOREIGN if b.node in foreign_nodes
                                      else NO_BACKEND_FLAGS)
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
                maglev[table_id] = _maglev_table(backends, options.maglev_table_size)
        mode = _choice(plan, "lb-mode", ExternalMode, options.external_mode, problems)
        if mode is ExternalMode.DSR and plan.scope is not FrontendScope.CLUSTER_IP:
            flags |= LbFlags.DSR
        frontends[plan.frontend] = FrontendEntry(service_id(plan), backends, flags,
                                                 plan.affinity_timeout or 0, table_id,
                                                 plan.source_ranges)
    return ServiceLb(tuple(frontends.items()), tuple(maglev.items()),
                     tuple(dict.fromkeys(problems)))


@functools.lru_cache(maxsize=1 << 17)
def _backend_ref(address: IPAddress, port: int, protocol: Protocol,
                 flags: BackendFlags) -> BackendRef:
    """One object per backend, however many Services name it."""
    return BackendRef(address, port, protocol, flags)


@functools.lru_cache(maxsize=64)
def _maglev_table(backends: tuple[BackendRef, ...], size: int) -> tuple[BackendRef, ...]:
    """Tables by backend set: Services (and frontends) with the same backends share one."""
    return backend_table(backends, size)
