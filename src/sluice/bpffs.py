"""bpffs: find or mount the BPF filesystem where maps and links are pinned."""

from __future__ import annotations

import ctypes
import os

DEFAULT_PATH = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
_STATFS_SIZE = 120  # struct statfs on 64-bit Linux; f_type is its first member

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


def is_bpffs(path: str) -> bool:
    """Whether PATH (which must exist) lies on a bpf filesystem."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.statfs(path.encode(), buf):
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC
