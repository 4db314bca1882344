"""bpffs: find or mount the BPF filesystem where maps and links are pinned."""

from __future__ import annotations

import ctypes
import os

DEFAULT_PATH = "/sys/fs/bpf"

_libc = ctypes.CDLL(None, use_errno=True)


def is_mounted(path: str = DEFAULT_PATH) -> bool:
    """Whether a bpf filesystem is mounted exactly at PATH in this mount namespace."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if (len(fields) >= 3 and fields[2] == "bpf"
                    and fields[1].replace("\\040", " ") == target):
                return True
    return False


def ensure_bpffs(path: str = DEFAULT_PATH) -> str:
    """Mount bpffs at PATH unless it already is (`mount -t bpf bpf PATH`); returns PATH."""
    if is_mounted(path):
        return path
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"bpf", path.encode(), b"bpf", 0, None):
        err = ctypes.get_errno()
        raise OSError(err, f"mounting bpffs at {path}: {os.strerror(err)}")
    return path
