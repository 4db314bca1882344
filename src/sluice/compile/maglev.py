"""Maglev consistent hashing: a service's backends spread over a fixed-size lookup table.

The datapath picks a backend for a new flow as ``table[flow_hash % size]``. The table is
populated as in the Maglev paper (Eisenbud et al., NSDI 2016, section 3.4): every backend
gets a permutation of the slots, ``(offset + j * skip) % size``, with offset and skip taken
from two independent hashes of the backend's identity; the backends then take turns, each
claiming the next slot of its permutation that is still free, until every slot is taken.

Properties the rest of Sluice relies on:
- The table depends only on the *set* of backends: input order and duplicates do not
  matter, and the hashes are hashlib digests (not Python's per-process ``hash()``), so
  every node and every agent restart computes the identical table.
- Balance: backends take exactly one slot per round, so every backend owns
  ``size // n`` or ``size // n + 1`` slots.
- Small disruption: when a backend leaves, its slots are handed out and only a small
  fraction of the other slots move (the paper's "minimal disruption", which Maglev trades
  a little of for perfect balance).

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from sluice.compile.lbstate import BackendRef

T = TypeVar("T")

DEFAULT_TABLE_SIZE = 16381
MIN_TABLE_SIZE = 251
MAX_TABLE_SIZE = 131071

_OFFSET_PERSON = b"sluice-mgl-off"
_SKIP_PERSON = b"sluice-mgl-skip"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def validate_table_size(size: int) -> int:
    """Return ``size`` if it is a usable Maglev table size, else raise ValueError.

    The size must be prime (so every skip in 1..size-1 yields a full permutation) and
    within the range the datapath's table map is built for.
    """
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not MIN_TABLE_SIZE <= size <= MAX_TABLE_SIZE
        or not _is_prime(size)
    ):
        raise ValueError(
            f"--maglev-table-size {size}: must be a prime between {MIN_TABLE_SIZE} and "
            f"{MAX_TABLE_SIZE}, e.g. {DEFAULT_TABLE_SIZE}"
        )
    return size


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


def permutation_params(identity: bytes, size: int) -> tuple[int, int]:
    """A backend's (offset, skip): offset in [0, size), skip in [1, size)."""
    offset = _hash64(identity, _OFFSET_PERSON) % size
    skip = _hash64(identity, _SKIP_PERSON) % (size - 1) + 1
    return offset, skip


def maglev_table(backends: Sequence[T], size: int, key: Callable[[T], bytes]) -> tuple[T, ...]:
    """The Maglev lookup table of ``size`` entries for the set ``backends``.

    ``key`` gives each backend's stable identity bytes; it is what the hashes and the
    ordering use. Backends with equal keys must be equal (they are the same backend and
    count once); distinct backends sharing a key raise ValueError. No backends: ``()``.
    """
    validate_table_size(size)
    by_key: dict[bytes, T] = {}
    for backend in backends:
        k = key(backend)
        seen = by_key.setdefault(k, backend)
        if seen is not backend and seen != backend:
            raise ValueError(f"maglev: backends {seen!r} and {backend!r} share the key {k!r}")
    if not by_key:
        return ()
    keys = sorted(by_key)
    members = [by_key[k] for k in keys]
    n = len(keys)
    params = [permutation_params(k, size) for k in keys]
    # pos[i]: backend i's next candidate slot, i.e. its permutation at its next index.
    pos = [offset for offset, _ in params]
    skips = [skip for _, skip in params]
    owner = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            c = pos[i]
            s = skips[i]
            while owner[c] >= 0:
                c += s
                if c >= size:
                    c -= size
            owner[c] = i
            c += s
            pos[i] = c - size if c >= size else c
            filled += 1
            if filled == size:
                return tuple(members[i] for i in owner)


def backend_key(backend: BackendRef) -> bytes:
    """A backend's identity bytes: packed address (4 or 16 bytes), port, protocol."""
    return (backend.address.packed + backend.port.to_bytes(2, "big")
            + backend.protocol.encode("ascii"))


def backend_table(backends: Sequence[BackendRef],
                  size: int = DEFAULT_TABLE_SIZE) -> tuple[BackendRef, ...]:
    """The Maglev table of a service's backends (see maglev_table)."""
    return maglev_table(backends, size, backend_key)
