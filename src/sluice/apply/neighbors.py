"""Permanent neighbour entries and VXLAN forwarding database entries.

Neighbours are changed only on devices Sluice owns or wires (the tunnel device and the
pods' host veths), and only PERMANENT ones: the kernel's own resolved entries are left to
the kernel. Forwarding entries are changed only on the tunnel device.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Collection, Mapping
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from sluice.apply.diff import Changes
from sluice.compile.kernelstate import ForwardingEntry, Neighbor
from sluice.model.addresses import IPAddress

NUD_PERMANENT = 0x80
AF_BRIDGE = 7

_NeighborKey = tuple[str, IPAddress]  # (device, address)


def read_permanent_neighbors(ipr: Any, devices: Mapping[str, int]) -> dict[_NeighborKey, str]:
    names = {index: name for name, index in devices.items()}
    found: dict[_NeighborKey, str] = {}
    for msg in ipr.get_neighbours():
        if msg["family"] not in (socket.AF_INET, socket.AF_INET6):
            continue
        name = names.get(int(msg["ifindex"]))
        dst = msg.get_attr("NDA_DST")
        if name is None or not dst or not msg["state"] & NUD_PERMANENT:
            continue
        found[(name, ipaddress.ip_address(dst))] = str(msg.get_attr("NDA_LLADDR") or "").lower()
    return found


def sync_neighbors(ipr: Any, desired: frozenset[Neighbor], owned_devices: Collection[str],
                   ifindexes: Mapping[str, int], problems: list[str]) -> Changes:
    """Make the PERMANENT neighbours on OWNED_DEVICES exactly DESIRED; an entry the kernel
    refuses, or one for a device that does not exist, is added to PROBLEMS."""
    changes = Changes()
    devices = {name: ifindexes[name] for name in owned_devices if name in ifindexes}
    actual = read_permanent_neighbors(ipr, devices)
    wanted = {(n.dev, n.ip): n.mac.lower() for n in desired if n.dev in devices}
    problems.extend(f"neighbour {n.ip} on {n.dev}: no such device (or not Sluice's)"
                    for n in sorted(desired, key=lambda n: (n.dev, str(n.ip)))
                    if n.dev not in devices)
    for (dev, ip), mac in actual.items():
        if (dev, ip) not in wanted:
            _ignore_gone(lambda d=dev, a=ip, m=mac: ipr.neigh(
                "del", dst=str(a), lladdr=m, ifindex=devices[d],
                family=socket.AF_INET if a.version == 4 else socket.AF_INET6))
            changes.removed += 1
    for (dev, ip), mac in wanted.items():
        have = actual.get((dev, ip))
        if have == mac:
            changes.unchanged += 1
            continue
        try:
            ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=devices[dev],
                      state=NUD_PERMANENT,
                      family=socket.AF_INET if ip.version == 4 else socket.AF_INET6)
        except NetlinkError as err:
            problems.append(f"neighbour {ip} on {dev}: {err}")
            continue
        if have is None:
            changes.added += 1
        else:
            changes.changed += 1
    return changes


def read_forwarding(ipr: Any, ifindex: int) -> set[tuple[str, IPAddress]]:
    entries: set[tuple[str, IPAddress]] = set()
    for msg in ipr.fdb("dump"):
        if int(msg["ifindex"]) != ifindex:
            continue
        dst = msg.get_attr("NDA_DST")
        mac = msg.get_attr("NDA_LLADDR")
        if dst and mac:
            entries.add((str(mac).lower(), ipaddress.ip_address(dst)))
    return entries


def sync_forwarding(ipr: Any, desired: frozenset[ForwardingEntry], device: str,
                    ifindexes: Mapping[str, int], problems: list[str]) -> Changes:
    """Make the forwarding entries of DEVICE (a VXLAN device Sluice owns) exactly DESIRED;
    an entry the kernel refuses is added to PROBLEMS."""
    changes = Changes()
    ifindex = ifindexes.get(device)
    if ifindex is None:
        if desired:
            problems.append(f"forwarding entries for {device}: no such device")
        return changes
    actual = read_forwarding(ipr, ifindex)
    wanted = {(e.mac.lower(), e.dst) for e in desired if e.dev == device}
    for mac, dst in sorted(actual - wanted, key=str):
        _ignore_gone(lambda m=mac, d=dst: ipr.fdb("del", ifindex=ifindex, lladdr=m, dst=str(d)))
        changes.removed += 1
    for mac, dst in sorted(wanted - actual, key=str):
        try:
            ipr.fdb("append", ifindex=ifindex, lladdr=mac, dst=str(dst))
        except NetlinkError as err:
            problems.append(f"forwarding entry {mac} -> {dst} on {device}: {err}")
            continue
        changes.added += 1
    changes.unchanged = len(wanted & actual)
    return changes


def _ignore_gone(step: Any) -> None:
    try:
        step()
    except NetlinkError as err:
        if err.code not in (errno.ENOENT, errno.ESRCH):
            raise
