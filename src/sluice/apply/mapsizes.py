"""`--map-size NAME=ENTRIES[,...]`: how many entries the maps that grow with the cluster
hold. Set on the BPF objects before they are loaded (`BpfObject.resize_maps`); the
defaults are what the C sources declare (see the README's table). A pinned map keeps the
size it was created with: a new size applies once the map is created anew (uninstall).
"""

from __future__ import annotations

from enum import Enum

PAGE_SIZE = 4096


class SizeRule(Enum):
    ENTRIES = "a positive number of entries"
    RING = "a power of two of at least 4096 (bytes of ring buffer)"


# The maps whose size is the cluster's business. Arrays indexed by a fixed set (config,
# counters by reason, scratch) are not: their size is part of their layout.
RESIZABLE: dict[str, SizeRule] = {
    name: SizeRule.ENTRIES for name in (
        "conntrack", "endpoints", "routes", "ipcache", "policy", "policy_flows",
        "lb_services", "lb_backends", "lb_maglev", "lb_source_ranges", "lb_affinity",
        "lb_selections", "lb_sock_rev", "masq_mappings", "masq_nonmasq", "prefilter_cidrs",
        "failsafe_ports", "host_interfaces")
} | {"flow_events": SizeRule.RING, "policy_events": SizeRule.RING}

MAX_ENTRIES = 1 << 28  # far beyond any sane node; catches a typo before the kernel's ENOMEM


def check_map_size(name: str, entries: int, option: str = "--map-size") -> int:
    """ENTRIES if map NAME can be given that many; ValueError naming the problem."""
    rule = RESIZABLE.get(name)
    if rule is None:
        raise ValueError(f"{option}: there is no resizable map {name!r}; the resizable maps "
                         f"are {', '.join(sorted(RESIZABLE))}")
    if entries <= 0 or entries > MAX_ENTRIES:
        raise ValueError(f"{option} {name}={entries}: must be {rule.value} (at most "
                         f"{MAX_ENTRIES})")
    if rule is SizeRule.RING and (entries < PAGE_SIZE or entries & (entries - 1)):
        raise ValueError(f"{option} {name}={entries}: a ring buffer's size must be "
                         f"{rule.value}, e.g. {1 << max(12, entries.bit_length())}")
    return entries


def parse_map_sizes(text: str, option: str = "--map-size") -> dict[str, int]:
    """`NAME=ENTRIES[,NAME=ENTRIES...]` -> {name: entries}, each checked; ValueError."""
    sizes: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip().isdigit():
            raise ValueError(f"{option} {item!r}: expected NAME=ENTRIES, e.g. "
                             "lb_services=524288")
        if name in sizes:
            raise ValueError(f"{option}: map {name} is given twice")
        sizes[name] = check_map_size(name, int(value), option)
    return sizes
