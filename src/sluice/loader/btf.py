"""Read BTF type information: the source of truth for every shared layout."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from typing import Any

from sluice.loader.libbpf import (
    BtfArrayRaw,
    BtfEnum64Raw,
    BtfEnumRaw,
    BtfMemberRaw,
    BtfTypeRaw,
    BtfVarSecinfoRaw,
    check_ptr,
    lib,
)


class BtfKind(IntEnum):
    UNKNOWN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


BTF_INT_SIGNED = 1

_MODIFIERS = {BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT,
              BtfKind.TYPE_TAG}


@dataclass(frozen=True)
class BtfMember:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True)
class DatasecVar:
    name: str
    type_id: int
    offset: int
    size: int


class Btf:
    """A BTF blob owned by libbpf: an object's own, or one loaded from the kernel."""

    def __init__(self, handle: Any, *, owned: bool) -> None:
        self._handle = handle
        self._owned = owned

    @classmethod
    def from_kernel_id(cls, btf_id: int) -> Btf:
        handle = lib().btf__load_from_kernel_by_id(btf_id)
        check_ptr(ctypes.cast(handle, ctypes.c_void_p).value, f"loading kernel BTF id {btf_id}")
        return cls(handle, owned=True)

    def close(self) -> None:
        if self._owned and self._handle:
            lib().btf__free(self._handle)
        self._handle = None

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raw(self, type_id: int) -> BtfTypeRaw:
        ptr = lib().btf__type_by_id(self._handle, type_id)
        if not ptr:
            raise KeyError(f"BTF type id {type_id} does not exist")
        return ptr.contents  # type: ignore[no-any-return]

    def _records(self, type_id: int, record: type[ctypes.Structure]) -> list[Any]:
        raw = self._raw(type_id)
        vlen = raw.info & 0xFFFF
        base = ctypes.addressof(raw) + ctypes.sizeof(BtfTypeRaw)
        array = (record * vlen).from_address(base)
        return list(array)

    def _str(self, offset: int) -> str:
        text = lib().btf__name_by_offset(self._handle, offset)
        return text.decode() if text else ""

    def type_count(self) -> int:
        return int(lib().btf__type_cnt(self._handle))

    def kind(self, type_id: int) -> BtfKind:
        return BtfKind((self._raw(type_id).info >> 24) & 0x1F)

    def name(self, type_id: int) -> str:
        return self._str(self._raw(type_id).name_off)

    def size(self, type_id: int) -> int:
        size = int(lib().btf__resolve_size(self._handle, type_id))
        if size < 0:
            raise ValueError(f"BTF type id {type_id} has no size")
        return size

    def strip_modifiers(self, type_id: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag to the underlying type."""
        while self.kind(type_id) in _MODIFIERS:
            type_id = self._raw(type_id).size_or_type
        return type_id

    def members(self, type_id: int) -> list[BtfMember]:
        raw = self._raw(type_id)
        kind_flag = raw.info >> 31
        members = []
        for member in self._records(type_id, BtfMemberRaw):
            offset = member.offset & 0xFFFFFF if kind_flag else member.offset
            bitfield = member.offset >> 24 if kind_flag else 0
            members.append(BtfMember(self._str(member.name_off), member.type, offset, bitfield))
        return members

    def int_signed(self, type_id: int) -> bool:
        """Whether an INT type is signed (its encoding), or an ENUM holds signed values."""
        raw = self._raw(type_id)
        if self.kind(type_id) in (BtfKind.ENUM, BtfKind.ENUM64):
            return bool(raw.info >> 31)
        encoding = ctypes.c_uint32.from_address(ctypes.addressof(raw) + ctypes.sizeof(BtfTypeRaw))
        return bool((encoding.value >> 24) & BTF_INT_SIGNED)

    def typedef_names(self, type_id: int) -> list[str]:
        """The typedef names met while following TYPE_ID's modifiers (e.g. __be16, __u16)."""
        names = []
        while self.kind(type_id) in _MODIFIERS:
            if self.kind(type_id) == BtfKind.TYPEDEF:
                names.append(self.name(type_id))
            type_id = self._raw(type_id).size_or_type
        return names

    def array(self, type_id: int) -> tuple[int, int]:
        """(element type id, number of elements) of an array type."""
        base = ctypes.addressof(self._raw(type_id)) + ctypes.sizeof(BtfTypeRaw)
        info = BtfArrayRaw.from_address(base)
        return int(info.type), int(info.nelems)

    def find(self, name: str, kind: BtfKind) -> int:
        type_id = int(lib().btf__find_by_name_kind(self._handle, name.encode(), int(kind)))
        if type_id < 0:
            raise KeyError(f"no BTF {kind.name.lower()} named {name!r}")
        return type_id

    def enum_values(self, name: str) -> dict[str, int]:
        try:
            type_id = self.find(name, BtfKind.ENUM)
            return {self._str(e.name_off): int(e.val) for e in self._records(type_id, BtfEnumRaw)}
        except KeyError:
            type_id = self.find(name, BtfKind.ENUM64)
            return {
                self._str(e.name_off): (e.val_hi32 << 32) | e.val_lo32
                for e in self._records(type_id, BtfEnum64Raw)
            }

    def datasec(self, section: str) -> dict[str, DatasecVar]:
        type_id = self.find(section, BtfKind.DATASEC)
        variables = {}
        for info in self._records(type_id, BtfVarSecinfoRaw):
            var_name = self.name(info.type)
            var_type = self._raw(info.type).size_or_type
            variables[var_name] = DatasecVar(var_name, var_type, info.offset, info.size)
        return variables


@cache
def vmlinux_btf() -> Btf:
    """The running kernel's BTF, loaded once per process."""
    handle = lib().btf__load_vmlinux_btf()
    check_ptr(ctypes.cast(handle, ctypes.c_void_p).value, "loading the kernel's BTF")
    return Btf(handle, owned=True)


@cache
def kernel_enum(name: str) -> dict[str, int]:
    """An enum of the running kernel, e.g. bpf_attach_type: no numbers hard-coded here."""
    return vmlinux_btf().enum_values(name)
