"""Network namespaces: create, enter (this thread only) and remove them.

`ip netns exec` remounts /sys and hides bpffs pins, so Sluice never uses it; it switches
the calling thread with setns(2) instead and always switches back.
"""

from __future__ import annotations

import ctypes
import os
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


def create(name: str) -> str:
    _pyroute2_netns.create(name)
    return netns_path(name)


def remove(name: str) -> None:
    if os.path.exists(netns_path(name)):
        _pyroute2_netns.remove(name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))
