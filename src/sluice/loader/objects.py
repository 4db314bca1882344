"""Open, configure, load and pin compiled BPF objects."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sluice.loader.btf import Btf
from sluice.loader.layout import verify_layout
from sluice.loader.libbpf import LibbpfError, ProgInfo, check, check_ptr, lib
from sluice.loader.maps import Map, MapMeta
from sluice.loader.mapshape import layout_of
from sluice.loader.migrate import (
    MapDefinition,
    Migration,
    catch_up,
    complete_migrations,
    plan_migrations,
)

K = TypeVar("K")
V = TypeVar("V")

OBJECT_DIR = Path(__file__).resolve().parent.parent / "datapath" / "obj"
VERIFIER_LOG_SIZE = 4 * 1024 * 1024


class VerifierError(LibbpfError):
    """The kernel refused a program; carries the verifier's log."""

    def __init__(self, errno_: int, what: str, log: str) -> None:
        super().__init__(errno_, what)
        self.log = log

    def __str__(self) -> str:
        tail = "\n".join(self.log.strip().splitlines()[-40:])
        return f"{super().__str__()}\nverifier log (tail):\n{tail}"


def object_path(name: str) -> Path:
    """Where the build put the object for bpf/NAME.c."""
    path = OBJECT_DIR / f"{name}.bpf.o"
    if not path.exists():
        raise FileNotFoundError(
            f"BPF object {path} is missing: run ./setup.sh (it builds bpf/*.c)"
        )
    return path


@dataclass(frozen=True)
class Program:
    name: str
    section: str
    prog_type: int
    fd: int

    def info(self) -> ProgInfo:
        info = ProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        check(lib().bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size)),
              f"reading info of program {self.name}")
        return info

    def pin(self, path: str) -> None:
        check(lib().bpf_obj_pin(self.fd, path.encode()), f"pinning program {self.name} at {path}")


class BpfObject:
    """One compiled object: open it, set rodata and map sizes, load it, use it.

    Maps given a pin directory are adopted from bpffs when already pinned there
    (libbpf reuses a compatible pinned map) and pinned there when created; the maps
    named in PRIVATE_MAPS are left out: this object gets fresh ones of its own.
    """

    def __init__(self, path: str | Path, *, pin_dir: str | None = None,
                 private_maps: Collection[str] = ()) -> None:
        self.path = Path(path)
        handle = lib().bpf_object__open_file(str(self.path).encode(), None)
        check_ptr(ctypes.cast(handle, ctypes.c_void_p).value, f"opening BPF object {self.path}")
        self._handle: Any = handle
        self._loaded = False
        self._log_buffers: dict[str, ctypes.Array[ctypes.c_char]] = {}
        self.migrations: list[Migration] = []  # pinned maps this load migrated
        self.btf = Btf(lib().bpf_object__btf(handle), owned=False)
        if pin_dir is not None:
            try:
                self._set_pin_paths(pin_dir, private_maps)
            except BaseException:
                self.close()
                raise

    @classmethod
    def open(cls, name: str, *, pin_dir: str | None = None,
             private_maps: Collection[str] = ()) -> BpfObject:
        return cls(object_path(name), pin_dir=pin_dir, private_maps=private_maps)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for migration in self.migrations:
            migration.close()
        if self._handle:
            lib().bpf_object__close(self._handle)
            self._handle = None

    # --- before load -------------------------------------------------------------------

    def _map_handles(self) -> Iterator[Any]:
        handle = lib().bpf_object__next_map(self._handle, None)
        while handle:
            yield handle
            handle = lib().bpf_object__next_map(self._handle, handle)

    def _program_handles(self) -> Iterator[Any]:
        handle = lib().bpf_object__next_program(self._handle, None)
        while handle:
            yield handle
            handle = lib().bpf_object__next_program(self._handle, handle)

    def _map_handle(self, name: str) -> Any:
        for handle in self._map_handles():
            if lib().bpf_map__name(handle).decode() == name:
                return handle
        raise KeyError(f"{self.path.name} has no map {name!r}")

    def map_names(self) -> list[str]:
        return [lib().bpf_map__name(h).decode() for h in self._map_handles()]

    def _is_internal(self, handle: Any) -> bool:
        return "." in lib().bpf_map__name(handle).decode()

    def _set_pin_paths(self, pin_dir: str, private_maps: Collection[str]) -> None:
        unknown = set(private_maps) - set(self.map_names())
        if unknown:
            raise KeyError(f"{self.path.name} has no maps {sorted(unknown)} to keep private")
        os.makedirs(pin_dir, exist_ok=True)
        for handle in self._map_handles():
            if not self._is_internal(handle) and \
                    lib().bpf_map__name(handle).decode() not in private_maps:
                path = os.path.join(pin_dir, lib().bpf_map__name(handle).decode())
                check(lib().bpf_map__set_pin_path(handle, path.encode()), f"pin path {path}")

    def set_max_entries(self, name: str, max_entries: int) -> None:
        self._require_unloaded("resize a map")
        check(lib().bpf_map__set_max_entries(self._map_handle(name), max_entries),
              f"resizing map {name}")

    def resize_maps(self, sizes: Mapping[str, int]) -> list[str]:
        """Set max_entries of every map named in SIZES that this object has (objects that
        share pinned maps get the same SIZES); returns the names it resized."""
        self._require_unloaded("resize maps")
        resized = [name for name in self.map_names() if name in sizes]
        for name in resized:
            self.set_max_entries(name, sizes[name])
        return resized

    def add_map_flags(self, name: str, flags: int) -> None:
        """Create map NAME with FLAGS besides its declared ones (e.g. BPF_F_RDONLY_PROG)."""
        self._require_unloaded("set map flags")
        handle = self._map_handle(name)
        check(lib().bpf_map__set_map_flags(handle, lib().bpf_map__map_flags(handle) | flags),
              f"setting flags of map {name}")

    def set_rodata(self, **values: int) -> None:
        """Set `const volatile` globals before load, located through the .rodata BTF."""
        self._require_unloaded("set rodata")
        variables = self.btf.datasec(".rodata")
        handle = next(h for h in self._map_handles()
                      if lib().bpf_map__name(h).decode().endswith(".rodata"))
        size = ctypes.c_size_t()
        base = lib().bpf_map__initial_value(handle, ctypes.byref(size))
        check_ptr(base, "reading the .rodata image")
        for name, value in values.items():
            var = variables.get(name)
            if var is None:
                raise KeyError(f"{self.path.name} has no rodata global {name!r}; "
                               f"it has {sorted(variables)}")
            ctypes.memmove(base + var.offset, value.to_bytes(var.size, "little", signed=value < 0),
                           var.size)

    def set_autoload(self, program: str, autoload: bool) -> None:
        for handle in self._program_handles():
            if lib().bpf_program__name(handle).decode() == program:
                check(lib().bpf_program__set_autoload(handle, autoload), f"autoload {program}")
                return
        raise KeyError(f"{self.path.name} has no program {program!r}")

    def _require_unloaded(self, what: str) -> None:
        if self._loaded:
            raise RuntimeError(f"cannot {what} of {self.path.name} after it is loaded")

    # --- load --------------------------------------------------------------------------

    def load(self, *, migrate_pins: bool = False, recreate: Collection[str] = ()
             ) -> BpfObject:
        """Load the programs and create (or adopt from bpffs) the maps. MIGRATE_PINS: a
        pinned map of another layout, size or flags is migrated into this object's
        (`sluice.loader.migrate`; RECREATE names scratch maps made afresh instead), where
        otherwise the load fails."""
        migrations = plan_migrations(self._pinned_definitions(), recreate) \
            if migrate_pins else []
        try:
            for migration in migrations:
                check(lib().bpf_map__set_pin_path(self._map_handle(migration.name), None),
                      f"unpinning map {migration.name} for its migration")
            self._load_programs()
            complete_migrations(migrations, {m.name: self.map_fd(m.name) for m in migrations})
        except BaseException:
            for migration in migrations:
                migration.close()
            raise
        self.migrations = migrations
        return self

    def catch_up_migrations(self) -> int:
        """Once the links run this object's programs: copy what the old programs still
        wrote to migrated maps, and let the old maps go (see `migrate.catch_up`)."""
        migrations, self.migrations = self.migrations, []
        return catch_up(migrations)

    def _pinned_definitions(self) -> dict[str, tuple[str, MapDefinition]]:
        """Name -> (pin path, definition) of every map this object pins."""
        found = {}
        for handle in self._map_handles():
            path = lib().bpf_map__pin_path(handle)
            if not path or self._is_internal(handle):
                continue
            name = lib().bpf_map__name(handle).decode()
            layout = layout_of(self.btf, lib().bpf_map__type(handle),
                               lib().bpf_map__key_size(handle),
                               lib().bpf_map__value_size(handle),
                               key_type_id=lib().bpf_map__btf_key_type_id(handle),
                               value_type_id=lib().bpf_map__btf_value_type_id(handle))
            found[name] = (path.decode(), MapDefinition(
                name, layout, lib().bpf_map__max_entries(handle),
                lib().bpf_map__map_flags(handle)))
        return found

    def _load_programs(self) -> None:
        for handle in self._program_handles():
            name = lib().bpf_program__name(handle).decode()
            buf = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
            self._log_buffers[name] = buf
            lib().bpf_program__set_log_buf(handle, buf, len(buf))
        ret = lib().bpf_object__load(self._handle)
        if ret < 0:
            log = "\n".join(buf.value.decode(errors="replace")
                            for buf in self._log_buffers.values() if buf.value)
            raise VerifierError(-ret, f"loading {self.path.name}", log)
        self._log_buffers.clear()
        self._loaded = True

    # --- after load --------------------------------------------------------------------

    def _program_from_handle(self, handle: Any) -> Program:
        name = lib().bpf_program__name(handle).decode()
        fd = lib().bpf_program__fd(handle)
        if fd < 0:
            raise RuntimeError(f"program {name} of {self.path.name} is not loaded")
        return Program(name, lib().bpf_program__section_name(handle).decode(),
                       lib().bpf_program__type(handle), fd)

    def program(self, name: str) -> Program:
        for handle in self._program_handles():
            if lib().bpf_program__name(handle).decode() == name:
                return self._program_from_handle(handle)
        raise KeyError(f"{self.path.name} has no program {name!r}")

    def programs(self) -> list[Program]:
        """Every loaded program (those with autoload off are skipped)."""
        return [self._program_from_handle(h) for h in self._program_handles()
                if lib().bpf_program__fd(h) >= 0]

    def verify_map_layout(self, name: str, key_type: type[Any], value_type: type[Any]) -> None:
        """Check a map's layout against this object's BTF; works before load too."""
        handle = self._map_handle(name)
        verify_layout(self.btf, lib().bpf_map__btf_key_type_id(handle), key_type,
                      f"map {name} key")
        verify_layout(self.btf, lib().bpf_map__btf_value_type_id(handle), value_type,
                      f"map {name} value")

    def map_fd(self, name: str) -> int:
        """The fd of a map used without a key/value layout (ring buffers)."""
        fd = int(lib().bpf_map__fd(self._map_handle(name)))
        if fd < 0:
            raise RuntimeError(f"map {name} of {self.path.name} is not created until load()")
        return fd

    def map(self, name: str, key_type: type[K], value_type: type[V]) -> Map[Any, Any]:
        """A typed view of map NAME, after its layout is verified."""
        self.verify_map_layout(name, key_type, value_type)
        handle = self._map_handle(name)
        fd = self.map_fd(name)
        meta = MapMeta(name, lib().bpf_map__type(handle), lib().bpf_map__key_size(handle),
                       lib().bpf_map__value_size(handle), lib().bpf_map__max_entries(handle))
        return Map(fd, meta, key_type, value_type)
