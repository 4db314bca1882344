"""Attach programs to their hooks: tc (tcx links, or clsact), XDP and cgroup socket hooks.

Interface indexes are resolved in the calling thread's network namespace: enter the
node's namespace first (see `sluice.netns.entered`).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from enum import Enum

from sluice.loader.btf import kernel_enum
from sluice.loader.libbpf import LibbpfError, LinkInfo, TcHook, TcOpts, check, lib
from sluice.loader.objects import Program


class Direction(Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


class XdpMode(Enum):
    AUTO = 0
    GENERIC = 1 << 1  # XDP_FLAGS_SKB_MODE
    NATIVE = 1 << 2  # XDP_FLAGS_DRV_MODE


# Section name (as libbpf knows it) -> kernel attach type name.
CGROUP_ATTACH_TYPES = {
    "cgroup/connect4": "BPF_CGROUP_INET4_CONNECT",
    "cgroup/connect6": "BPF_CGROUP_INET6_CONNECT",
    "cgroup/sendmsg4": "BPF_CGROUP_UDP4_SENDMSG",
    "cgroup/sendmsg6": "BPF_CGROUP_UDP6_SENDMSG",
    "cgroup/recvmsg4": "BPF_CGROUP_UDP4_RECVMSG",
    "cgroup/recvmsg6": "BPF_CGROUP_UDP6_RECVMSG",
    "cgroup/getpeername4": "BPF_CGROUP_INET4_GETPEERNAME",
    "cgroup/getpeername6": "BPF_CGROUP_INET6_GETPEERNAME",
    "cgroup/sock_create": "BPF_CGROUP_INET_SOCK_CREATE",
    "cgroup/setsockopt": "BPF_CGROUP_SETSOCKOPT",
    "cgroup/getsockopt": "BPF_CGROUP_GETSOCKOPT",
    "sockops": "BPF_CGROUP_SOCK_OPS",
}


def attach_type(name: str) -> int:
    """A `enum bpf_attach_type` value, read from the running kernel's BTF."""
    types = kernel_enum("bpf_attach_type")
    if name not in types:
        raise LibbpfError(errno.EOPNOTSUPP, f"this kernel has no attach type {name}")
    return types[name]


def tcx_supported() -> bool:
    return "BPF_TCX_INGRESS" in kernel_enum("bpf_attach_type")


@dataclass(frozen=True)
class LinkState:
    """What the kernel reports about a link. For tcx and XDP links `ifindex` is the device
    it is attached to, 0 once that device is gone (the link is then defunct)."""

    link_type: int
    link_id: int
    prog_id: int
    ifindex: int
    attach_type: int


@dataclass
class Link:
    """A bpf_link: the attachment lives while the fd is open or the link is pinned."""

    fd: int
    description: str

    @classmethod
    def create(cls, prog: Program, target_fd: int, type_name: str, description: str,
               flags: int = 0) -> Link:
        opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
        fd = check(lib().bpf_link_create(prog.fd, target_fd, attach_type(type_name),
                                         ctypes.byref(opts)),
                   f"attaching {prog.name} to {description}")
        return cls(fd, description)

    @classmethod
    def from_pin(cls, path: str) -> Link:
        fd = check(lib().bpf_obj_get(path.encode()), f"opening pinned link {path}")
        return cls(fd, path)

    def pin(self, path: str) -> None:
        check(lib().bpf_obj_pin(self.fd, path.encode()), f"pinning link {self.description}")

    def info(self) -> LinkState:
        info = LinkInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        check(lib().bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size)),
              f"reading info of link {self.description}")
        return LinkState(info.type, info.id, info.prog_id, info.ifindex, info.attach_type)

    def update(self, prog: Program) -> None:
        """Swap the link's program for PROG atomically: the hook is never left empty."""
        check(lib().bpf_link_update(self.fd, prog.fd, None),
              f"replacing the program of {self.description} with {prog.name}")

    def detach(self) -> None:
        """Detach now, whoever else holds the link, and close it."""
        if self.fd >= 0:
            check(lib().bpf_link_detach(self.fd), f"detaching {self.description}")
        self.close()

    def close(self) -> None:
        """Drop this handle; a pinned link stays attached."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _LinkCreateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


@dataclass
class ClsactFilter:
    """A direct-action tc filter on a clsact qdisc (for kernels without tcx)."""

    ifindex: int
    direction: Direction
    handle: int
    priority: int

    def _hook(self) -> TcHook:
        point = 1 if self.direction is Direction.INGRESS else 2  # BPF_TC_INGRESS / EGRESS
        return TcHook(sz=ctypes.sizeof(TcHook), ifindex=self.ifindex, attach_point=point)

    def detach(self) -> None:
        opts = TcOpts(sz=ctypes.sizeof(TcOpts), handle=self.handle, priority=self.priority)
        ret = lib().bpf_tc_detach(ctypes.byref(self._hook()), ctypes.byref(opts))
        if ret not in (0, -errno.ENOENT):
            check(ret, f"detaching tc filter from ifindex {self.ifindex}")


def attach_clsact(prog: Program, ifindex: int, direction: Direction, *, priority: int = 1,
                  handle: int = 1) -> ClsactFilter:
    tc_filter = ClsactFilter(ifindex, direction, handle, priority)
    hook = tc_filter._hook()
    ret = lib().bpf_tc_hook_create(ctypes.byref(hook))
    if ret not in (0, -errno.EEXIST):
        check(ret, f"creating clsact on ifindex {ifindex}")
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog.fd, handle=handle, priority=priority,
                  flags=1)  # BPF_TC_F_REPLACE
    check(lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
          f"attaching {prog.name} to tc {direction.value} of ifindex {ifindex}")
    return tc_filter


def _tcx_type_name(direction: Direction) -> str:
    return "BPF_TCX_INGRESS" if direction is Direction.INGRESS else "BPF_TCX_EGRESS"


def tcx_attach_type(direction: Direction) -> int:
    """The kernel's attach type number of a tcx hook, as `LinkState.attach_type` reports it."""
    return attach_type(_tcx_type_name(direction))


def attach_tcx(prog: Program, ifindex: int, direction: Direction) -> Link:
    return Link.create(prog, ifindex, _tcx_type_name(direction),
                       f"tcx {direction.value} of ifindex {ifindex}")


def tcx_program_ids(ifindex: int, direction: Direction, *, limit: int = 64) -> list[int]:
    """The ids of the programs attached to a device's tcx hook, in run order."""
    ids = (ctypes.c_uint32 * limit)()
    count = ctypes.c_uint32(limit)
    attach_flags = ctypes.c_uint32()
    check(lib().bpf_prog_query(ifindex, tcx_attach_type(direction), 0, ctypes.byref(attach_flags),
                               ids, ctypes.byref(count)),
          f"querying tcx {direction.value} of ifindex {ifindex}")
    return [int(ids[i]) for i in range(min(count.value, limit))]


def attach_tc(prog: Program, ifindex: int, direction: Direction) -> Link | ClsactFilter:
    """tcx where the kernel has it (a pinnable link), clsact otherwise."""
    if tcx_supported():
        return attach_tcx(prog, ifindex, direction)
    return attach_clsact(prog, ifindex, direction)


def attach_xdp(prog: Program, ifindex: int, mode: XdpMode = XdpMode.AUTO) -> Link:
    return Link.create(prog, ifindex, "BPF_XDP", f"xdp ({mode.name.lower()}) of ifindex {ifindex}",
                       flags=mode.value)


def is_cgroup_root(path: str) -> bool:
    return os.path.ismount(path) or not os.path.exists(os.path.join(path, "cgroup.type"))


def attach_cgroup(prog: Program, cgroup_path: str, *, allow_root: bool = False) -> Link:
    """Attach a cgroup socket program to a cgroup v2 directory.

    A cgroup root is refused unless `allow_root`: on a shared host the root cgroup holds
    every process, so only a deliberate node-wide install may use it.
    """
    type_name = CGROUP_ATTACH_TYPES.get(prog.section)
    if type_name is None:
        raise ValueError(f"program {prog.name} (section {prog.section}) is not a cgroup program")
    if not allow_root and is_cgroup_root(cgroup_path):
        raise PermissionError(f"refusing to attach {prog.name} to cgroup root {cgroup_path}")
    cgroup_fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return Link.create(prog, cgroup_fd, type_name, f"{prog.section} on cgroup {cgroup_path}")
    finally:
        os.close(cgroup_fd)
