"""Sync the load balancer maps to an LbState, as diffs.

Order matters because the datapath reads while we write: new backends first, then Maglev
tables and source ranges, then frontends (a frontend's backend slots before its slot 0,
so a count never names a slot that is not there yet), and only then what is no longer
wanted. An unchanged backend keeps its id, so flows and affinity that name it survive;
one endpoint change rewrites only the entries that hold it.

The first sync of an LbMaps reads the maps and diffs everything against them (adopting
what a previous agent wrote). It remembers what it wrote (`LbMaps.written`); later syncs
diff the new LbState against that memory, Service by Service, and touch only the entries
of the Services that changed, without reading the maps. A failed write forgets the
memory, so the next sync reads the maps again.
"""

from __future__ import annotations

import functools
import heapq
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.apply.bpfmaps import sync_map
from sluice.apply.diff import ChangeLog, Changes
from sluice.compile.lbstate import BackendRef, FrontendEntry, LbState
from sluice.compile.services import Frontend
from sluice.datapath import lb
from sluice.datapath.addr import SlAddr
from sluice.loader.maps import Map
from sluice.model.addresses import IPAddress

MAX_BACKEND_ID = 2**32 - 1


@dataclass
class LbMaps:
    services: Map[lb.LbKey, lb.LbValue]
    backends: Map[Any, lb.LbBackend]
    maglev: Map[lb.LbMaglevKey, Any]
    source_ranges: Map[lb.LbSourceKey, Any]
    written: Written | None = field(default=None, compare=False)


@dataclass
class Written:
    """What the maps hold since the last sync: its state and the backends' ids, with how
    many frontend slots name each backend."""

    state: LbState
    ids: dict[BackendRef, int]
    uses: dict[BackendRef, int]
    free: list[int]  # a heap of ids below next_id that are not in use
    next_id: int

    @classmethod
    def of(cls, state: LbState, ids: dict[BackendRef, int]) -> Written:
        uses: dict[BackendRef, int] = {}
        for entry in state.frontends.values():
            for ref in entry.backends:
                uses[ref] = uses.get(ref, 0) + 1
        top = max(ids.values(), default=0)
        free = sorted(set(range(1, top + 1)) - set(ids.values()))
        return cls(state, dict(ids), uses, free, top + 1)

    def take(self, ref: BackendRef) -> int | None:
        """One more slot names REF; its id when it is new (to be written)."""
        self.uses[ref] = self.uses.get(ref, 0) + 1
        if ref in self.ids:
            return None
        if self.free:
            ident = heapq.heappop(self.free)
        else:
            if self.next_id > MAX_BACKEND_ID:
                raise OverflowError("out of backend ids")
            ident = self.next_id
            self.next_id += 1
        self.ids[ref] = ident
        return ident

    def release(self, ref: BackendRef) -> int | None:
        """One slot less names REF; its id when no slot does any more (to be deleted)."""
        left = self.uses[ref] - 1
        if left:
            self.uses[ref] = left
            return None
        del self.uses[ref]
        ident = self.ids.pop(ref)
        heapq.heappush(self.free, ident)
        return ident


# Map keys and values by address, port and protocol: building them parses the address
# as text, and the same frontends and backends come back every reconcile.
_V4_MAPPED = bytes(10) + b"\xff\xff"


def _sl_addr(address: IPAddress) -> SlAddr:
    """The map form of ADDRESS from its bytes (SlAddr.of parses its text)."""
    return SlAddr.from_buffer_copy(address.packed if address.version == 6
                                   else _V4_MAPPED + address.packed)


@functools.lru_cache(maxsize=1 << 16)
def _frontend_bytes(address: IPAddress, port: int, protocol: str) -> bytes:
    return bytes(lb.LbKey(addr=_sl_addr(address), port=socket.htons(port),
                          proto=lb.PROTOCOLS[protocol]))


@functools.lru_cache(maxsize=1 << 17)
def _backend_bytes(address: IPAddress, port: int, protocol: str,
                   flags: lb.BackendFlags) -> bytes:
    return bytes(lb.LbBackend(addr=_sl_addr(address), port=socket.htons(port),
                              proto=lb.PROTOCOLS[protocol], flags=int(flags)))


def _same(old: Any, new: Any) -> bool:
    return bytes(old) == bytes(new)


def _frontend_order(frontend: Frontend) -> tuple[int, int, int, str]:
    return (frontend.address.version, int(frontend.address), frontend.port,
            frontend.protocol)


def _order(ref: BackendRef) -> tuple[int, int, int, str]:
    return ref.address.version, int(ref.address), ref.port, ref.protocol


def backend_ids(current: Mapping[int, bytes], wanted: Mapping[BackendRef, bytes]
                ) -> dict[BackendRef, int]:
    """Ids for WANTED (each backend's map value): the id CURRENT (id -> value in the map)
    already gives it, else the lowest free one."""
    by_bytes = {value: ref for ref, value in wanted.items()}
    ids: dict[BackendRef, int] = {}
    for ident, value in current.items():
        ref = by_bytes.get(value)
        if ref is not None and ref not in ids:
            ids[ref] = ident
    used = set(ids.values())
    next_id = 1
    for ref in sorted(wanted.keys() - ids.keys(), key=_order):
        while next_id in used:
            next_id += 1
        if next_id > MAX_BACKEND_ID:
            raise OverflowError("out of backend ids")
        ids[ref] = next_id
        used.add(next_id)
    return ids


def sync_lb(maps: LbMaps, state: LbState) -> ChangeLog:
    written = maps.written
    maps.written = None  # until this sync is done
    if written is None:
        log, ids = _sync_all(maps, state)
        maps.written = Written.of(state, ids)
    else:
        log = _sync_changes(maps, written, state)
        written.state = state
        maps.written = written
    return log


def _service_entries(frontend: Frontend, entry: FrontendEntry | None,
                     ids: Mapping[BackendRef, int]) -> dict[bytes, tuple[lb.LbKey, lb.LbValue]]:
    """FRONTEND's entries in the services map: its backend slots, then slot 0."""
    if entry is None:
        return {}
    key = lb.LbKey.from_buffer_copy(_frontend_bytes(frontend.address, frontend.port,
                                                    frontend.protocol))
    found: dict[bytes, tuple[lb.LbKey, lb.LbValue]] = {}
    for slot, ref in enumerate(entry.backends, start=1):
        slot_key = lb.LbKey.from_buffer_copy(key)
        slot_key.slot = slot
        found[bytes(slot_key)] = (slot_key, lb.LbValue.slot(ids[ref]))
    found[bytes(key)] = (key, lb.LbValue.service(entry.service_id, len(entry.backends),
                                                 entry.flags, entry.affinity_timeout,
                                                 entry.maglev_id))
    return found


def _maglev_ids(slots: tuple[BackendRef, ...] | None, ids: Mapping[BackendRef, int]
                ) -> list[int]:
    return [ids[ref] for ref in slots] if slots else []


def _sync_changes(maps: LbMaps, written: Written, state: LbState) -> ChangeLog:
    """Write what differs between WRITTEN.state and STATE, for the Services that changed."""
    old = written.state
    changed = state.changed_since(old)
    frontends: set[Frontend] = set()
    tables: set[int] = set()
    for key in changed:
        for groups in (old.groups, state.groups):
            group = groups.get(key)
            if group is not None:
                frontends.update(frontend for frontend, _ in group.frontends)
                tables.update(table_id for table_id, _ in group.maglev)
    if old.shared or state.shared:
        # Services claiming one frontend: which wins may move ranges of untouched ones.
        ranges_before, ranges_after = set(old.source_ranges), set(state.source_ranges)
    else:
        ranges_before, ranges_after = (
            {(e.service_id, r) for f in frontends if (e := entries.get(f)) is not None
             for r in e.source_ranges} for entries in (old.frontends, state.frontends))
    moved = [(f, old.frontends.get(f), state.frontends.get(f))
             for f in sorted(frontends, key=_frontend_order)]
    moved = [(f, before, after) for f, before, after in moved if before != after]
    tables_moved = [(t, old.maglev.get(t), state.maglev.get(t)) for t in sorted(tables)]
    tables_moved = [(t, before, after) for t, before, after in tables_moved if before != after]
    log = ChangeLog()
    try:
        # Backends of the old entries keep their ids until released below: one map serves
        # old and new entries alike.
        ids = written.ids
        new_backends = [(ref, ident) for _, _, after in moved if after is not None
                        for ref in after.backends
                        if (ident := written.take(ref)) is not None]
        maps.backends.update_batch(
            (lb.BackendId(ident), lb.LbBackend.from_buffer_copy(
                _backend_bytes(ref.address, ref.port, ref.protocol, ref.flags)))
            for ref, ident in new_backends)
        log["maglev"] = _write_changes(
            maps.maglev, ((lb.LbMaglevKey(table=t, index=i), lb.MaglevSlot(ident))
                          for t, before, after in tables_moved
                          for i, (was, ident) in enumerate(_padded(
                              _maglev_ids(before, ids), _maglev_ids(after, ids)))
                          if ident is not None and was != ident),
            [lb.LbMaglevKey(table=t, index=i) for t, before, after in tables_moved
             for i in range(len(after or ()), len(before or ()))],
            added=sum(max(0, len(after or ()) - len(before or ()))
                      for _, before, after in tables_moved))
        log["source ranges"] = _write_changes(
            maps.source_ranges,
            ((lb.LbSourceKey.of(sid, net), lb.SourceAllowed(1))
             for sid, net in ranges_after - ranges_before),
            [lb.LbSourceKey.of(sid, net) for sid, net in ranges_before - ranges_after],
            added=len(ranges_after - ranges_before))
        services = _write_services(maps, moved, ids)
        log["frontends"] = services
        gone = [ident for _, before, _ in moved if before is not None
                for ref in before.backends if (ident := written.release(ref)) is not None]
        maps.backends.delete_batch(lb.BackendId(ident) for ident in gone)
        log["backends"] = Changes(added=len(new_backends), removed=len(gone))
    except BaseException:
        maps.written = None
        raise
    return log


def _padded(before: list[int], after: list[int]) -> Iterable[tuple[int | None, int | None]]:
    for index in range(max(len(before), len(after))):
        yield (before[index] if index < len(before) else None,
               after[index] if index < len(after) else None)


def _write_changes(bpf_map: Map[Any, Any], writes: Iterable[tuple[Any, Any]],
                   deletes: list[Any], *, added: int) -> Changes:
    pairs = list(writes)
    bpf_map.update_batch(pairs)
    bpf_map.delete_batch(deletes)
    return Changes(added=added, changed=len(pairs) - added, removed=len(deletes))


def _write_services(maps: LbMaps,
                    moved: list[tuple[Frontend, FrontendEntry | None, FrontendEntry | None]],
                    ids: Mapping[BackendRef, int]) -> Changes:
    changes = Changes()
    writes: list[tuple[lb.LbKey, lb.LbValue]] = []
    deletes: list[lb.LbKey] = []
    for frontend, before, after in moved:
        had = _service_entries(frontend, before, ids)
        wanted = _service_entries(frontend, after, ids)
        for raw, (key, value) in wanted.items():
            was = had.get(raw)
            if was is None:
                changes.added += 1
            elif bytes(was[1]) == bytes(value):
                continue
            else:
                changes.changed += 1
            writes.append((key, value))
        deletes += [key for raw, (key, _) in had.items() if raw not in wanted]
    maps.services.update_batch(writes)
    maps.services.delete_batch(deletes)
    changes.removed = len(deletes)
    return changes


def _sync_all(maps: LbMaps, state: LbState) -> tuple[ChangeLog, dict[BackendRef, int]]:
    """Diff everything against what the maps hold (the first sync)."""
    log = ChangeLog()
    raw_backends = maps.backends.lookup_batch_raw()
    current = {int(lb.BackendId.from_buffer_copy(key).value): value
               for key, value in raw_backends.items()}
    wanted = {ref: _backend_bytes(ref.address, ref.port, ref.protocol, ref.flags)
              for ref in state.backends}
    ids = backend_ids(current, wanted)
    values = {ref: lb.LbBackend.from_buffer_copy(raw) for ref, raw in wanted.items()}
    backend_entries = {
        bytes(key): (key, values[ref]) for key, ref in (
            (lb.BackendId(ident), ref) for ref, ident in ids.items())
    }
    current_keys = raw_backends.keys()
    # Add (never remove) backends first: the frontends written below name them.
    additions = {raw: entry for raw, entry in backend_entries.items() if raw not in current_keys}
    maps.backends.update_batch(additions.values())

    maglev: dict[bytes, tuple[lb.LbMaglevKey, Any]] = {}
    for table, slots in state.maglev.items():
        for index, ref in enumerate(slots):
            mkey = lb.LbMaglevKey(table=table, index=index)
            maglev[bytes(mkey)] = (mkey, lb.MaglevSlot(ids[ref]))
    log["maglev"] = sync_map(maps.maglev, maglev, same=_same)

    ranges: dict[bytes, tuple[lb.LbSourceKey, Any]] = {}
    for service_id, network in state.source_ranges:
        rkey = lb.LbSourceKey.of(service_id, network)
        ranges[bytes(rkey)] = (rkey, lb.SourceAllowed(1))
    log["source ranges"] = sync_map(maps.source_ranges, ranges, same=_same)

    services: dict[bytes, tuple[lb.LbKey, lb.LbValue]] = {}
    for frontend, entry in state.frontends.items():
        key = lb.LbKey.from_buffer_copy(_frontend_bytes(frontend.address, frontend.port,
                                                        frontend.protocol))
        for slot, ref in enumerate(entry.backends, start=1):
            slot_key = lb.LbKey.from_buffer_copy(key)  # parsing the address once is enough
            slot_key.slot = slot
            services[bytes(slot_key)] = (slot_key, lb.LbValue.slot(ids[ref]))
        services[bytes(key)] = (key, lb.LbValue.service(
            entry.service_id, len(entry.backends), entry.flags, entry.affinity_timeout,
            entry.maglev_id))
    log["frontends"] = sync_map(maps.services, services, same=_same)

    backends = sync_map(maps.backends, backend_entries, same=_same)
    backends.added = len(additions)
    backends.unchanged -= len(additions)
    log["backends"] = backends
    return log, ids

