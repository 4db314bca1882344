"""Pinned maps of another layout: migrated into the object's layout instead of refused.

Before an object is loaded, every map it would adopt from bpffs is compared with the
object's own definition: type, key and value shapes from BTF (`mapshape`), sizes,
max_entries and flags. Where they differ, the map is planned for migration and every
conversion is worked out (`convert`) before anything changes, so a map that cannot be
converted fails the load with the map and field named, and leaves every pin as it was.

The object is then loaded with fresh maps in their place. Each old map's entries are
copied into its new map, converted (per-CPU values CPU by CPU, array slots by index), and
only once every copy succeeded is each new map pinned over its old pin (a rename on
bpffs: the path never disappears). Programs still attached to the old maps keep running
until their links are given the new programs (`bpf_link_update`); `catch_up` then copies
the entries the old programs added meanwhile (new flows in conntrack), and lets the old
maps go.

Hash, LRU, per-CPU, LPM trie and array maps are migrated. Ring buffers, and the maps the
caller names as scratch (RECREATE), hold nothing worth carrying: they are created afresh.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sluice.loader.btf import Btf
from sluice.loader.convert import ConversionError, Converter, Copy, converter
from sluice.loader.libbpf import LibbpfError, check, lib, possible_cpus
from sluice.loader.maps import PERCPU_TYPES, MapType, map_info
from sluice.loader.mapshape import MapLayout, layout_of

log = logging.getLogger("sluice.loader")

MIGRATING_SUFFIX = "-migrating"  # bpffs refuses names with a dot
ARRAY_TYPES = {MapType.ARRAY, MapType.PERCPU_ARRAY}
# Maps whose contents user space cannot read back as entries.
RECREATED_TYPES = {MapType.RINGBUF, MapType.PERF_EVENT_ARRAY, MapType.PROG_ARRAY,
                   MapType.CGROUP_ARRAY}


class MigrationError(RuntimeError):
    """A pinned map cannot be migrated into the object's layout; nothing was changed."""


@dataclass(frozen=True)
class MapDefinition:
    """What a map is (or will be): its layout, size and flags."""

    name: str
    layout: MapLayout
    max_entries: int
    flags: int

    def differences(self, wanted: MapDefinition) -> list[str]:
        found = []
        if self.layout.map_type != wanted.layout.map_type:
            found.append(f"type {self.layout.map_type} -> {wanted.layout.map_type}")
        if self.layout.key != wanted.layout.key or \
                self.layout.key_size != wanted.layout.key_size:
            found.append("key layout")
        if self.layout.value != wanted.layout.value or \
                self.layout.value_size != wanted.layout.value_size:
            found.append("value layout")
        if self.max_entries != wanted.max_entries:
            found.append(f"max_entries {self.max_entries} -> {wanted.max_entries}")
        if self.flags != wanted.flags:
            found.append(f"flags {self.flags:#x} -> {wanted.flags:#x}")
        return found


@dataclass
class Migration:
    """One pinned map being replaced by a map of the object's definition."""

    name: str
    path: str
    old_fd: int
    old: MapDefinition
    new: MapDefinition
    reasons: list[str]
    key: Converter | None = None  # None: recreated, nothing copied
    value: Converter | None = None
    new_fd: int = -1
    copied: int = 0
    dropped: int = 0

    @property
    def recreated(self) -> bool:
        return self.key is None

    def close(self) -> None:
        if self.old_fd >= 0:
            os.close(self.old_fd)
            self.old_fd = -1

    def summary(self) -> str:
        what = "re-created empty" if self.recreated else f"{self.copied} entries migrated"
        notes = [] if self.value is None or self.key is None else self.key.notes + \
            self.value.notes
        extra = f"; {', '.join(notes)}" if notes else ""
        dropped = f"; {self.dropped} array slots beyond max_entries dropped" \
            if self.dropped else ""
        return (f"map {self.name}: layout {self.old.layout.version} -> "
                f"{self.new.layout.version} ({', '.join(self.reasons)}): {what}{extra}{dropped}")


def pinned_definition(path: str) -> tuple[int, MapDefinition]:
    """(an fd of, the definition of) the map pinned at PATH, from what the kernel kept."""
    fd = check(lib().bpf_obj_get(path.encode()), f"opening pinned map {path}")
    try:
        info = map_info(fd)
        btf = Btf.from_kernel_id(info.btf_id) if info.btf_id else None
        try:
            layout = layout_of(btf, info.type, info.key_size, info.value_size,
                               key_type_id=info.btf_key_type_id,
                               value_type_id=info.btf_value_type_id)
        finally:
            if btf is not None:
                btf.close()
        return fd, MapDefinition(info.name.decode(), layout, info.max_entries, info.map_flags)
    except BaseException:
        os.close(fd)
        raise


def plan_migrations(wanted: Mapping[str, tuple[str, MapDefinition]],
                    recreate: Collection[str] = ()) -> list[Migration]:
    """The migrations that make the maps pinned at WANTED's paths (name -> (pin path,
    definition)) match their definitions; MigrationError (and nothing planned) when one
    cannot be converted."""
    planned: list[Migration] = []
    try:
        for name, (path, definition) in wanted.items():
            _remove_leftover(path + MIGRATING_SUFFIX)
            if not os.path.exists(path):
                continue
            fd, pinned = pinned_definition(path)
            reasons = pinned.differences(definition)
            if not reasons:
                os.close(fd)
                continue
            migration = Migration(name, path, fd, pinned, definition, reasons)
            planned.append(migration)
            if name not in recreate and definition.layout.map_type not in RECREATED_TYPES:
                _plan_conversion(migration)
    except BaseException:
        for migration in planned:
            migration.close()
        raise
    return planned


def _plan_conversion(migration: Migration) -> None:
    old, new = migration.old.layout, migration.new.layout
    where = f"map {migration.name} ({migration.path})"
    lpm = int(MapType.LPM_TRIE)
    if (old.map_type == lpm) != (new.map_type == lpm) or \
            (old.map_type in RECREATED_TYPES) != (new.map_type in RECREATED_TYPES):
        raise MigrationError(f"{where}: its type changes from {old.map_type} to "
                             f"{new.map_type}: entries cannot be carried over")
    if old.key is None or old.value is None or new.key is None or new.value is None:
        if (old.key_size, old.value_size) != (new.key_size, new.value_size):
            raise MigrationError(f"{where}: its key/value sizes change and no BTF describes "
                                 "them: entries cannot be converted")
        migration.key = Converter(old.key_size, new.key_size, [Copy(0, 0, old.key_size)])
        migration.value = Converter(old.value_size, new.value_size,
                                    [Copy(0, 0, old.value_size)])
        return
    try:
        migration.key = converter(old.key, new.key, f"{where} key", key=True,
                                  prefix_key=new.map_type == lpm)
        migration.value = converter(old.value, new.value, f"{where} value")
    except ConversionError as err:
        raise MigrationError(f"{err}; the map keeps its layout and entries (to start afresh, "
                             f"remove the pin {migration.path})") from None


def _remove_leftover(path: str) -> None:
    """A migration interrupted before its rename left this pin; the old pin still holds
    the entries, so the copy is simply made again."""
    if os.path.exists(path):
        os.unlink(path)


def complete_migrations(migrations: list[Migration], new_fds: Mapping[str, int]) -> None:
    """After the object loaded with fresh maps (NEW_FDS by name): copy every old map into
    its new one, then pin each new map over the old pin. A failed copy raises before any
    pin changed."""
    for migration in migrations:
        migration.new_fd = new_fds[migration.name]
        if not migration.recreated:
            _copy_all(migration)
    for migration in migrations:
        temporary = migration.path + MIGRATING_SUFFIX
        check(lib().bpf_obj_pin(migration.new_fd, temporary.encode()),
              f"pinning the migrated map {migration.name} at {temporary}")
        os.rename(temporary, migration.path)
        log.info("%s", migration.summary())


def catch_up(migrations: list[Migration]) -> int:
    """Once the links run the new programs: copy what the old programs added to the old
    hash maps since the migration (entries the new maps lack), then drop the old maps."""
    added = 0
    for migration in migrations:
        try:
            if not migration.recreated and migration.old.layout.map_type not in ARRAY_TYPES:
                added += _copy_entries(migration, only_missing=True)
        except (LibbpfError, MigrationError) as err:
            log.warning("map %s: catching up after the migration failed: %s", migration.name,
                        err)
        finally:
            migration.close()
    return added


def _copy_all(migration: Migration) -> None:
    migration.copied = _copy_entries(migration, only_missing=False)


def _value_stride(layout: MapLayout) -> int:
    return (layout.value_size + 7) // 8 * 8


def _copy_entries(migration: Migration, *, only_missing: bool) -> int:
    old, new = migration.old.layout, migration.new.layout
    assert migration.key is not None and migration.value is not None
    percpu_old = old.map_type in PERCPU_TYPES
    percpu_new = new.map_type in PERCPU_TYPES
    cpus = possible_cpus()
    old_value_len = _value_stride(old) * cpus if percpu_old else old.value_size
    new_value_len = _value_stride(new) * cpus if percpu_new else new.value_size
    key = ctypes.create_string_buffer(old.key_size)
    next_key = ctypes.create_string_buffer(old.key_size)
    value = ctypes.create_string_buffer(old_value_len)
    probe = ctypes.create_string_buffer(new_value_len)
    copied = 0
    array = new.map_type in ARRAY_TYPES
    ret = lib().bpf_map_get_next_key(migration.old_fd, None, next_key)
    while ret == 0:
        ctypes.memmove(key, next_key, old.key_size)
        ret = lib().bpf_map_get_next_key(migration.old_fd, key, next_key)
        found = lib().bpf_map_lookup_elem(migration.old_fd, key, value)
        if found == -errno.ENOENT:
            continue  # gone meanwhile (an LRU entry the datapath evicted)
        check(found, f"reading map {migration.name}")
        new_key = migration.key(key.raw)
        if only_missing and lib().bpf_map_lookup_elem(migration.new_fd, new_key,
                                                      probe) == 0:
            continue
        new_value = _convert_value(migration, value.raw, percpu_old, percpu_new, cpus)
        if array and int.from_bytes(new_key[:4], "little") >= migration.new.max_entries:
            if any(value.raw):
                migration.dropped += 1
            continue
        written = lib().bpf_map_update_elem(migration.new_fd, new_key, new_value, 0)
        if written in (-errno.E2BIG, -errno.ENOMEM):
            raise MigrationError(f"map {migration.name}: the new map (max_entries "
                                 f"{migration.new.max_entries}) cannot hold the entries of the "
                                 "old one; nothing was changed")
        check(written, f"writing the migrated map {migration.name}")
        copied += 1
    if ret != -errno.ENOENT:
        check(ret, f"iterating map {migration.name}")
    return copied


def _convert_value(migration: Migration, raw: bytes, percpu_old: bool, percpu_new: bool,
                   cpus: int) -> bytes:
    assert migration.value is not None
    old, new = migration.old.layout, migration.new.layout
    if not percpu_old and not percpu_new:
        return migration.value(raw)
    if percpu_old != percpu_new:
        raise MigrationError(f"map {migration.name}: a per-CPU map cannot become a shared one "
                             "or the other way round")
    old_stride, new_stride = _value_stride(old), _value_stride(new)
    out = bytearray(new_stride * cpus)
    for cpu in range(cpus):
        converted = migration.value(raw[cpu * old_stride:cpu * old_stride + old.value_size])
        out[cpu * new_stride:cpu * new_stride + new.value_size] = converted
    return bytes(out)

