"""Per-namespace sysctls the node needs, written in this thread's network namespace.

The caller must have made sure which namespace that is (the agent verifies it at start).
"""

from __future__ import annotations

FORWARDING = ("net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding")


def _path(name: str) -> str:
    if not name.startswith("net."):
        raise ValueError(f"only per-namespace net.* sysctls are set here: {name}")
    return "/proc/sys/" + name.replace(".", "/")


def ensure_sysctl(name: str, value: str) -> bool:
    """Set NAME to VALUE unless it already is; True when it was written."""
    path = _path(name)
    with open(path, encoding="ascii") as current:
        if current.read().strip() == value:
            return False
    with open(path, "w", encoding="ascii") as sysctl:
        sysctl.write(value)
    return True


def ensure_forwarding() -> list[str]:
    """IPv4 and IPv6 forwarding on: the host stack forwards pod traffic in iptables mode,
    and bpf_fib_lookup (native routing) needs it in bpf mode. Returns what was changed."""
    return [name for name in FORWARDING if ensure_sysctl(name, "1")]
