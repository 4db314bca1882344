"""A private instance of a node's datapath for `sluice trace`.

The node's own programs (node.bpf.o, with the rodata the live programs were loaded with)
run over the node's pinned maps for everything the datapath only reads, and over fresh
maps of their own for everything it writes, seeded with copies of the pinned entries a
traced packet may touch. A trace therefore sees what the node sees and changes nothing
the node holds: no conntrack or policy flow, no hit or flow counter, no event.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sluice.apply.attachments import Attachment, links_dir
from sluice.compile.devices import SERVICE_VNI, TUNNEL_VNI
from sluice.compile.maglev import DEFAULT_TABLE_SIZE
from sluice.datapath import conntrack as ct
from sluice.datapath import events as ev
from sluice.datapath import lb, masq
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.loader import BpfObject, LibbpfError, Map, Program, RingBuffer, test_run
from sluice.loader.attach import Link
from sluice.loader.btf import Btf
from sluice.loader.libbpf import ProgInfo, check, lib
from sluice.loader.maps import MapMeta, map_info
from sluice.loader.objects import VerifierError
from sluice.loader.testrun import TestRunResult

OBJECT_NAME = "node"
NODE_PROGRAMS = ("from_endpoint", "from_network", "from_host", "to_network")

# Every map node.bpf.o writes (stores, atomic adds, updates, ring buffer records). The one
# place this is kept: tests/bpf/test_trace.py loads the object with every other map made
# read-only to programs (BPF_F_RDONLY_PROG), so the verifier refuses it the day the C
# writes another map, and checks each map listed here is still written.
WRITTEN_MAPS: tuple[str, ...] = (
    ct.MAP_NAME, pol.FLOWS_MAP, pol.POLICY_MAP, rt.MAP_NAME, lb.AFFINITY_MAP,
    lb.SELECTIONS_MAP, ev.COUNTERS_MAP, ev.STATS_MAP, ev.WINDOW_MAP, pol.COUNTERS_MAP,
    "node_scratch", ev.EVENTS_MAP, pol.EVENTS_MAP, masq.MAPPINGS_MAP, masq.SCRATCH_MAP,
)
# Read only, but a trace wants its own: every event, no sampling, no rate limit.
CONFIGURED_MAPS: tuple[str, ...] = (ev.CONFIG_MAP,)
PRIVATE_MAPS = WRITTEN_MAPS + CONFIGURED_MAPS
# Seeded with every pinned entry: the datapath reads them to decide (routes, policy
# entries, affinity) and only counts or refreshes in them.
COPIED_WHOLE: tuple[str, ...] = (rt.MAP_NAME, pol.POLICY_MAP, lb.AFFINITY_MAP)
# Seeded with the pinned entries of the traced flow (any tuple holding its client port).
COPIED_FOR_FLOW: tuple[str, ...] = (ct.MAP_NAME, pol.FLOWS_MAP)
# Private tables sized for a trace (the node's preallocate a quarter million entries).
FLOW_TABLES: tuple[str, ...] = (ct.MAP_NAME, pol.FLOWS_MAP, lb.AFFINITY_MAP, lb.SELECTIONS_MAP,
                                masq.MAPPINGS_MAP)
FLOW_TABLE_SIZE = 4096
CT_KEY_SPORT = ct.CtKey.sport.offset
CT_KEY_DPORT = ct.CtKey.dport.offset
CT_KEY_PROTO = ct.CtKey.proto.offset


class TraceLoadError(Exception):
    """The node's datapath cannot be traced (no pins, another build, ...)."""


@dataclass(frozen=True)
class LiveProgram:
    """A program the node runs, found through its pinned link."""

    name: str
    prog_id: int
    tag: str
    rodata: dict[str, int] | None  # its integer rodata globals


@dataclass(frozen=True)
class LinkedDevice:
    """A device a node program is attached to (from `<pin_dir>/links`)."""

    program: str
    ifname: str
    ifindex: int
    prog_id: int


def linked_devices(pin_dir: str) -> list[LinkedDevice]:
    """The node programs' attachments, as pinned by the agent."""
    directory = links_dir(pin_dir)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in sorted(os.listdir(directory)):
        attachment = Attachment.from_pin_name(name)
        if attachment is None or attachment.program not in NODE_PROGRAMS:
            continue
        try:
            link = Link.from_pin(os.path.join(directory, name))
        except LibbpfError:
            continue
        try:
            state = link.info()
        finally:
            link.close()
        if state.ifindex:
            found.append(LinkedDevice(attachment.program, attachment.ifname, state.ifindex,
                                      state.prog_id))
    return found


def _prog_info(fd: int, map_ids: ctypes.Array[ctypes.c_uint32] | None = None) -> ProgInfo:
    info = ProgInfo()
    if map_ids is not None:
        info.nr_map_ids = len(map_ids)
        info.map_ids = ctypes.cast(map_ids, ctypes.c_void_p).value or 0
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
          "reading program info")
    return info


def _rodata_of(map_ids: ctypes.Array[ctypes.c_uint32]) -> dict[str, int] | None:
    """The integer globals of a program's .rodata map, decoded by the map's own BTF."""
    for map_id in map_ids:
        fd = lib().bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            continue
        try:
            info = map_info(fd)
            if not info.name.decode(errors="replace").endswith(".rodata") or not info.btf_id:
                continue
            key = ctypes.c_uint32(0)
            value = ctypes.create_string_buffer(info.value_size)
            check(lib().bpf_map_lookup_elem(fd, ctypes.byref(key), value),
                  "reading the live program's rodata")
            with Btf.from_kernel_id(info.btf_id) as btf:
                variables = btf.datasec(".rodata")
            return {name: int.from_bytes(value.raw[v.offset:v.offset + v.size], "little")
                    for name, v in variables.items() if v.size in (1, 2, 4, 8)}
        finally:
            os.close(fd)
    return None


def live_program(device: LinkedDevice) -> LiveProgram | None:
    """The program attached at DEVICE: its tag and the rodata it was loaded with."""
    fd = lib().bpf_prog_get_fd_by_id(device.prog_id)
    if fd < 0:
        return None
    try:
        info = _prog_info(fd)
        map_ids = (ctypes.c_uint32 * info.nr_map_ids)()
        info = _prog_info(fd, map_ids)
        return LiveProgram(device.program, device.prog_id, bytes(info.tag).hex(),
                           _rodata_of(map_ids))
    finally:
        os.close(fd)


def open_raw_pin(path: str) -> Map[ctypes.Array[ctypes.c_uint8], ctypes.Array[ctypes.c_uint8]]:
    """A pinned map as bytes (copies between maps of one object need no layout)."""
    fd = check(lib().bpf_obj_get(path.encode()), f"opening pinned map {path}")
    try:
        info = map_info(fd)
    except BaseException:
        os.close(fd)
        raise
    meta = MapMeta(info.name.decode(), info.type, info.key_size, info.value_size,
                   info.max_entries, info.id)
    return Map(fd, meta, ctypes.c_uint8 * info.key_size, ctypes.c_uint8 * info.value_size,
               owns_fd=True)


@contextmanager
def _pinned(path: str) -> Iterator[Map[ctypes.Array[ctypes.c_uint8],
                                       ctypes.Array[ctypes.c_uint8]]]:
    opened = open_raw_pin(path)
    try:
        yield opened
    finally:
        opened.close()


def holds_port(key: bytes, proto: int, port_be: bytes) -> bool:
    """Whether a ct_key (as bytes) is of PROTO and carries PORT on either side."""
    return key[CT_KEY_PROTO] == proto and port_be in (
        key[CT_KEY_SPORT:CT_KEY_SPORT + 2], key[CT_KEY_DPORT:CT_KEY_DPORT + 2])


@dataclass(frozen=True)
class FlowSeed:
    """The traced flow, as far as choosing the entries to copy goes."""

    proto: int
    client_port: int  # the source port (ICMP echo: the id)


def read_seed(pin_dir: str, flow: FlowSeed) -> dict[str, dict[bytes, bytes]]:
    """The pinned entries a trace of FLOW starts from: COPIED_WHOLE entirely, and of
    COPIED_FOR_FLOW the tuples of its protocol holding its client port."""
    port_be = flow.client_port.to_bytes(2, "big")
    seed = {}
    for name in COPIED_WHOLE + COPIED_FOR_FLOW:
        with _pinned(os.path.join(pin_dir, name)) as pinned:
            entries = pinned.lookup_batch_raw()
        if name in COPIED_FOR_FLOW:
            entries = {k: v for k, v in entries.items() if holds_port(k, flow.proto, port_be)}
        seed[name] = entries
    return seed


@dataclass
class TraceInstance:
    """node.bpf.o loaded over PIN_DIR's maps, with PRIVATE_MAPS of its own."""

    obj: BpfObject
    pin_dir: str
    live: dict[str, LiveProgram]
    rodata_note: str
    seeded: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, pin_dir: str, flow: FlowSeed) -> TraceInstance:
        if not os.path.isdir(pin_dir):
            raise TraceLoadError(f"pin directory {pin_dir} does not exist: is the node's "
                                 "agent running in bpf mode?")
        live = {}
        for device in linked_devices(pin_dir):
            if device.program not in live:
                program = live_program(device)
                if program is not None:
                    live[device.program] = program
        obj = BpfObject.open(OBJECT_NAME, pin_dir=pin_dir, private_maps=PRIVATE_MAPS)
        try:
            missing = [name for name in obj.map_names() if "." not in name
                       and name not in PRIVATE_MAPS
                       and not os.path.exists(os.path.join(pin_dir, name))]
            if missing:
                # Loading now would create and pin these in the node's directory.
                raise TraceLoadError(f"{pin_dir} has no pinned {', '.join(missing)}: the "
                                     "node's agent runs another version of the datapath")
            seed = read_seed(pin_dir, flow)
            for name in FLOW_TABLES:
                # A trace's tables hold a few flows: not the node's preallocated sizes.
                obj.set_max_entries(name, max(FLOW_TABLE_SIZE, 4 * len(seed.get(name, {}))))
            rodata_note = _set_rodata(obj, live)
            _load(obj, pin_dir)
            instance = cls(obj, pin_dir, live, rodata_note)
            instance._configure_events()
            for name, entries in seed.items():
                instance._write_raw(name, entries)
                instance.seeded[name] = len(entries)
            return instance
        except BaseException:
            obj.close()
            raise

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> TraceInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _configure_events(self) -> None:
        config = self.obj.map(ev.CONFIG_MAP, ctypes.c_uint32, ev.EventsConfig)
        config.update(ctypes.c_uint32(0), ev.EventsConfig(
            kinds=int(ev.EventKinds.DROPS | ev.EventKinds.FLOWS), sample=0, rate_per_cpu=0))

    def build(self, program: str) -> tuple[str, dict[str, object]]:
        """Whether PROGRAM here is the build the node runs, and the rodata it got: as a
        line of text, and as data."""
        ours = bytes(self.obj.program(program).info().tag).hex()
        live = self.live.get(program)
        if live is None:
            build = f"{self.obj.path.name} (tag {ours}); the node runs none to compare"
        elif live.tag == ours:
            build = f"{self.obj.path.name}, the build the node runs (tag {ours})"
        else:
            build = (f"{self.obj.path} (tag {ours}) is another build than the node runs "
                     f"(program id {live.prog_id}, tag {live.tag}): the trace shows what "
                     "this build does")
        info: dict[str, object] = {
            "object": str(self.obj.path), "tag": ours,
            "liveTag": live.tag if live else None,
            "sameBuild": live.tag == ours if live else None}
        return f"program {program} of {build}; {self.rodata_note}", info

    def program(self, name: str) -> Program:
        return self.obj.program(name)

    def _write_raw(self, name: str, entries: dict[bytes, bytes]) -> None:
        handle = self.obj.map_fd(name)
        for key, value in entries.items():
            key_buf = ctypes.create_string_buffer(key, len(key))
            value_buf = ctypes.create_string_buffer(value, len(value))
            check(lib().bpf_map_update_elem(handle, key_buf, value_buf, 0),
                  f"seeding the trace's private {name}")

    def run(self, program: str, data: bytes, ctx: bytes | None) -> TestRunResult:
        return test_run(self.obj.program(program), data, ctx=ctx)

    def events(self) -> tuple[list[ev.FlowEvent], list[pol.PolicyEvent]]:
        """The records the runs so far left in the private ring buffers (consumed)."""
        flows: list[ev.FlowEvent] = []
        logged: list[pol.PolicyEvent] = []
        with RingBuffer(self.obj.map_fd(ev.EVENTS_MAP),
                        lambda record: flows.append(ev.FlowEvent.parse(record))) as ring:
            ring.poll(0)
        with RingBuffer(self.obj.map_fd(pol.EVENTS_MAP),
                        lambda record: logged.append(pol.PolicyEvent.parse(record))) as ring:
            ring.poll(0)
        return flows, logged


def _set_rodata(obj: BpfObject, live: dict[str, LiveProgram]) -> str:
    """Give OBJ the rodata the live programs were loaded with; what was used, as a note."""
    defaults = {"tunnel_vni": TUNNEL_VNI, "service_vni": SERVICE_VNI,
                "maglev_table_size": DEFAULT_TABLE_SIZE}
    variables = obj.btf.datasec(".rodata")
    found = next((p.rodata for p in live.values() if p.rodata is not None), None)
    if found is None:
        obj.set_rodata(**{k: v for k, v in defaults.items() if k in variables})
        return "rodata: Sluice's defaults (no live program to read it from)"
    values = {name: value for name, value in found.items()
              if name in variables and variables[name].size in (1, 2, 4, 8)}
    obj.set_rodata(**values)
    shown = ", ".join(f"{k}={values[k]}" for k in defaults if k in values)
    return f"rodata as the node's programs were loaded ({shown})"


def _load(obj: BpfObject, pin_dir: str) -> None:
    try:
        obj.load()
    except VerifierError:
        raise
    except LibbpfError as err:
        if err.errno in (errno.EINVAL, errno.EEXIST):
            raise TraceLoadError(f"the maps pinned in {pin_dir} do not fit {obj.path} "
                                 f"({err}): the node's agent runs another version") from err
        raise
