"""Map access through the loader: batches, iteration, pinning and adoption, ring buffers."""

from __future__ import annotations

import ctypes
import ipaddress
import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from sluice.datapath.prefilter import MAP_NAME, PrefilterAction, PrefilterEntry, PrefilterKey
from sluice.loader import BpfObject, LayoutMismatchError, Map, RingBuffer, UpdateFlag, test_run
from sluice.loader.libbpf import LibbpfError

pytestmark = pytest.mark.root

NETWORKS = list(ipaddress.ip_network("198.18.0.0/20").subnets(new_prefix=28))


def entries(action: PrefilterAction = PrefilterAction.DROP) -> list[tuple[PrefilterKey,
                                                                          PrefilterEntry]]:
    return [(PrefilterKey.of(n), PrefilterEntry(action=action, rule_id=i))
            for i, n in enumerate(NETWORKS)]


def test_batch_update_lookup_delete() -> None:
    with BpfObject.open("prefilter") as obj:
        obj.load()
        cidrs = obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)
        assert cidrs.update_batch(entries()) == len(NETWORKS)
        got = {k.network(): v.rule_id for k, v in cidrs.lookup_batch()}
        assert got == {n: i for i, n in enumerate(NETWORKS)}
        assert {k.network() for k in cidrs.keys()} == set(NETWORKS)  # noqa: SIM118

        gone = cidrs.delete_batch([PrefilterKey.of(n) for n in NETWORKS[:10]])
        assert gone == 10
        assert len(cidrs.lookup_batch()) == len(NETWORKS) - 10
        # Deleting keys that are already gone is not an error.
        assert cidrs.delete_batch([PrefilterKey.of(n) for n in NETWORKS[:12]]) == 2
        assert cidrs.delete(PrefilterKey.of(NETWORKS[0])) is False


def test_update_flags_are_enforced() -> None:
    with BpfObject.open("prefilter") as obj:
        obj.load()
        cidrs = obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)
        key = PrefilterKey.of("198.18.0.0/24")
        with pytest.raises(LibbpfError):
            cidrs.update(key, PrefilterEntry(), UpdateFlag.EXIST)
        cidrs.update(key, PrefilterEntry(), UpdateFlag.NOEXIST)
        with pytest.raises(LibbpfError):
            cidrs.update(key, PrefilterEntry(), UpdateFlag.NOEXIST)


def test_max_entries_is_configurable_before_load() -> None:
    with BpfObject.open("prefilter") as obj:
        obj.set_max_entries(MAP_NAME, 8)
        obj.load()
        cidrs = obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)
        assert cidrs.meta.max_entries == 8
        with pytest.raises(LibbpfError):
            cidrs.update_batch(entries()[:9])


def test_pinned_maps_are_adopted_by_the_next_load(pin_dir: str) -> None:
    with BpfObject.open("prefilter", pin_dir=pin_dir) as first:
        first.load()
        first.map(MAP_NAME, PrefilterKey, PrefilterEntry).update_batch(entries())
    assert os.path.exists(os.path.join(pin_dir, MAP_NAME))

    with BpfObject.open("prefilter", pin_dir=pin_dir) as second:
        second.load()
        adopted = second.map(MAP_NAME, PrefilterKey, PrefilterEntry)
        assert len(adopted.lookup_batch()) == len(NETWORKS)
        packet = bytes(Ether() / IP(src=str(NETWORKS[3][1])) / UDP())
        assert test_run(second.program("prefilter_tc"), packet).retval == 2


def test_pinned_map_opened_by_path_is_layout_checked(pin_dir: str) -> None:
    with BpfObject.open("prefilter", pin_dir=pin_dir) as obj:
        obj.load()
        obj.map(MAP_NAME, PrefilterKey, PrefilterEntry).update_batch(entries()[:3])
    path = os.path.join(pin_dir, MAP_NAME)
    pinned = Map.from_pin(path, PrefilterKey, PrefilterEntry)
    try:
        assert len(list(pinned.items())) == 3
    finally:
        pinned.close()

    class ShortEntry(ctypes.Structure):
        _c_name_ = "prefilter_entry"
        _fields_ = [("action", ctypes.c_uint32), ("rule_id", ctypes.c_uint32),
                    ("packets", ctypes.c_uint64)]

    with pytest.raises(LayoutMismatchError, match=r"prefilter_entry|size"):
        Map.from_pin(path, PrefilterKey, ShortEntry)


def test_ring_buffer_delivers_records() -> None:
    records: list[int] = []
    with BpfObject.open("probes") as obj:
        obj.load()
        ringbuf_fd = obj.map_fd("probe_ringbuf")
        with RingBuffer(ringbuf_fd, lambda raw: records.append(int.from_bytes(raw, "little"))) \
                as ring:
            packets = [bytes(Ether() / IP() / UDP() / (b"p" * n)) for n in (10, 20, 30)]
            for packet in packets:
                test_run(obj.program("probe_tc"), packet)
            assert ring.poll(timeout_ms=1000) == 3
        assert records == [len(p) for p in packets]
        counts = obj.map("probe_percpu", ctypes.c_uint32, ctypes.c_uint64)
        per_cpu = counts.lookup_percpu(ctypes.c_uint32(0))
        assert per_cpu is not None and sum(v.value for v in per_cpu) == 3


def test_ring_buffer_callback_errors_surface() -> None:
    def fail(_raw: bytes) -> None:
        raise ValueError("decoder broke")

    with BpfObject.open("probes") as obj:
        obj.load()
        with RingBuffer(obj.map_fd("probe_ringbuf"), fail) as ring:
            test_run(obj.program("probe_tc"), bytes(Ether() / IP() / UDP()))
            with pytest.raises(ValueError, match="decoder broke"):
                ring.poll(timeout_ms=1000)
