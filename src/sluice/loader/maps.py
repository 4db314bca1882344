"""Typed access to BPF maps: lookup, update, delete, iterate and batch operations."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sluice.loader.btf import Btf
from sluice.loader.layout import LayoutMismatchError, verify_layout
from sluice.loader.libbpf import MapBatchOpts, MapInfo, check, lib, possible_cpus

if TYPE_CHECKING:
    from ctypes import _CData

K = TypeVar("K", bound="_CData")
V = TypeVar("V", bound="_CData")

ENOTSUPP = 524  # the kernel-internal "not supported" some map types return for batch ops


class UpdateFlag(IntEnum):
    ANY = 0
    NOEXIST = 1
    EXIST = 2


class MapType(IntEnum):
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    RINGBUF = 27


PERCPU_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH}


@dataclass(frozen=True)
class MapMeta:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    map_id: int = 0


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
          "reading map info")
    return info


class Map(Generic[K, V]):
    """A map whose key and value layouts were verified against its BTF.

    Values of per-CPU maps are read as one value per possible CPU (`lookup_percpu`).
    """

    def __init__(self, fd: int, meta: MapMeta, key_type: type[K], value_type: type[V],
                 *, owns_fd: bool = False) -> None:
        self.fd = fd
        self.meta = meta
        self.key_type = key_type
        self.value_type = value_type
        # ctypes arithmetic (`T * n`, from_buffer_copy) is beyond what the stubs can type.
        self._k: Any = key_type
        self._v: Any = value_type
        self._owns_fd = owns_fd
        self._check_sizes()

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def percpu(self) -> bool:
        return self.meta.map_type in PERCPU_TYPES

    @classmethod
    def from_pin(cls, path: str, key_type: type[K], value_type: type[V]) -> Map[K, V]:
        """Adopt a pinned map, verifying its layout against the BTF the kernel kept for it."""
        fd = check(lib().bpf_obj_get(path.encode()), f"opening pinned map {path}")
        try:
            info = map_info(fd)
            meta = MapMeta(info.name.decode(), info.type, info.key_size, info.value_size,
                           info.max_entries, info.id)
            if info.btf_id:
                with Btf.from_kernel_id(info.btf_id) as btf:
                    verify_layout(btf, info.btf_key_type_id, key_type, f"map {path} key")
                    verify_layout(btf, info.btf_value_type_id, value_type, f"map {path} value")
            return cls(fd, meta, key_type, value_type, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def __enter__(self) -> Map[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _check_sizes(self) -> None:
        key_size, value_size = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        if key_size != self.meta.key_size or value_size != self.meta.value_size:
            raise LayoutMismatchError(
                f"map {self.name}: key/value are {self.meta.key_size}/{self.meta.value_size} "
                f"bytes in the kernel, {key_size}/{value_size} in Python"
            )

    def lookup(self, key: K) -> V | None:
        if self.percpu:
            raise TypeError(f"map {self.name} is per-CPU: use lookup_percpu")
        value = self.value_type()
        ret = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        if ret == -errno.ENOENT:
            return None
        check(ret, f"looking up in map {self.name}")
        return value

    def lookup_percpu(self, key: K) -> list[V] | None:
        """One value per possible CPU; the kernel lays them out 8-byte aligned."""
        stride = (ctypes.sizeof(self.value_type) + 7) // 8 * 8
        buf = ctypes.create_string_buffer(stride * possible_cpus())
        ret = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), buf)
        if ret == -errno.ENOENT:
            return None
        check(ret, f"looking up in map {self.name}")
        return [self._v.from_buffer_copy(buf, i * stride)
                for i in range(possible_cpus())]

    def update(self, key: K, value: V, flag: UpdateFlag = UpdateFlag.ANY) -> None:
        check(lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value),
                                        int(flag)),
              f"updating map {self.name}")

    def delete(self, key: K) -> bool:
        """Delete a key; False when it was not there."""
        ret = lib().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret == -errno.ENOENT:
            return False
        check(ret, f"deleting from map {self.name}")
        return True

    def keys(self) -> Iterator[K]:
        key = self.key_type()
        ret = lib().bpf_map_get_next_key(self.fd, None, ctypes.byref(key))
        while ret == 0:
            current = self._k.from_buffer_copy(key)
            yield current
            ret = lib().bpf_map_get_next_key(self.fd, ctypes.byref(current), ctypes.byref(key))
        if ret != -errno.ENOENT:
            check(ret, f"iterating map {self.name}")

    def items(self) -> Iterator[tuple[K, V]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted by the datapath while iterating
                yield key, value

    def update_batch(self, entries: Iterable[tuple[K, V]]) -> int:
        """Write many entries in one syscall where the map type allows, else one by one."""
        pairs = list(entries)
        if not pairs:
            return 0
        keys = (self._k * len(pairs))(*(k for k, _ in pairs))
        values = (self._v * len(pairs))(*(v for _, v in pairs))
        count = ctypes.c_uint32(len(pairs))
        opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
        ret = lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(count),
                                         ctypes.byref(opts))
        if ret in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP) and count.value == 0:
            for key, value in pairs:
                self.update(key, value)
            return len(pairs)
        check(ret, f"batch-updating map {self.name}")
        return int(count.value)

    def delete_batch(self, keys: Iterable[K]) -> int:
        """Delete many keys; keys already gone are not an error. Returns how many were gone."""
        key_list = list(keys)
        if not key_list:
            return 0
        array = (self._k * len(key_list))(*key_list)
        count = ctypes.c_uint32(len(key_list))
        opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
        ret = lib().bpf_map_delete_batch(self.fd, array, ctypes.byref(count), ctypes.byref(opts))
        if ret == 0:
            return int(count.value)
        if ret == -errno.ENOENT or ret in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP):
            # Batch stops at the first missing key (or is unsupported): finish one by one.
            done = int(count.value)
            return done + sum(self.delete(k) for k in key_list[done:])
        check(ret, f"batch-deleting from map {self.name}")
        return int(count.value)

    def lookup_batch(self) -> list[tuple[K, V]]:
        """All entries, in batches where the map type allows, else by iteration."""
        return [(self._k.from_buffer_copy(key), self._v.from_buffer_copy(value))
                for key, value in self.lookup_batch_raw().items()]

    def lookup_batch_raw(self) -> dict[bytes, bytes]:
        """All entries as key bytes -> value bytes, without an object per entry (for
        comparing large maps; decode with key_type/value_type.from_buffer_copy)."""
        if self.percpu:
            raise TypeError(f"map {self.name} is per-CPU")
        ksize, vsize = self.meta.key_size, self.meta.value_size
        chunk = max(1, min(self.meta.max_entries, 4096))
        keys = ctypes.create_string_buffer(ksize * chunk)
        values = ctypes.create_string_buffer(vsize * chunk)
        # The batch cursor is opaque; generic maps write a whole key into it.
        in_batch = ctypes.create_string_buffer(max(ksize, 8))
        out_batch = ctypes.create_string_buffer(max(ksize, 8))
        opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
        found: dict[bytes, bytes] = {}
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            ret = lib().bpf_map_lookup_batch(
                self.fd, None if first else in_batch, out_batch,
                keys, values, ctypes.byref(count), ctypes.byref(opts))
            if first and ret in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP):
                return {bytes(key): bytes(value) for key, value in self.items()}
            if ret not in (0, -errno.ENOENT):
                check(ret, f"batch-reading map {self.name}")
            key_bytes, value_bytes = keys.raw, values.raw
            for i in range(count.value):
                found[key_bytes[i * ksize:(i + 1) * ksize]] = \
                    value_bytes[i * vsize:(i + 1) * vsize]
            if ret == -errno.ENOENT:
                return found
            ctypes.memmove(in_batch, out_batch, len(out_batch))
            first = False

    def clear(self) -> None:
        self.delete_batch(list(self.keys()))

