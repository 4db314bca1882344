"""ctypes declarations for the system libbpf (>= 1.1): the only file that names C symbols.

Everything above this module works with typed Python objects; nothing else calls into
libbpf directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from functools import cache
from typing import Any

log = logging.getLogger("sluice.libbpf")


class LibbpfError(OSError):
    """A libbpf or bpf(2) call failed; carries errno and what was being done."""

    def __init__(self, errno_: int, what: str) -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}")
        self.what = what


def check(ret: int, what: str) -> int:
    """libbpf returns -errno (and sets errno); turn that into LibbpfError."""
    if ret < 0:
        raise LibbpfError(-ret if ret != -1 else (ctypes.get_errno() or 1), what)
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise LibbpfError(ctypes.get_errno() or 1, what)
    return ptr


# Opaque libbpf handles.
class BpfObjectHandle(Structure):
    pass


class BpfProgramHandle(Structure):
    pass


class BpfMapHandle(Structure):
    pass


class BtfHandle(Structure):
    pass


class RingBufferHandle(Structure):
    pass


class BtfTypeRaw(Structure):
    """struct btf_type: followed in memory by kind-specific records."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfMemberRaw(Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class BtfEnumRaw(Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


class BtfEnum64Raw(Structure):
    _fields_ = [("name_off", c_uint32), ("val_lo32", c_uint32), ("val_hi32", c_uint32)]


class BtfVarSecinfoRaw(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class BtfArrayRaw(Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


class TestRunOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class MapBatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class TcHook(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint32),
        ("_pad", c_uint32),
    ]


class TcOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
        ("_pad", c_uint32),
    ]


class MapInfo(Structure):
    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * 16),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("_pad", c_uint32),
        ("map_extra", c_uint64),
    ]


class ProgInfo(Structure):
    """The leading fields of struct bpf_prog_info (the kernel accepts a shorter struct)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * 16),
    ]


class LinkInfo(Structure):
    """The leading fields of struct bpf_link_info: type, id, prog_id, then the first two
    u32 members of the per-type union, which for tcx links are (ifindex, attach_type) and
    for XDP links (ifindex, -). The kernel accepts a shorter struct."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_pad", c_uint32),  # the union is 8-byte aligned
        ("ifindex", c_uint32),
        ("attach_type", c_uint32),
    ]


RingBufferSampleFn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
PrintFn = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    # objects
    "bpf_object__open_file": (POINTER(BpfObjectHandle), [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [POINTER(BpfObjectHandle)]),
    "bpf_object__close": (None, [POINTER(BpfObjectHandle)]),
    "bpf_object__btf": (POINTER(BtfHandle), [POINTER(BpfObjectHandle)]),
    "bpf_object__next_program": (
        POINTER(BpfProgramHandle),
        [POINTER(BpfObjectHandle), POINTER(BpfProgramHandle)],
    ),
    "bpf_object__next_map": (
        POINTER(BpfMapHandle),
        [POINTER(BpfObjectHandle), POINTER(BpfMapHandle)],
    ),
    # programs
    "bpf_program__name": (c_char_p, [POINTER(BpfProgramHandle)]),
    "bpf_program__section_name": (c_char_p, [POINTER(BpfProgramHandle)]),
    "bpf_program__fd": (c_int, [POINTER(BpfProgramHandle)]),
    "bpf_program__type": (c_int, [POINTER(BpfProgramHandle)]),
    "bpf_program__set_autoload": (c_int, [POINTER(BpfProgramHandle), c_bool]),
    "bpf_program__set_log_buf": (c_int, [POINTER(BpfProgramHandle), c_void_p, c_size_t]),
    # maps (libbpf side, before and after load)
    "bpf_map__name": (c_char_p, [POINTER(BpfMapHandle)]),
    "bpf_map__fd": (c_int, [POINTER(BpfMapHandle)]),
    "bpf_map__map_flags": (c_uint32, [POINTER(BpfMapHandle)]),
    "bpf_map__set_map_flags": (c_int, [POINTER(BpfMapHandle), c_uint32]),
    "bpf_map__type": (c_int, [POINTER(BpfMapHandle)]),
    "bpf_map__key_size": (c_uint32, [POINTER(BpfMapHandle)]),
    "bpf_map__value_size": (c_uint32, [POINTER(BpfMapHandle)]),
    "bpf_map__max_entries": (c_uint32, [POINTER(BpfMapHandle)]),
    "bpf_map__set_max_entries": (c_int, [POINTER(BpfMapHandle), c_uint32]),
    "bpf_map__btf_key_type_id": (c_uint32, [POINTER(BpfMapHandle)]),
    "bpf_map__btf_value_type_id": (c_uint32, [POINTER(BpfMapHandle)]),
    "bpf_map__reuse_fd": (c_int, [POINTER(BpfMapHandle), c_int]),
    "bpf_map__set_pin_path": (c_int, [POINTER(BpfMapHandle), c_char_p]),
    "bpf_map__pin_path": (c_char_p, [POINTER(BpfMapHandle)]),
    "bpf_map__initial_value": (c_void_p, [POINTER(BpfMapHandle), POINTER(c_size_t)]),
    # syscall wrappers
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_elem_flags": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p],
    ),
    "bpf_map_update_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, POINTER(c_uint32), c_void_p],
    ),
    "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), c_void_p]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
    "bpf_link_detach": (c_int, [c_int]),
    "bpf_link_update": (c_int, [c_int, c_int, c_void_p]),
    "bpf_prog_query": (
        c_int,
        [c_int, c_int, c_uint32, POINTER(c_uint32), POINTER(c_uint32), POINTER(c_uint32)],
    ),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(TestRunOpts)]),
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, c_void_p]),
    # tc (clsact through netlink)
    "bpf_tc_hook_create": (c_int, [POINTER(TcHook)]),
    "bpf_tc_hook_destroy": (c_int, [POINTER(TcHook)]),
    "bpf_tc_attach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_detach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    # BTF
    "btf__load_vmlinux_btf": (POINTER(BtfHandle), []),
    "btf__load_from_kernel_by_id": (POINTER(BtfHandle), [c_uint32]),
    "btf__free": (None, [POINTER(BtfHandle)]),
    "btf__type_cnt": (c_uint32, [POINTER(BtfHandle)]),
    "btf__type_by_id": (POINTER(BtfTypeRaw), [POINTER(BtfHandle), c_uint32]),
    "btf__name_by_offset": (c_char_p, [POINTER(BtfHandle), c_uint32]),
    "btf__find_by_name_kind": (ctypes.c_int32, [POINTER(BtfHandle), c_char_p, c_uint32]),
    "btf__resolve_size": (c_int64, [POINTER(BtfHandle), c_uint32]),
    # ring buffers
    "ring_buffer__new": (
        POINTER(RingBufferHandle),
        [c_int, RingBufferSampleFn, c_void_p, c_void_p],
    ),
    "ring_buffer__poll": (c_int, [POINTER(RingBufferHandle), c_int]),
    "ring_buffer__consume": (c_int, [POINTER(RingBufferHandle)]),
    "ring_buffer__free": (None, [POINTER(RingBufferHandle)]),
    # misc
    "libbpf_set_print": (c_void_p, [PrintFn]),
    "libbpf_major_version": (c_uint32, []),
    "libbpf_minor_version": (c_uint32, []),
    "libbpf_num_possible_cpus": (c_int, []),
}


class _Libbpf:
    """Typed access to libbpf's functions, loaded once per process."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        self.cdll = ctypes.CDLL(name, use_errno=True)
        for symbol, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.cdll, symbol)
            fn.restype = restype
            fn.argtypes = argtypes
        self._print_cb = PrintFn(_route_libbpf_print)
        self.cdll.libbpf_set_print(self._print_cb)

    def __getattr__(self, symbol: str) -> Any:
        return getattr(self.cdll, symbol)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def _route_libbpf_print(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf's printf-style log, formatted with vsnprintf and sent to logging."""
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if text:
        log.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    return 0


@cache
def lib() -> _Libbpf:
    return _Libbpf()


def libbpf_version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "counting possible CPUs")
