"""apply.lbmaps on real pinned maps: syncs after the first write only what changed, and
after any random sequence of changes the maps hold what one sync from scratch writes."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.apply.lbmaps import LbMaps, sync_lb
from sluice.apply.nodeobject import NodeObject
from sluice.compile import lbstate, services
from sluice.compile.lbstate import LbAlgorithm, LbOptions, lb_state
from sluice.compile.services import service_table
from sluice.datapath import lb
from sluice.datastore import Change, ChangeKind, ClusterState, ResourceKey
from tests.compile import scalescenario as scenario

pytestmark = pytest.mark.root

OPTIONS = LbOptions(LbAlgorithm.RANDOM, maglev_table_size=251)


@pytest.fixture
def node(pin_dir: str) -> Iterator[NodeObject]:
    loaded = NodeObject.load(pin_dir, tunnel_vni=1, maglev_table_size=251)
    try:
        yield loaded
    finally:
        loaded.close()


class OpCounter:
    """Counts the keys each batch write and delete of a map is given."""

    def __init__(self, bpf_map: Any) -> None:
        self.written = 0
        self.deleted = 0
        self.reads = 0
        update, delete, read = bpf_map.update_batch, bpf_map.delete_batch, \
            bpf_map.lookup_batch_raw

        def counted_update(entries: Any) -> int:
            pairs = list(entries)
            self.written += len(pairs)
            return int(update(pairs))

        def counted_delete(keys: Any) -> int:
            listed = list(keys)
            self.deleted += len(listed)
            return int(delete(listed))

        def counted_read() -> dict[bytes, bytes]:
            self.reads += 1
            return dict(read())

        bpf_map.update_batch = counted_update
        bpf_map.delete_batch = counted_delete
        bpf_map.lookup_batch_raw = counted_read


def contents(maps: LbMaps) -> dict[str, Any]:
    """The maps with backend ids replaced by the backends they name (ids are history)."""
    backends = {int(lb.BackendId.from_buffer_copy(k).value): v
                for k, v in maps.backends.lookup_batch_raw().items()}
    entries = {}
    for raw_key, raw in maps.services.lookup_batch_raw().items():
        value = lb.LbValue.from_buffer_copy(raw)
        backend = backends[value.backend_id] if value.backend_id else b""
        value.backend_id = 0
        entries[raw_key] = (bytes(value), backend)
    maglev = {k: backends[int(lb.MaglevSlot.from_buffer_copy(v).value)]
              for k, v in maps.maglev.lookup_batch_raw().items()}
    named = {b for _, b in entries.values() if b} | set(maglev.values())
    return {"services": entries, "maglev": maglev,
            "ranges": set(maps.source_ranges.lookup_batch_raw()),
            "backends": sorted(backends.values()), "named": sorted(named)}


def compiled(state: ClusterState, options: LbOptions) -> lbstate.LbState:
    return lb_state(service_table(state, scenario.NODE), options)


def from_scratch(state: ClusterState, options: LbOptions, maps: LbMaps) -> dict[str, Any]:
    """What one sync of a fresh compile writes into empty maps, read back."""
    for bpf_map in (maps.services, maps.maglev, maps.source_ranges, maps.backends):
        bpf_map.delete_batch([bpf_map.key_type.from_buffer_copy(k)
                              for k in bpf_map.lookup_batch_raw()])
    services._remembered.clear()
    lbstate._last.clear()
    sync_lb(maps, compiled(scenario.fresh(state), options))
    return contents(maps)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("algorithm", list(LbAlgorithm))
def test_random_changes_leave_the_maps_as_a_fresh_sync(node: NodeObject, seed: int,
                                                       algorithm: LbAlgorithm) -> None:
    options = LbOptions(algorithm, maglev_table_size=251)
    rng = random.Random(seed)
    state = scenario.initial(rng)
    services._remembered.clear()
    lbstate._last.clear()
    maps = node.lb
    sync_lb(maps, compiled(state, options))
    assert maps.written is not None
    for batch in itertools.islice(scenario.changes(rng, state), 40):
        state = state.with_changes(batch)
        sync_lb(maps, compiled(state, options))
    got = contents(maps)
    assert got["backends"] == got["named"], "a backend no entry names was left behind"
    scratch = LbMaps(maps.services, maps.backends, maps.maglev, maps.source_ranges)
    assert got == from_scratch(state, options, scratch)


def test_one_endpoint_change_writes_only_its_entries(node: NodeObject) -> None:
    rng = random.Random(3)
    state = scenario.initial(rng)
    services._remembered.clear()
    lbstate._last.clear()
    maps = node.lb
    sync_lb(maps, compiled(state, OPTIONS))
    total = len(maps.services.lookup_batch_raw())
    counters = {name: OpCounter(getattr(maps, name))
                for name in ("services", "backends", "maglev", "source_ranges")}
    slice_ = next(s for s in state.endpoint_slices()
                  if s.endpoints and s.address_type == "IPv4"
                  and (s.namespace, s.service_name) in service_table(state, scenario.NODE).groups)
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": slice_.name, "namespace": slice_.namespace,
                        "labels": dict(slice_.metadata.labels)},
           "addressType": "IPv4",
           "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol}
                     for p in slice_.ports],
           "endpoints": [{"addresses": ["198.18.99.1"], "conditions": {"ready": True}}]
           + [{"addresses": [str(a) for a in e.ips],
               "conditions": {"ready": e.conditions.ready}} for e in slice_.endpoints[1:]]}
    changed = scenario.resource(doc)
    state = state.with_changes([Change(ChangeKind.MODIFIED, ResourceKey.of(changed), changed,
                                       state.revision + 1)])
    log = sync_lb(maps, compiled(state, OPTIONS))
    frontends = [p for p in service_table(state, scenario.NODE).groups[
        (slice_.namespace, slice_.service_name or "")] if p.frontend.address.version == 4]
    touched = counters["services"].written + counters["services"].deleted
    assert 0 < touched <= sum(len(p.backends) + 2 for p in frontends), log.summary()
    assert touched < total
    assert counters["backends"].written <= len(slice_.ports)  # the new address, per port
    assert all(c.reads == 0 for c in counters.values()), "an incremental sync read a map"
    scratch = LbMaps(maps.services, maps.backends, maps.maglev, maps.source_ranges)
    assert contents(maps) == from_scratch(state, OPTIONS, scratch)


def test_a_failed_write_makes_the_next_sync_read_the_maps(node: NodeObject) -> None:
    rng = random.Random(4)
    state = scenario.initial(rng)
    services._remembered.clear()
    lbstate._last.clear()
    maps = node.lb
    sync_lb(maps, compiled(state, OPTIONS))
    batches = scenario.changes(rng, state)
    state = state.with_changes(next(batches))
    original = maps.services.update_batch

    def failing(entries: Any) -> int:
        raise OSError("injected")

    maps.services.update_batch = failing  # type: ignore[method-assign]
    with pytest.raises(OSError, match="injected"):
        sync_lb(maps, compiled(state, OPTIONS))
    assert maps.written is None
    maps.services.update_batch = original  # type: ignore[method-assign]
    sync_lb(maps, compiled(state, OPTIONS))
    assert maps.written is not None
    scratch = LbMaps(maps.services, maps.backends, maps.maglev, maps.source_ranges)
    assert contents(maps) == from_scratch(state, OPTIONS, scratch)
