"""The netfilter blocker (bpf/nfguard.c): load it, fill its maps, attach and pin its
programs, adopt them on restart, remove them.

Everything lives under `<pin_dir>/nfguard/`: the maps, `cgroup-links/nfguard_setsockopt`
(on the node's cgroup; adopted by `bpf_link_update`, as the socket hooks are) and
`tracepoint-links/nfguard_netlink_socket` (syscalls/sys_enter_socket). A tracepoint link
cannot take a new program, so a restarted agent attaches a fresh one first and then
replaces the pin: the old link goes when its pin does, with no gap between them.

Scope: the blocker acts on processes of the node's cgroup (the setsockopt program is
attached there; the tracepoint program, which sees every socket() on the machine, checks
`nfguard_cgroup`) and only in the network namespaces of `nfguard_scope`: a pod's
namespace, or any other one, is untouched even when its processes share the cgroup.

Allowlist: `nfguard_allow` holds thread group ids; a process passes when it, its parent
or an ancestor up to `ALLOW_DEPTH` levels up is listed. The agent lists its own PID, so
the tools it runs (iptables-save for the monitor, iptables-restore to clear stale rules)
pass. Limits: the ids are those of the initial PID namespace (an agent in a container's
PID namespace would list the wrong one); a listed PID freed by a crashed agent could be
reused until the next agent replaces the list (a stopping agent removes itself); a
process the agent starts can start others, which pass too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from sluice.apply.cgrouplinks import cgroup_links_dir, remove_cgroup_links, sync_cgroup_links
from sluice.datapath import nfguard as nf
from sluice.loader import BpfObject, LayoutMismatchError, LibbpfError, Link, Map, Program
from sluice.loader.attach import is_cgroup_root
from sluice.loader.maps import MapMeta, map_info

BLOCKER_DIR = "nfguard"
TRACEPOINT_LINKS_DIR = "tracepoint-links"
SO_NETNS_COOKIE = 71
REMOVE_HINT = "remove it with `sluice agent --node NODE --uninstall`, or start the agent " \
              "once without --netfilter-blocker"

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_TRACEFS = "/sys/kernel/tracing"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BlockerError(RuntimeError):
    """The blocker cannot be installed; the message says why."""


def blocker_dir(pin_dir: str) -> str:
    return os.path.join(pin_dir, BLOCKER_DIR)


def current_netns_cookie() -> int:
    """The cookie of the calling thread's network namespace (what BPF programs see)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        raw = probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, sys.byteorder)


# --- tracepoints through perf events ---------------------------------------------------


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config1 (PERF_ATTR_SIZE_VER0); flags stay 0."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
    ]


def _tracing_roots() -> list[str]:
    roots = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "tracefs":
                roots.append(fields[1])
            elif len(fields) >= 3 and fields[2] == "debugfs":
                roots.append(os.path.join(fields[1], "tracing"))
    return roots


def tracepoint_id(category: str, name: str) -> int:
    """The id of tracepoint CATEGORY/NAME. Without a mounted tracefs it is read from a
    private one, mounted in a throwaway mount namespace (the host's mounts stay as they
    are)."""
    relative = os.path.join("events", category, name, "id")
    for root in _tracing_roots():
        path = os.path.join(root, relative)
        if os.path.exists(path):
            with open(path, encoding="ascii") as text:
                return int(text.read())
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tracefs tracefs "$1" && cat "$1/$2"', "sh", _TRACEFS, relative],
            capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BlockerError(f"cannot read the id of tracepoint {category}/{name}: {err}") \
            from err
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise BlockerError(f"cannot read the id of tracepoint {category}/{name} (no tracefs "
                           f"mounted, and mounting a private one failed: "
                           f"{done.stderr.strip() or done.stdout.strip()})")
    return int(done.stdout)


def attach_tracepoint(prog: Program, category: str, name: str) -> Link:
    """A bpf_link running PROG at tracepoint CATEGORY/NAME on every CPU."""
    number = _PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        raise BlockerError(f"perf_event_open: unknown syscall number on {platform.machine()}")
    attr = _PerfEventAttr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr),
                          config=tracepoint_id(category, name), sample_period=1,
                          wakeup_events=1)
    # pid -1, cpu 0: a tracepoint's BPF programs run on every CPU whichever event holds them.
    fd = _libc.syscall(ctypes.c_long(number), ctypes.byref(attr), ctypes.c_int(-1),
                       ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise BlockerError(f"perf_event_open of tracepoint {category}/{name}: "
                           f"{os.strerror(err)}")
    try:
        return Link.create(prog, fd, "BPF_PERF_EVENT", f"tracepoint {category}/{name}")
    finally:
        os.close(fd)  # the link holds the event


# --- the blocker -----------------------------------------------------------------------


def _verify_pinned(directory: str) -> None:
    for name, key_type, value_type in ((nf.SCOPE_MAP, ctypes.c_uint64, ctypes.c_uint32),
                                       (nf.ALLOW_MAP, ctypes.c_uint32, ctypes.c_uint32),
                                       (nf.COUNTS_MAP, ctypes.c_uint32, nf.NfguardCounter)):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            Map.from_pin(path, key_type, value_type).close()
        except LayoutMismatchError as err:
            raise BlockerError(f"pinned map {path} has another layout: {err}; "
                               f"{REMOVE_HINT}") from err


def _replace_keys(target: Map[Any, ctypes.c_uint32], wanted: set[int]) -> None:
    """Make the keys of TARGET (a map of integers to 1) exactly WANTED, adding first."""
    key_type: Any = target.key_type
    for value in sorted(wanted):
        target.update(key_type(value), ctypes.c_uint32(1))
    for key in list(target.keys()):
        if key.value not in wanted:
            target.delete(key)


def _fd_map(obj: BpfObject, name: str) -> Map[ctypes.c_uint32, ctypes.c_uint32]:
    """A map whose values are fds (no BTF layout to verify)."""
    fd = obj.map_fd(name)
    info = map_info(fd)
    meta = MapMeta(name, info.type, info.key_size, info.value_size, info.max_entries, info.id)
    return Map(fd, meta, ctypes.c_uint32, ctypes.c_uint32)


def _pin_tracepoint_link(directory: str, prog: Program) -> None:
    links = os.path.join(directory, TRACEPOINT_LINKS_DIR)
    os.makedirs(links, exist_ok=True)
    path = os.path.join(links, prog.name)
    category, name = nf.NETLINK_TRACEPOINT
    link = attach_tracepoint(prog, category, name)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the previous link is released with its last pin
        link.pin(path)
    finally:
        link.close()


@dataclass
class Blocker:
    """The loaded blocker of one agent: its maps stay pinned, its links attached."""

    obj: BpfObject
    directory: str
    allow: Map[ctypes.c_uint32, ctypes.c_uint32]
    counts: Map[ctypes.c_uint32, nf.NfguardCounter]

    @classmethod
    def install(cls, pin_dir: str, cgroup: str, netns_cookies: set[int],
                allowed_pids: set[int], *, allow_root: bool = False) -> Blocker:
        """Guard NETNS_COOKIES against processes of CGROUP except ALLOWED_PIDS (and their
        descendants). The scope and allowlist are replaced, not merged."""
        if not os.path.isdir(cgroup):
            raise BlockerError(f"cgroup {cgroup} does not exist")
        if is_cgroup_root(cgroup) and not allow_root:
            raise BlockerError(f"refusing to attach the netfilter blocker to the cgroup root "
                               f"{cgroup}: give the node's own cgroup")
        directory = blocker_dir(pin_dir)
        os.makedirs(directory, exist_ok=True)
        _verify_pinned(directory)
        obj = BpfObject.open(nf.OBJECT_NAME, pin_dir=directory)
        try:
            try:
                obj.load()
            except LibbpfError as err:
                raise BlockerError(f"loading the netfilter blocker with the maps pinned in "
                                   f"{directory} failed: {err}; {REMOVE_HINT}") from err
            blocker = cls(obj, directory, obj.map(nf.ALLOW_MAP, ctypes.c_uint32,
                                                  ctypes.c_uint32),
                          obj.map(nf.COUNTS_MAP, ctypes.c_uint32, nf.NfguardCounter))
            # Scope and allowlist are in place before a program runs.
            _replace_keys(obj.map(nf.SCOPE_MAP, ctypes.c_uint64, ctypes.c_uint32),
                          netns_cookies)
            blocker.set_allowlist(allowed_pids)
            cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _fd_map(obj, nf.CGROUP_MAP).update(ctypes.c_uint32(0),
                                                   ctypes.c_uint32(cgroup_fd))
            finally:
                os.close(cgroup_fd)
            sync_cgroup_links(directory,
                              {nf.SETSOCKOPT_PROGRAM: obj.program(nf.SETSOCKOPT_PROGRAM)},
                              cgroup, allow_root=allow_root)
            _pin_tracepoint_link(directory, obj.program(nf.NETLINK_PROGRAM))
            return blocker
        except LibbpfError as err:
            obj.close()
            raise BlockerError(f"installing the netfilter blocker: {err}") from err
        except BaseException:
            obj.close()
            raise

    @property
    def events_fd(self) -> int:
        return self.obj.map_fd(nf.EVENTS_MAP)

    def counters(self) -> dict[nf.Operation, nf.NfguardCounter]:
        """Per operation, the sum over CPUs."""
        totals = {}
        for op in nf.Operation:
            total = nf.NfguardCounter()
            for value in self.counts.lookup_percpu(ctypes.c_uint32(op)) or []:
                total.refused += value.refused
                total.allowed += value.allowed
                total.lost += value.lost
            totals[op] = total
        return totals

    def set_allowlist(self, pids: set[int]) -> None:
        """Allow exactly PIDS (and their descendants) from now on."""
        _replace_keys(self.allow, pids)

    def release(self, pid: int) -> None:
        """Take PID off the allowlist (a stopping agent: its PID may be reused)."""
        self.allow.delete(ctypes.c_uint32(pid))

    def close(self) -> None:
        """Drop the handles; the pinned maps and links keep the blocker working."""
        self.obj.close()


@dataclass(frozen=True)
class Removal:
    links: int
    maps: int

    def __str__(self) -> str:
        return f"{self.links} links detached, {self.maps} maps unpinned"


def remove_blocker(pin_dir: str) -> Removal:
    """Detach and unpin the blocker's links, unpin its maps, remove its directory."""
    directory = blocker_dir(pin_dir)
    if not os.path.isdir(directory):
        return Removal(0, 0)
    links = remove_cgroup_links(directory)
    tracepoints = os.path.join(directory, TRACEPOINT_LINKS_DIR)
    for sub in (cgroup_links_dir(directory), tracepoints):
        if os.path.isdir(sub):
            for name in os.listdir(sub):
                os.unlink(os.path.join(sub, name))  # a link goes with its last pin
                links += 1
            os.rmdir(sub)
    maps = 0
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not os.path.isdir(path):
            os.unlink(path)
            maps += 1
    try:
        os.rmdir(directory)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise
    return Removal(links, maps)

