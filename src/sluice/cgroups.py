"""cgroup v2: find (or privately mount) the unified hierarchy, make and remove subtrees."""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

PRIVATE_MOUNT = "/run/sluice/cgroup2"
CGROUP2_SUPER_MAGIC = 0x63677270

_libc = ctypes.CDLL(None, use_errno=True)


def find_cgroup2_mount() -> str | None:
    """The first cgroup2 mount point of this mount namespace, if any."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return fields[1].replace("\\040", " ")
    return None


def mount_private_cgroup2(path: str = PRIVATE_MOUNT) -> str:
    """Mount the unified hierarchy at PATH (for hosts that have only cgroup v1 mounted)."""
    os.makedirs(path, exist_ok=True)
    if not os.path.ismount(path) and _libc.mount(b"none", path.encode(), b"cgroup2", 0, None):
        err = ctypes.get_errno()
        raise OSError(err, f"mounting cgroup2 at {path}: {os.strerror(err)}")
    return path


def ensure_cgroup2() -> str:
    return find_cgroup2_mount() or mount_private_cgroup2()


def create(relative: str) -> str:
    """Create a cgroup below the unified root; returns its absolute path."""
    if not relative or relative.startswith("/") or ".." in Path(relative).parts:
        raise ValueError(f"cgroup path must be relative to the cgroup2 root: {relative!r}")
    path = os.path.join(ensure_cgroup2(), relative)
    os.makedirs(path, exist_ok=True)
    return path


def move_process(cgroup_path: str, pid: int) -> None:
    with open(os.path.join(cgroup_path, "cgroup.procs"), "w", encoding="ascii") as procs:
        procs.write(str(pid))


def remove_tree(cgroup_path: str) -> None:
    """Remove a cgroup and its children, moving any remaining processes to the parent."""
    if not os.path.isdir(cgroup_path):
        return
    for entry in os.scandir(cgroup_path):
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
    parent = os.path.dirname(cgroup_path)
    try:
        with open(os.path.join(cgroup_path, "cgroup.procs"), encoding="ascii") as procs:
            pids = [int(p) for p in procs.read().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                move_process(parent, pid)
    except FileNotFoundError:
        return
    os.rmdir(cgroup_path)
