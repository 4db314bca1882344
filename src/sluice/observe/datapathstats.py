"""What a node's datapath counted, read from its pinned maps (for the agent's /metrics):
packets and bytes by hook and drop reason, policy verdicts, new flows per service
backend, what became of flow events, and how full each map is.

Every scrape reads this, so nothing walks a map key by key where the kernel offers
better: per-CPU maps come in BPF_MAP_LOOKUP_BATCH chunks and are summed over CPUs here,
hash maps are counted by batches that are never decoded, and LPM tries are counted from
the memory the kernel accounts to them (fdinfo `memlock` of a trie is its entries times
the size of one node; checked, with a walk as the fallback). Counting a hash map still
costs the kernel ~0.3 us per entry, so `DatapathReader` keeps what only the agent writes,
the fill of its plain hash maps (the datapath writes only LRU maps) and the labels of
service backends, until the agent writes again.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from sluice.compile.services import FrontendScope, ServiceTable
from sluice.datapath import events as ev
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.loader.btf import BtfKind, vmlinux_btf
from sluice.loader.layout import LayoutMismatchError
from sluice.loader.libbpf import MapBatchOpts, check, lib, possible_cpus
from sluice.loader.maps import ENOTSUPP, Map, MapType

log = logging.getLogger("sluice.observe.datapathstats")

T = TypeVar("T")

BATCH_ENTRIES = 4096
# Map types whose number of entries varies (arrays are always full, ring buffers hold no
# entries): the ones map pressure is reported for.
HASH_TYPES = {MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH}
COUNTED_TYPES = HASH_TYPES | {MapType.LPM_TRIE}
# The datapath writes only LRU maps; these change only when the agent writes them.
AGENT_WRITTEN_TYPES = {MapType.HASH, MapType.PERCPU_HASH}
PERCPU_MAP_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH}
LPM_KEY_HEADER = 4  # struct bpf_lpm_trie_key: the u32 prefix length before the data
ADDRESS_BYTES = 16  # union sl_addr
V4_MAPPED = bytes(10) + b"\xff\xff"
PROTOCOL_NAMES = {number: name for name, number in lb.PROTOCOLS.items()}

EVENT_OUTCOMES = {
    ev.EventStat.SENT: "sent",
    ev.EventStat.LOST_FULL: "lost_ring_full",
    ev.EventStat.RATE_LIMITED: "rate_limited",
    ev.EventStat.SAMPLED_OUT: "sampled_out",
}


@dataclass(frozen=True)
class PacketCount:
    """Packets a hook forwarded (reason `none`) or dropped for one reason."""

    hook: str  # Hook name, lowercase: from_endpoint, ...
    direction: str  # from the endpoint's point of view: ingress, egress
    reason: str  # DropReason name, lowercase; `none`: forwarded
    packets: int
    bytes: int

    @property
    def verdict(self) -> str:
        return "forwarded" if self.reason == "none" else "dropped"


@dataclass(frozen=True)
class BackendLabel:
    backend: str  # IP:PORT
    frontend: str  # IP:PORT/PROTO: the service port's ClusterIP where it has one
    service: str  # NS/NAME; "" when the agent does not know the frontend


@dataclass(frozen=True)
class MapFill:
    name: str
    entries: int
    max_entries: int

    @property
    def pressure(self) -> float:
        return self.entries / self.max_entries if self.max_entries else 0.0


@dataclass(frozen=True)
class DatapathStats:
    packets: tuple[PacketCount, ...]
    policy_verdicts: tuple[tuple[str, int], ...]  # (CounterReason name, packets)
    # New flows and socket connects that chose each live backend, from any frontend.
    selections: tuple[tuple[BackendLabel, int], ...]
    events: tuple[tuple[str, int], ...]  # (outcome, events)
    maps: tuple[MapFill, ...]
    read_seconds: float
    problems: tuple[str, ...]  # parts that could not be read, and why


class _BatchUnsupportedError(Exception):
    """The map type has no batch lookup (the caller walks it key by key)."""


def _lookup_batches(fd: int, key_size: int, value_size: int, what: str
                    ) -> Iterator[tuple[ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_char],
                                        int]]:
    """(keys, values, count) per BPF_MAP_LOOKUP_BATCH call over the whole map (the same
    buffers each time); VALUE_SIZE is what the kernel writes per entry (for per-CPU maps:
    one 8-byte aligned value per possible CPU)."""
    keys = ctypes.create_string_buffer(key_size * BATCH_ENTRIES)
    values = ctypes.create_string_buffer(value_size * BATCH_ENTRIES)
    # The batch cursor is opaque; hash maps write a whole key into it.
    in_batch = ctypes.create_string_buffer(max(key_size, 8))
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
    first = True
    while True:
        count = ctypes.c_uint32(BATCH_ENTRIES)
        ret = lib().bpf_map_lookup_batch(fd, None if first else in_batch, out_batch, keys,
                                         values, ctypes.byref(count), ctypes.byref(opts))
        if first and ret in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP):
            raise _BatchUnsupportedError(what)
        if ret not in (0, -errno.ENOENT):
            check(ret, f"batch-reading {what}")
        yield keys, values, int(count.value)
        if ret == -errno.ENOENT:
            return
        ctypes.memmove(in_batch, out_batch, len(out_batch))
        first = False


def _u64_words(value_type: type[Any]) -> int:
    """How many u64 a value of VALUE_TYPE is (a u64, or a struct of u64 fields)."""
    if value_type is ctypes.c_uint64:
        return 1
    fields = getattr(value_type, "_fields_", None)
    if fields and all(f[1] is ctypes.c_uint64 for f in fields):
        return len(fields)
    raise TypeError(f"{value_type.__name__} is not made of u64 counters")


def _sum_cpus(counters: memoryview, entries: int, words: int, cpus: int
              ) -> list[tuple[int, ...]]:
    """Per entry, each of its WORDS counters summed over CPUS: COUNTERS holds ENTRIES
    entries of CPUS values of WORDS u64 each."""
    per_entry = words * cpus
    columns = [list(map(sum, zip(*(counters[cpu * words + word:entries * per_entry:per_entry]
                                    for cpu in range(cpus)), strict=True)))
               for word in range(words)]
    return list(zip(*columns, strict=True))


def percpu_totals(bpf_map: Map[Any, Any]) -> dict[bytes, tuple[int, ...]]:
    """Every entry of a per-CPU map of u64 counters (one, or a struct of them): key
    bytes -> each counter summed over all CPUs."""
    if not bpf_map.percpu:
        raise TypeError(f"map {bpf_map.name} is not per-CPU")
    words = _u64_words(bpf_map.value_type)
    cpus = possible_cpus()
    key_size = bpf_map.meta.key_size
    totals: dict[bytes, tuple[int, ...]] = {}
    try:
        for keys, values, count in _lookup_batches(bpf_map.fd, key_size, words * cpus * 8,
                                                   f"map {bpf_map.name}"):
            key_bytes = keys.raw
            sums = _sum_cpus(memoryview(values.raw).cast("Q"), count, words, cpus)
            totals.update(zip((key_bytes[i * key_size:(i + 1) * key_size]
                               for i in range(count)), sums, strict=True))
    except _BatchUnsupportedError:
        present = list(bpf_map.keys())
        for key in present:
            per_cpu = bpf_map.lookup_percpu(key)
            if not per_cpu:  # deleted meanwhile
                continue
            raw = b"".join(bytes(value) for value in per_cpu)
            totals[bytes(key)] = _sum_cpus(memoryview(raw).cast("Q"), 1, words, len(per_cpu))[0]
    return totals


def _index(key: bytes) -> int:
    return int.from_bytes(key, sys.byteorder)


def _name(enum: Any, number: int, unknown: str) -> str:
    try:
        return str(enum(number).name.lower())
    except ValueError:
        return f"{unknown}_{number}"


def read_packets(counters: Map[Any, Any]) -> list[PacketCount]:
    """`datapath_counters`: every hook's forwarded packets (also when none), and its drops
    by reason where there were any."""
    found = []
    for key, (packets, nbytes) in sorted(percpu_totals(counters).items(),
                                         key=lambda item: _index(item[0])):
        hook, reason = divmod(_index(key), ev.DROP_REASON_SLOTS)
        known_hook = hook in ev.Hook._value2member_map_
        if not packets and not (reason == ev.DropReason.NONE and known_hook):
            continue
        direction = ev.HOOK_DIRECTION[ev.Hook(hook)].lower() if known_hook else ""
        found.append(PacketCount(_name(ev.Hook, hook, "hook"), direction,
                                 _name(ev.DropReason, reason, "reason"), packets, nbytes))
    return found


def read_policy_verdicts(counters: Map[Any, Any]) -> list[tuple[str, int]]:
    totals = {_index(k): v for k, v in percpu_totals(counters).items()}
    return [(reason.name.lower(), totals.get(int(reason), (0, 0))[0])
            for reason in pol.CounterReason]


def read_event_outcomes(stats: Map[Any, Any]) -> list[tuple[str, int]]:
    totals = {_index(k): v for k, v in percpu_totals(stats).items()}
    return [(outcome, totals.get(int(stat), (0,))[0]) for stat, outcome in EVENT_OUTCOMES.items()]


def _address(raw: bytes) -> str:
    """A `union sl_addr` (IPv4 mapped into IPv6) as text, bracketed for IPv6."""
    if raw.startswith(V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, raw[len(V4_MAPPED):])
    return f"[{ipaddress.IPv6Address(raw)}]"  # as compile.services.Frontend writes it


def _span(field: Any) -> slice:
    """Where a ctypes field (a class attribute: offset and size) is in a struct's bytes."""
    return slice(field.offset, field.offset + field.size)


def frontend_services(services: ServiceTable | None) -> dict[str, tuple[int, str]]:
    """"IP:PORT/PROTO" -> (rank: 0 for a ClusterIP, 1 for others; service NS/NAME)."""
    return {str(plan.frontend): (0 if plan.scope is FrontendScope.CLUSTER_IP else 1,
                                 plan.service)
            for plan in (services.plans if services is not None else ())}


def backend_labels(services_raw: dict[bytes, bytes], backends_raw: dict[bytes, bytes],
                   plans: dict[str, tuple[int, str]]) -> list[tuple[bytes, BackendLabel]]:
    """(backend id as key bytes, its labels) for every backend a frontend slot names,
    from the raw entries of lb_services and lb_backends; PLANS from frontend_services. A
    backend serves every frontend of its service port and is counted once, by id: it is
    labelled with the ClusterIP frontend where the service has one (else the first
    frontend), so other frontends do not split it."""
    # Up to 100k entries: fields are sliced out of the bytes, not decoded into objects.
    order = sys.byteorder
    frontend_end = lb.LbKey.slot.offset  # the key's bytes before the slot: the frontend
    slot, count, backend_id = _span(lb.LbKey.slot), _span(lb.LbValue.count), \
        _span(lb.LbValue.backend_id)
    no_slot = bytes(lb.LbKey.slot.size)
    sizes = {key[:frontend_end]: int.from_bytes(value[count], order)
             for key, value in services_raw.items() if key[slot] == no_slot}
    frontends: dict[bytes, tuple[int, str, str]] = {}
    chosen: dict[bytes, tuple[int, str, str]] = {}  # id -> (rank, frontend, service)
    for key, value in services_raw.items():
        frontend_key = key[:frontend_end]
        if not 0 < int.from_bytes(key[slot], order) <= sizes.get(frontend_key, 0):
            continue
        named = frontends.get(frontend_key)
        if named is None:
            named = frontends[frontend_key] = _frontend(key, plans)
        backend = value[backend_id]
        current = chosen.get(backend)
        if current is None or named < current:
            chosen[backend] = named
    port = _span(lb.LbBackend.port)
    labels = []
    for key, (_, frontend, service) in chosen.items():
        raw = backends_raw.get(key)
        if raw is not None:  # else a slot naming a backend being removed
            address = f"{_address(raw[:ADDRESS_BYTES])}:{int.from_bytes(raw[port], 'big')}"
            labels.append((key, BackendLabel(address, frontend, service)))
    return labels


def _frontend(key: bytes, plans: dict[str, tuple[int, str]]) -> tuple[int, str, str]:
    """(rank: 0 ClusterIP, 1 other, 2 unknown to the agent; "IP:PORT/PROTO", service)."""
    protocol = PROTOCOL_NAMES.get(key[lb.LbKey.proto.offset], "")
    frontend = (f"{_address(key[:ADDRESS_BYTES])}:"
                f"{int.from_bytes(key[_span(lb.LbKey.port)], 'big')}/{protocol}")
    rank, service = plans.get(frontend, (2, ""))
    return rank, frontend, service


def read_selections(labels: list[tuple[bytes, BackendLabel]], selections: Map[Any, Any]
                    ) -> list[tuple[BackendLabel, int]]:
    """Each live backend (LABELS) with the new flows lb_selections counted for it."""
    counts = {key: words[0] for key, words in percpu_totals(selections).items()}
    return [(label, counts.get(key, 0)) for key, label in labels]


@cache
def _lpm_node_size() -> int | None:
    """sizeof(struct lpm_trie_node) of the running kernel, from its BTF."""
    try:
        btf = vmlinux_btf()
        return btf.size(btf.find("lpm_trie_node", BtfKind.STRUCT))
    except (KeyError, ValueError, OSError):
        return None


def _fdinfo(fd: int) -> dict[str, str]:
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as lines:
        return dict(line.rstrip("\n").split(":\t", 1) for line in lines if ":\t" in line)


def _count_by_keys(fd: int, key_size: int, what: str) -> int:
    key, following = ctypes.create_string_buffer(key_size), ctypes.create_string_buffer(key_size)
    count = 0
    ret = lib().bpf_map_get_next_key(fd, None, following)
    while ret == 0:
        count += 1
        ctypes.memmove(key, following, key_size)
        ret = lib().bpf_map_get_next_key(fd, key, following)
    if ret != -errno.ENOENT:
        check(ret, f"iterating {what}")
    return count


def _count_lpm(fd: int, info: dict[str, str], what: str) -> int:
    """A trie's `memlock` is exactly its entries x (node + prefix data + value) on kernels
    that account map memory by use (6.4+); anything else is walked key by key."""
    node = _lpm_node_size()
    key_size, value_size = int(info["key_size"]), int(info["value_size"])
    memlock, max_entries = int(info.get("memlock", "-1")), int(info["max_entries"])
    if node is not None and memlock >= 0:
        element = node + key_size - LPM_KEY_HEADER + value_size
        entries, rest = divmod(memlock, element)
        if not rest and entries <= max_entries:
            return entries
    return _count_by_keys(fd, key_size, what)


def _map_kind(info: dict[str, str]) -> MapType | None:
    try:
        return MapType(int(info["map_type"]))
    except (KeyError, ValueError):
        return None  # not a map, or a type this module does not count


def count_entries(fd: int, what: str) -> MapFill | None:
    """Entries and capacity of the map open as FD (named WHAT), or None for a map type
    that is always full or holds no entries (arrays, ring buffers) or an FD that is not
    a map."""
    info = _fdinfo(fd)
    map_type = _map_kind(info)
    if map_type is None or map_type not in COUNTED_TYPES:
        return None
    return _count(fd, info, map_type, what)


def _count(fd: int, info: dict[str, str], map_type: MapType, what: str) -> MapFill:
    max_entries, key_size = int(info["max_entries"]), int(info["key_size"])
    if map_type is MapType.LPM_TRIE:
        return MapFill(what, _count_lpm(fd, info, what), max_entries)
    value_size = int(info["value_size"])
    if map_type in PERCPU_MAP_TYPES:
        value_size = (value_size + 7) // 8 * 8 * possible_cpus()
    try:
        entries = sum(count for _, _, count in _lookup_batches(fd, key_size, value_size, what))
    except _BatchUnsupportedError:
        entries = _count_by_keys(fd, key_size, what)
    return MapFill(what, entries, max_entries)


def read_map_fills(pin_dir: str, known: dict[str, MapFill] | None = None) -> list[MapFill]:
    """Entries and capacity of every map pinned in PIN_DIR whose fill varies. KNOWN: the
    fills of plain hash maps, still true (see DatapathReader); filled in as counted."""
    fills = []
    for entry in sorted(os.scandir(pin_dir), key=lambda e: e.name):
        if not entry.is_file():
            continue
        if known is not None and entry.name in known:
            fills.append(known[entry.name])
            continue
        fd = check(lib().bpf_obj_get(entry.path.encode()), f"opening pinned map {entry.path}")
        try:
            info = _fdinfo(fd)
            map_type = _map_kind(info)
            if map_type is None or map_type not in COUNTED_TYPES:
                continue
            fill = _count(fd, info, map_type, entry.name)
        finally:
            os.close(fd)
        fills.append(fill)
        if known is not None and map_type in AGENT_WRITTEN_TYPES:
            known[entry.name] = fill
    return fills


class _Reader:
    """Opens what one read needs, notes what failed, closes it all."""

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir
        self.problems: list[str] = []
        self._opened: list[Map[Any, Any]] = []

    def open(self, name: str, key: type[Any], value: type[Any]) -> Map[Any, Any] | None:
        """The pinned map NAME, or None when it is not pinned (an older datapath)."""
        path = os.path.join(self.pin_dir, name)
        if not os.path.exists(path):
            return None
        opened: Map[Any, Any] = Map.from_pin(path, key, value)
        self._opened.append(opened)
        return opened

    def part(self, what: str, read: Callable[[], list[T]]) -> tuple[T, ...]:
        """What READ returns; nothing if it fails (noted in `problems`)."""
        try:
            return tuple(read())
        except (OSError, LayoutMismatchError, TypeError, ValueError) as err:
            self.problems.append(f"{what}: {err}")
            return ()

    def close(self) -> None:
        for opened in self._opened:
            opened.close()


class DatapathReader:
    """Reads one node's datapath counters, scrape after scrape (thread-safe).

    What only the agent writes, the fill of its plain hash maps and the labels of service
    backends, is read again only when `generation` changes: the caller passes something
    that moves whenever the agent writes the maps (the agent: its change counters), or
    None to read everything every time. Even then the labels are made again only if the
    load balancer maps or the service names changed.
    """

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir
        self._lock = threading.Lock()
        self._generation: object = None
        self._fills: dict[str, MapFill] = {}
        self._labels: list[tuple[bytes, BackendLabel]] = []
        # What the labels were made from (hashes: the maps can hold 100k+ entries), and
        # whether they were checked against the maps since the generation moved.
        self._labelled: tuple[int, int, int] | None = None
        self._labels_checked = False

    def read(self, services: ServiceTable | None = None, generation: object = None
             ) -> DatapathStats | None:
        """Everything the datapath counted, or None when the pin directory holds no
        datapath (iptables mode, or before the first bpf reconcile). SERVICES (the
        agent's last service plan) names the services of backends; a part that cannot
        be read is left empty and listed in `problems` (and logged)."""
        if not os.path.exists(os.path.join(self.pin_dir, ev.COUNTERS_MAP)) and \
                not os.path.exists(os.path.join(self.pin_dir, pol.COUNTERS_MAP)):
            return None
        with self._lock:
            key = None if generation is None else (generation, services is not None)
            if key is None or key != self._generation:
                self._fills, self._labels_checked = {}, False
            self._generation = key
            return self._read(services, cache=key is not None)

    def _read(self, services: ServiceTable | None, cache: bool) -> DatapathStats:
        started = time.monotonic()
        reader = _Reader(self.pin_dir)
        u32, u64 = ctypes.c_uint32, ctypes.c_uint64
        known = self._fills if cache else {}  # fills of agent-written maps, still true

        def packets() -> list[PacketCount]:
            counters = reader.open(ev.COUNTERS_MAP, u32, ev.DatapathCounter)
            return read_packets(counters) if counters else []

        def verdicts() -> list[tuple[str, int]]:
            counters = reader.open(pol.COUNTERS_MAP, pol.StateIndex, pol.PolicyCounter)
            return read_policy_verdicts(counters) if counters else []

        def selections() -> list[tuple[BackendLabel, int]]:
            chosen = reader.open(lb.SELECTIONS_MAP, u32, u64)
            frontends = reader.open(lb.SERVICES_MAP, lb.LbKey, lb.LbValue)
            backends = reader.open(lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend)
            if chosen is None or frontends is None or backends is None:
                return []
            if not self._labels_checked:
                self._label_backends(frontends, backends, services, known)
                self._labels_checked = cache
            return read_selections(self._labels, chosen)

        def events() -> list[tuple[str, int]]:
            stats = reader.open(ev.STATS_MAP, u32, u64)
            return read_event_outcomes(stats) if stats else []

        def fills() -> list[MapFill]:
            return read_map_fills(self.pin_dir, known)

        try:
            parts = (reader.part(ev.COUNTERS_MAP, packets),
                     reader.part(pol.COUNTERS_MAP, verdicts),
                     reader.part(lb.SELECTIONS_MAP, selections),
                     reader.part(ev.STATS_MAP, events), reader.part("map entries", fills))
        finally:
            reader.close()
        for problem in reader.problems:
            log.warning("reading the datapath's counters in %s: %s", self.pin_dir, problem)
        return DatapathStats(*parts, read_seconds=time.monotonic() - started,
                             problems=tuple(reader.problems))


    def _label_backends(self, frontends: Map[Any, Any], backends: Map[Any, Any],
                        services: ServiceTable | None, known: dict[str, MapFill]) -> None:
        """Labels of the backends the maps hold now; kept as they were when neither the
        maps nor the service names changed (the agent wrote something else)."""
        frontends_raw, backends_raw = frontends.lookup_batch_raw(), backends.lookup_batch_raw()
        for name, read, raw in ((lb.SERVICES_MAP, frontends, frontends_raw),
                                (lb.BACKENDS_MAP, backends, backends_raw)):
            known[name] = MapFill(name, len(raw), read.meta.max_entries)
        plans = frontend_services(services)
        made_from = (hash(frozenset(frontends_raw.items())),
                     hash(frozenset(backends_raw.items())), hash(frozenset(plans.items())))
        if made_from != self._labelled:
            self._labels = backend_labels(frontends_raw, backends_raw, plans)
            self._labelled = made_from


def read_datapath_stats(pin_dir: str, services: ServiceTable | None = None
                        ) -> DatapathStats | None:
    """Everything the datapath in PIN_DIR counted, read once (see DatapathReader)."""
    return DatapathReader(pin_dir).read(services)
