"""Map layouts are versioned: maps pinned by an older datapath (another key or value
layout, size) are migrated by the node object's load, entries converted field by field;
a map that cannot be converted fails the load naming the map and field, changing nothing.

The older datapath is a maps-only object compiled here from C, so its BTF is what clang
makes of the old structs, as it was for a real older build.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.apply.errors import ApplyError
from sluice.apply.nodeobject import NodeObject
from sluice.datapath import conntrack as ct
from sluice.datapath import endpoints as ep
from sluice.datapath.addr import SlAddr
from sluice.loader import BpfObject, Map
from sluice.loader.convert import ConversionError, converter
from sluice.loader.libbpf import lib, possible_cpus
from sluice.loader.maps import map_info
from sluice.loader.mapshape import Field, Shape
from sluice.loader.migrate import pinned_definition
from tests.conftest import BPFFS, unique

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

OLD_MAPS = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

union sl_addr { __u8 b[16]; __be32 w[4]; };

/* endpoints before identities: narrower ifindex and flags, a field since removed */
struct endpoint_info { __u16 ifindex; __u16 flags; __u8 mac[6]; __u8 host_mac[6];
                       __u32 legacy; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, union sl_addr);
         __type(value, struct endpoint_info); __uint(max_entries, 1024); } endpoints SEC(".maps");

/* conntrack before return tunnels: no peer, ifindex, pad */
struct ct_key { union sl_addr src; union sl_addr dst; __be16 sport; __be16 dport; __u8 proto;
                __u8 pad[3]; };
struct ct_entry { __u64 last_seen_ns; union sl_addr nat_addr; __be16 nat_port; __u8 kind;
                  __u8 flags; __u32 backend_id; __u64 packets; };
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __type(key, struct ct_key);
         __type(value, struct ct_entry); __uint(max_entries, 4096); } conntrack SEC(".maps");

/* per-CPU counters, fewer slots, packets only */
struct policy_counter { __u64 packets; };
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32);
         __type(value, struct policy_counter); __uint(max_entries, 4); }
  policy_counters SEC(".maps");

#ifdef BAD_KEY
/* frontends keyed by an IPv4 address alone: not convertible to union sl_addr */
struct lb_key { __u32 addr; __be16 port; __u8 proto; __u8 pad; __u16 slot; __u16 pad2; };
struct lb_value { __u32 backend_id; __u32 service_id; __u16 count; __u16 flags;
                  __u32 affinity_timeout; __u32 maglev_id; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, struct lb_key);
         __type(value, struct lb_value); __uint(max_entries, 1024); } lb_services SEC(".maps");
#endif

char LICENSE[] SEC("license") = "GPL";
"""


class OldEndpointInfo(ctypes.Structure):
    _c_name_ = "endpoint_info"
    _fields_ = [("ifindex", ctypes.c_uint16), ("flags", ctypes.c_uint16),
                ("mac", ctypes.c_uint8 * 6), ("host_mac", ctypes.c_uint8 * 6),
                ("legacy", ctypes.c_uint32)]


class OldCtEntry(ctypes.Structure):
    _c_name_ = "ct_entry"
    _fields_ = [("last_seen_ns", ctypes.c_uint64), ("nat_addr", SlAddr),
                ("nat_port", ctypes.c_uint16), ("kind", ctypes.c_uint8),
                ("flags", ctypes.c_uint8), ("backend_id", ctypes.c_uint32),
                ("packets", ctypes.c_uint64)]


def compile_old(tmp_path: Path, *defines: str) -> Path:
    source = tmp_path / "old_maps.c"
    source.write_text(OLD_MAPS, encoding="utf-8")
    output = tmp_path / "old_maps.bpf.o"
    subprocess.run(["clang", "-target", "bpf", "-O2", "-g", "-c", str(source), "-o",
                    str(output), f"-I{BPF_DIR / 'build'}", *(f"-D{d}" for d in defines)],
                   check=True, capture_output=True, timeout=120)
    return output


@pytest.fixture
def pin_dir() -> Iterator[str]:
    path = os.path.join(BPFFS, unique("sl-migrate"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pin_older_maps(obj_path: Path, pin_dir: str, names: tuple[str, ...]) -> None:
    """The node's pins, as a current agent leaves them, except NAMES: pinned by the older
    object instead."""
    NodeObject.load(pin_dir).close()
    for name in names:
        os.unlink(os.path.join(pin_dir, name))
    BpfObject(obj_path, pin_dir=pin_dir).load().close()


def pin_ids(pin_dir: str) -> dict[str, int]:
    ids = {}
    for name in os.listdir(pin_dir):
        path = os.path.join(pin_dir, name)
        if os.path.isfile(path):
            fd, _ = pinned_definition(path)
            try:
                ids[name] = map_info(fd).id
            finally:
                os.close(fd)
    return ids


@pytest.mark.root
def test_older_layouts_are_migrated_entry_by_entry(tmp_path: Path, pin_dir: str) -> None:
    migrated = ("endpoints", "conntrack", "policy_counters")
    pin_older_maps(compile_old(tmp_path), pin_dir, migrated)
    with Map.from_pin(f"{pin_dir}/endpoints", SlAddr, OldEndpointInfo) as endpoints:
        endpoints.update(SlAddr.of("198.18.16.5"),
                         OldEndpointInfo(ifindex=7, flags=1, mac=(1, 2, 3, 4, 5, 6),
                                         host_mac=(6, 5, 4, 3, 2, 1), legacy=99))
    key = ct.CtKey.of("198.18.16.5", 40000, "198.19.0.10", 80, "TCP")
    with Map.from_pin(f"{pin_dir}/conntrack", ct.CtKey, OldCtEntry) as conntrack:
        conntrack.update(key, OldCtEntry(last_seen_ns=123, nat_addr=SlAddr.of("198.18.17.9"),
                                         nat_port=0x5000, kind=1, flags=2, backend_id=42,
                                         packets=1000))
    counters = (ctypes.c_uint64 * possible_cpus())(*range(10, 10 + possible_cpus()))
    fd, _ = pinned_definition(f"{pin_dir}/policy_counters")
    try:
        assert lib().bpf_map_update_elem(fd, ctypes.byref(ctypes.c_uint32(2)), counters, 0) == 0
    finally:
        os.close(fd)
    before = pin_ids(pin_dir)

    node = NodeObject.load(pin_dir)
    try:
        after = pin_ids(pin_dir)
        assert after.keys() == before.keys(), "the same pins, at the same paths"
        changed = {name for name in before if before[name] != after[name]}
        assert changed == set(migrated), "only the maps of another layout were replaced"
        entry = node.endpoints.lookup(ep.EndpointKey.of("198.18.16.5"))
        assert entry is not None
        assert (entry.ifindex, entry.flags, entry.identity) == (7, 1, 0)
        assert list(entry.mac) == [1, 2, 3, 4, 5, 6] and list(entry.host_mac) == [6, 5, 4, 3, 2, 1]
        with Map.from_pin(f"{pin_dir}/conntrack", ct.CtKey, ct.CtEntry) as conntrack:
            flow = conntrack.lookup(key)
        assert flow is not None
        assert (flow.last_seen_ns, flow.nat_port, flow.kind, flow.flags, flow.backend_id,
                flow.packets, flow.ifindex) == (123, 0x5000, 1, 2, 42, 1000, 0)
        assert str(flow.nat_addr.to_ip()) == "198.18.17.9"
        summaries = [m.summary() for m in node.obj.migrations]
        assert any("map conntrack" in s and "1 entries migrated" in s for s in summaries), \
            summaries
        assert any("value.legacy dropped" in s and "value.identity added" in s
                   for s in summaries), summaries
        assert node.catch_up_migrations() == 0
    finally:
        node.close()
    with Map.from_pin(f"{pin_dir}/policy_counters", ctypes.c_uint32, PolicyCounter) as pc:
        per_cpu = pc.lookup_percpu(ctypes.c_uint32(2))
    assert per_cpu is not None
    assert [(c.packets, c.bytes) for c in per_cpu] == \
        [(10 + cpu, 0) for cpu in range(possible_cpus())], "per-CPU values, CPU by CPU"
    assert pin_ids(pin_dir) == after
    # Loaded again, everything is adopted as it is.
    again = NodeObject.load(pin_dir)
    try:
        assert not again.obj.migrations and pin_ids(pin_dir) == after
    finally:
        again.close()


class PolicyCounter(ctypes.Structure):
    _c_name_ = "policy_counter"
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


@pytest.mark.root
def test_a_key_field_of_another_type_fails_and_changes_nothing(tmp_path: Path,
                                                               pin_dir: str) -> None:
    pin_older_maps(compile_old(tmp_path, "BAD_KEY"), pin_dir,
                   ("endpoints", "conntrack", "policy_counters", "lb_services"))
    before = pin_ids(pin_dir)
    with pytest.raises(ApplyError) as failure:
        NodeObject.load(pin_dir).close()
    message = str(failure.value)
    assert "map lb_services" in message and "key.addr" in message, message
    assert "was u32, is now a union of 16 bytes" in message, message
    assert pin_ids(pin_dir) == before, "no pin changed"
    assert not [n for n in os.listdir(pin_dir) if n.endswith("-migrating")]


def u(size: int, *, big_endian: bool = False, signed: bool = False) -> Shape:
    return Shape("int", size, signed=signed, big_endian=big_endian)


def struct(*fields: tuple[str, int, Shape]) -> Shape:
    members = tuple(Field(name, offset, 0, shape) for name, offset, shape in fields)
    return Shape("struct", max(o + s.size for _, o, s in fields), members=members)


def test_integers_widen_keeping_sign_and_byte_order() -> None:
    old = struct(("port", 0, u(2, big_endian=True)), ("delta", 2, u(2, signed=True)))
    new = struct(("delta", 0, u(4, signed=True)), ("port", 4, u(4, big_endian=True)),
                 ("extra", 8, u(4)))
    convert = converter(old, new, "map t value")
    out = convert(bytes([0x1F, 0x90]) + (-5).to_bytes(2, "little", signed=True))
    assert int.from_bytes(out[0:4], "little", signed=True) == -5
    assert int.from_bytes(out[4:8], "big") == 8080
    assert out[8:12] == bytes(4)
    assert "map t value.extra added (zero)" in convert.notes


def test_what_cannot_be_converted_is_named() -> None:
    with pytest.raises(ConversionError, match=r"map t value.port: narrowed from u32 to u16"):
        converter(struct(("port", 0, u(4))), struct(("port", 0, u(2))), "map t value")
    with pytest.raises(ConversionError, match=r"map t key.proto: a key field was removed"):
        converter(struct(("port", 0, u(2)), ("proto", 2, u(2))), struct(("port", 0, u(2))),
                  "map t key", key=True)
    with pytest.raises(ConversionError, match=r"LPM trie key"):
        converter(struct(("prefixlen", 0, u(4)), ("addr", 4, u(4))),
                  struct(("prefixlen", 0, u(4)), ("pad", 4, u(4)), ("addr", 8, u(4))),
                  "map t key", key=True, prefix_key=True)
    grown = converter(struct(("prefixlen", 0, u(4)), ("addr", 4, u(4))),
                      struct(("prefixlen", 0, u(4)), ("addr", 4, u(4)), ("port", 8, u(2))),
                      "map t key", key=True, prefix_key=True)
    assert grown(bytes(range(8))) == bytes(range(8)) + bytes(2)
