"""Network namespaces: create, enter (this thread only) and remove them.

`ip netns exec` remounts /sys and hides bpffs pins, so Sluice never uses it; it switches
the calling thread with setns(2) instead and always switches back.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as _pyroute2_netns

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


@contextmanager
def entered(name_or_path: str) -> Iterator[None]:
    """Run the body with this thread in the given network namespace.

    Sockets and netlink handles created inside stay bound to that namespace after exit.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(name_or_path), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def is_current(name_or_path: str) -> bool:
    """Whether the calling thread is in the given network namespace."""
    return _identity("/proc/thread-self/ns/net") == _identity(netns_path(name_or_path))


def in_initial_namespace() -> bool | None:
    """Whether the calling thread shares the network namespace of PID 1 (the machine's
    own); None when that cannot be told (PID 1's namespace is not visible from here)."""
    try:
        init = _identity("/proc/1/ns/net")
    except OSError:
        return None
    return _identity("/proc/thread-self/ns/net") == init


def enter_for_process(name_or_path: str) -> None:
    """Move this whole process into the namespace, for good (a node agent's start-up).

    setns(2) switches only the calling thread, and threads inherit the namespace of the
    thread that starts them; so this must run while the process has a single thread, and
    every thread started afterwards lives in the namespace. Verified afterwards: raises
    RuntimeError when the process is not in the namespace, OSError when it does not exist.
    """
    path = netns_path(name_or_path)
    threads = len(os.listdir("/proc/self/task"))
    if threading.active_count() != 1 or threads != 1:
        raise RuntimeError(f"cannot move a process with {threads} threads into {path}: "
                           "enter the namespace before starting any thread")
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
    finally:
        os.close(target)
    if not is_current(path) or _identity("/proc/self/ns/net") != _identity(path):
        raise RuntimeError(f"setns into {path} did not take effect")


def create(name: str) -> str:
    _pyroute2_netns.create(name)
    return netns_path(name)


def remove(name: str) -> None:
    if os.path.exists(netns_path(name)):
        _pyroute2_netns.remove(name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))
