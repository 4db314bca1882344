"""Python map layouts, checked against the BTF of the compiled object.

A datapath module declares its key and value types as ctypes structures naming the C
type they mirror. Before a map is touched, `verify_layout` walks the C type in BTF and
the ctypes type side by side; any difference in size, member name, order, offset or
array length raises `LayoutMismatchError`, so a C change not reflected in Python stops the
program instead of corrupting a map.
"""

from __future__ import annotations

import ctypes
from typing import Any

from sluice.loader.btf import Btf, BtfKind


class LayoutMismatchError(RuntimeError):
    """A Python layout disagrees with the C layout recorded in BTF."""


_SCALAR_KINDS = {BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64, BtfKind.FLOAT, BtfKind.PTR}
_COMPOSITE_KINDS = {BtfKind.STRUCT, BtfKind.UNION}


def c_name(ctype: type[Any]) -> str | None:
    """The C type a ctypes structure mirrors (`_c_name_`), if it says."""
    return getattr(ctype, "_c_name_", None)


def verify_layout(btf: Btf, type_id: int, ctype: type[Any], where: str) -> None:
    problems: list[str] = []
    _compare(btf, type_id, ctype, where, problems)
    if problems:
        raise LayoutMismatchError(
            "Python layout does not match the compiled BPF object:\n  " + "\n  ".join(problems)
        )


def _compare(btf: Btf, type_id: int, ctype: type[Any], path: str, problems: list[str]) -> None:
    type_id = btf.strip_modifiers(type_id)
    kind = btf.kind(type_id)
    c_size = btf.size(type_id)
    py_size = ctypes.sizeof(ctype)
    if c_size != py_size:
        problems.append(f"{path}: size is {c_size} bytes in C, {py_size} in Python")

    if kind in _COMPOSITE_KINDS:
        _compare_composite(btf, type_id, kind, ctype, path=path, problems=problems)
    elif kind == BtfKind.ARRAY:
        elem_id, nelems = btf.array(type_id)
        py_len = getattr(ctype, "_length_", None)
        if py_len is None:
            problems.append(f"{path}: an array of {nelems} in C, not an array in Python")
            return
        if py_len != nelems:
            problems.append(f"{path}: {nelems} elements in C, {py_len} in Python")
        _compare(btf, elem_id, ctype._type_, f"{path}[]", problems)
    elif kind not in _SCALAR_KINDS:
        problems.append(f"{path}: unsupported BTF kind {kind.name}")
    elif issubclass(ctype, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        problems.append(f"{path}: a scalar in C, a {ctype.__name__} in Python")


def _compare_composite(
    btf: Btf, type_id: int, kind: BtfKind, ctype: type[Any], *, path: str, problems: list[str]
) -> None:
    want_base = ctypes.Union if kind == BtfKind.UNION else ctypes.Structure
    if not issubclass(ctype, want_base):
        problems.append(f"{path}: a {kind.name.lower()} in C, a {ctype.__name__} in Python")
        return
    name = btf.name(type_id)
    declared = c_name(ctype)
    if declared is not None and name and declared != name:
        problems.append(f"{path}: C type is {kind.name.lower()} {name}, Python mirrors {declared}")

    c_members = btf.members(type_id)
    py_fields = [(f[0], f[1]) for f in ctype._fields_]
    c_names = [m.name for m in c_members]
    py_names = [n for n, _ in py_fields]
    if c_names != py_names:
        problems.append(f"{path}: members are {c_names} in C, {py_names} in Python")
        return
    for member, (field_name, field_type) in zip(c_members, py_fields, strict=True):
        member_path = f"{path}.{member.name}"
        if member.bitfield_size or member.bit_offset % 8:
            problems.append(f"{member_path}: bitfields cannot be mirrored")
            continue
        py_offset = getattr(ctype, field_name).offset
        if member.bit_offset // 8 != py_offset:
            problems.append(
                f"{member_path}: offset {member.bit_offset // 8} in C, {py_offset} in Python"
            )
        _compare(btf, member.type_id, field_type, member_path, problems)
