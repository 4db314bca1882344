"""Convert map entries from one layout to another, field by field by member name.

Rules: a field kept under the same name is carried over (an integer may be widened, never
narrowed; its sign and byte order are kept), a new field is zero, a field that is gone is
dropped. Keys are stricter, since two old keys must never become one new key: a key field
may not disappear, and the key of an LPM trie (matched as a bit prefix) may only grow at
its end, every old field keeping its offset and type. Anything else cannot be converted and
raises ConversionError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from sluice.loader.mapshape import Shape


class ConversionError(ValueError):
    """Entries of one layout cannot be converted into another."""


class At(NamedTuple):
    """Where a field starts in the old and in the new entry."""

    old: int
    new: int

    def plus(self, old: int, new: int) -> At:
        return At(self.old + old, self.new + new)


@dataclass(frozen=True)
class Copy:
    old_offset: int
    new_offset: int
    size: int


@dataclass(frozen=True)
class Widen:
    old_offset: int
    old_size: int
    new_offset: int
    new_size: int
    signed: bool
    big_endian: bool


@dataclass
class Converter:
    """Turns an entry of the old layout (OLD_SIZE bytes) into one of the new (NEW_SIZE)."""

    old_size: int
    new_size: int
    steps: list[Copy | Widen] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # fields added, dropped, widened

    @property
    def identity(self) -> bool:
        return (self.old_size == self.new_size
                and self.steps == [Copy(0, 0, self.old_size)])

    def __call__(self, old: bytes) -> bytes:
        if self.identity:
            return old
        new = bytearray(self.new_size)
        for step in self.steps:
            if isinstance(step, Copy):
                new[step.new_offset:step.new_offset + step.size] = \
                    old[step.old_offset:step.old_offset + step.size]
                continue
            order: Literal["big", "little"] = "big" if step.big_endian else "little"
            value = int.from_bytes(old[step.old_offset:step.old_offset + step.old_size], order,
                                   signed=step.signed)
            new[step.new_offset:step.new_offset + step.new_size] = \
                value.to_bytes(step.new_size, order, signed=step.signed)
        return bytes(new)


def converter(old: Shape, new: Shape, where: str, *, key: bool = False,
              prefix_key: bool = False) -> Converter:
    """How to convert entries of shape OLD into NEW; WHERE names them in errors (e.g.
    `map conntrack key`). PREFIX_KEY: an LPM trie key."""
    result = Converter(old.size, new.size)
    _plan(old, new, At(0, 0), where, result, key=key)
    if prefix_key:
        moved = [s for s in result.steps
                 if not isinstance(s, Copy) or s.old_offset != s.new_offset]
        if moved or any("dropped" in note for note in result.notes):
            raise ConversionError(
                f"{where}: an LPM trie key is matched as a bit prefix, so fields may only be "
                f"added at its end; this change moves or changes one ({'; '.join(result.notes)})")
    return result


def _plan(old: Shape, new: Shape, at: At, path: str, result: Converter, *, key: bool) -> None:
    if old == new:
        _copy(result, Copy(at.old, at.new, old.size))
        return
    if old.kind == "int" and new.kind == "int":
        _plan_int(old, new, at, path, result)
    elif old.kind == new.kind == "struct":
        _plan_struct(old, new, at, path, result, key=key)
    elif old.kind == new.kind == "union":
        _plan_union(old, new, at, path, result)
    elif old.kind == new.kind == "array" and old.element is not None \
            and new.element is not None:
        if new.length < old.length:
            raise ConversionError(f"{path}: shortened from {old.describe()} to "
                                  f"{new.describe()}: entries would lose elements")
        stride_old, stride_new = old.element.size, new.element.size
        for index in range(old.length):
            _plan(old.element, new.element, at.plus(index * stride_old, index * stride_new),
                  f"{path}[{index}]", result, key=key)
        if new.length > old.length:
            result.notes.append(f"{path} lengthened to {new.length} (new elements zero)")
    else:
        raise ConversionError(f"{path}: was {old.describe()}, is now {new.describe()}: "
                              "cannot be converted")


def _plan_int(old: Shape, new: Shape, at: At, path: str, result: Converter) -> None:
    if new.size < old.size:
        raise ConversionError(f"{path}: narrowed from {old.describe()} to {new.describe()}: "
                              "values could be cut")
    if old.big_endian != new.big_endian or old.signed != new.signed:
        raise ConversionError(f"{path}: was {old.describe()}, is now {new.describe()}: "
                              "a change of sign or byte order cannot be converted")
    if new.size == old.size:
        _copy(result, Copy(at.old, at.new, old.size))
        return
    result.steps.append(Widen(at.old, old.size, at.new, new.size, old.signed, old.big_endian))
    result.notes.append(f"{path} widened to {new.describe()}")


def _plan_struct(old: Shape, new: Shape, at: At, path: str, result: Converter, *,
                 key: bool) -> None:
    if any(not m.name for m in old.members):
        raise ConversionError(f"{path}: has anonymous members that changed: cannot be "
                              "matched by name")
    old_members = {m.name: m for m in old.members if m.name}
    new_names = {m.name for m in new.members if m.name}
    for member in new.members:
        member_path = f"{path}.{member.name or '(anonymous)'}"
        previous = old_members.get(member.name) if member.name else None
        if previous is None:
            result.notes.append(f"{member_path} added (zero)")
            continue
        if (member.bits or previous.bits) and (member.bits, member.shape) != \
                (previous.bits, previous.shape):
            raise ConversionError(f"{member_path}: a bitfield that changed cannot be "
                                  "converted")
        _plan(previous.shape, member.shape, at.plus(previous.offset, member.offset),
              member_path, result, key=key)
    for name in old_members.keys() - new_names:
        if key:
            raise ConversionError(f"{path}.{name}: a key field was removed: two entries "
                                  "could become one")
        result.notes.append(f"{path}.{name} dropped")


def _plan_union(old: Shape, new: Shape, at: At, path: str, result: Converter) -> None:
    """A union's members share its bytes: carried over as bytes when the new union holds
    every old member unchanged and is at least as large."""
    new_members = {m.name: m.shape for m in new.members}
    kept = all(new_members.get(m.name) == m.shape for m in old.members)
    if not kept or new.size < old.size:
        raise ConversionError(f"{path}: a union whose members changed cannot be converted")
    _copy(result, Copy(at.old, at.new, old.size))


def _copy(result: Converter, step: Copy) -> None:
    """Append STEP, merged into the previous copy when the two are contiguous."""
    last = result.steps[-1] if result.steps else None
    if isinstance(last, Copy) and last.old_offset + last.size == step.old_offset \
            and last.new_offset + last.size == step.new_offset:
        result.steps[-1] = Copy(last.old_offset, last.new_offset, last.size + step.size)
    else:
        result.steps.append(step)
