"""Sync the load balancer maps to an LbState, as diffs.

Order matters because the datapath reads while we write: new backends first, then Maglev
tables and source ranges, then frontends (a frontend's backend slots before its slot 0,
so a count never names a slot that is not there yet), and only then what is no longer
wanted. An unchanged backend keeps its id, so flows and affinity that name it survive;
one endpoint change rewrites only the entries that hold it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.apply.bpfmaps import sync_map
from sluice.apply.diff import ChangeLog
from sluice.compile.lbstate import BackendRef, LbState
from sluice.datapath import lb
from sluice.loader.maps import Map
from sluice.model.addresses import IPAddress

MAX_BACKEND_ID = 2**32 - 1


@dataclass
class LbMaps:
    services: Map[lb.LbKey, lb.LbValue]
    backends: Map[Any, lb.LbBackend]
    maglev: Map[lb.LbMaglevKey, Any]
    source_ranges: Map[lb.LbSourceKey, Any]


# Map keys and values by address, port and protocol: building them parses the address
# as text, and the same frontends and backends come back every reconcile.
@functools.lru_cache(maxsize=1 << 16)
def _frontend_bytes(address: IPAddress, port: int, protocol: str) -> bytes:
    return bytes(lb.LbKey.of(address, port, protocol))


@functools.lru_cache(maxsize=1 << 16)
def _backend_bytes(address: IPAddress, port: int, protocol: str) -> bytes:
    return bytes(lb.LbBackend.of(address, port, protocol))


def _same(old: Any, new: Any) -> bool:
    return bytes(old) == bytes(new)


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
    log = ChangeLog()
    raw_backends = maps.backends.lookup_batch_raw()
    current = {int(lb.BackendId.from_buffer_copy(key).value): value
               for key, value in raw_backends.items()}
    wanted = {ref: _backend_bytes(ref.address, ref.port, ref.protocol)
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
    return log

