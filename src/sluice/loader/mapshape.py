"""A map's layout as BTF describes it, and a short version naming it.

`Shape` is what the bytes of a key or value mean: integers (size, sign, byte order),
structs and unions by member name and offset, arrays. Type names are left out (renaming a
struct changes nothing in the bytes); member names are kept (they are what a migration
matches fields by). Two maps with equal `MapLayout`s read each other's entries unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sluice.loader.btf import Btf, BtfKind

INT_KINDS = {BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int  # bytes
    bits: int  # bitfield width, 0 when the member is not a bitfield
    shape: Shape


@dataclass(frozen=True)
class Shape:
    kind: str  # int, struct, union, array, ptr, float
    size: int
    signed: bool = False
    big_endian: bool = False  # a __be16/__be32/__be64 typedef
    members: tuple[Field, ...] = ()
    element: Shape | None = None
    length: int = 0

    def describe(self) -> str:
        if self.kind == "int":
            order = "big-endian " if self.big_endian else ""
            return f"{order}{'s' if self.signed else 'u'}{self.size * 8}"
        if self.kind == "array" and self.element is not None:
            return f"{self.element.describe()}[{self.length}]"
        return f"a {self.kind} of {self.size} bytes"


@dataclass(frozen=True)
class MapLayout:
    """What a map's entries look like: its type and its key and value shapes (None for
    maps BTF says nothing about, such as ring buffers)."""

    map_type: int
    key_size: int
    value_size: int
    key: Shape | None
    value: Shape | None

    @property
    def version(self) -> str:
        """12 hex digits naming this layout: equal layouts, equal versions."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


def shape_of(btf: Btf, type_id: int) -> Shape:
    big_endian = any(name.startswith("__be") for name in btf.typedef_names(type_id))
    type_id = btf.strip_modifiers(type_id)
    kind = btf.kind(type_id)
    size = btf.size(type_id)
    if kind in INT_KINDS:
        return Shape("int", size, signed=btf.int_signed(type_id), big_endian=big_endian)
    if kind in (BtfKind.STRUCT, BtfKind.UNION):
        members = tuple(Field(m.name, m.bit_offset // 8, m.bitfield_size,
                              shape_of(btf, m.type_id)) for m in btf.members(type_id))
        return Shape(kind.name.lower(), size, members=members)
    if kind == BtfKind.ARRAY:
        element, length = btf.array(type_id)
        return Shape("array", size, element=shape_of(btf, element), length=length)
    return Shape(kind.name.lower(), size)


def layout_of(btf: Btf | None, map_type: int, key_size: int, value_size: int, *,
              key_type_id: int, value_type_id: int) -> MapLayout:
    """The layout of a map whose key and value types are KEY_TYPE_ID and VALUE_TYPE_ID in
    BTF (0: not described)."""
    key = shape_of(btf, key_type_id) if btf is not None and key_type_id else None
    value = shape_of(btf, value_type_id) if btf is not None and value_type_id else None
    return MapLayout(map_type, key_size, value_size, key, value)
