"""The node-level devices Sluice owns (sl-host, sl-vxlan): create, verify, replace, remove.

A device that exists with the wrong kind or configuration is deleted and created again;
a device Sluice owns by name but the desired state no longer has is deleted. Devices of
any other name are never touched.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from sluice.apply.diff import Changes
from sluice.apply.errors import ApplyError
from sluice.apply.links import LinkFacts, read_links
from sluice.compile.devices import HOST_DEVICE, TUNNEL_DEVICE
from sluice.compile.kernelstate import Device, DeviceKind

OWNED_DEVICES = (HOST_DEVICE, TUNNEL_DEVICE)

# A DUMMY device: `dummy` where the kernel has it, else `ifb`, which behaves the same
# for this use (no peer, no ARP, drops whatever reaches its transmit path unredirected).
DUMMY_KINDS = ("dummy", "ifb")


def matches(have: LinkFacts, want: Device) -> bool:
    """Whether an existing device already is the desired one."""
    if want.kind is DeviceKind.DUMMY:
        return have.kind in DUMMY_KINDS
    if have.kind != "vxlan":
        return False
    info = have.info
    if info.get("IFLA_VXLAN_PORT") != want.port or info.get("IFLA_VXLAN_LEARNING", 1) != 0:
        return False
    metadata = bool(info.get("IFLA_VXLAN_COLLECT_METADATA", 0))
    if want.kind is DeviceKind.VXLAN_METADATA:
        return metadata
    local = info.get("IFLA_VXLAN_LOCAL") or info.get("IFLA_VXLAN_LOCAL6")
    return (not metadata and info.get("IFLA_VXLAN_ID") == want.vni
            and local is not None and want.local is not None
            and ipaddress.ip_address(local) == want.local
            and want.mac is not None and have.mac == want.mac.lower())


def _create(ipr: Any, device: Device) -> None:
    if device.kind is DeviceKind.DUMMY:
        try:
            ipr.link("add", ifname=device.name, kind="dummy")
        except NetlinkError as err:
            if err.code != errno.EOPNOTSUPP:
                raise
            ipr.link("add", ifname=device.name, kind="ifb")
    elif device.kind is DeviceKind.VXLAN_METADATA:
        ipr.link("add", ifname=device.name, kind="vxlan", vxlan_collect_metadata=1,
                 vxlan_port=device.port, vxlan_learning=0)
    else:
        if device.local is None or device.mac is None:
            raise ApplyError(f"VXLAN device {device.name} needs a local address and a MAC")
        local = ("vxlan_local6" if device.local.version == 6 else "vxlan_local")
        ipr.link("add", ifname=device.name, kind="vxlan", vxlan_id=device.vni,
                 vxlan_port=device.port, vxlan_learning=0, address=device.mac,
                 **{local: str(device.local)})


def sync_devices(ipr: Any, devices: tuple[Device, ...]) -> Changes:
    changes = Changes()
    links = read_links(ipr)
    wanted = {device.name: device for device in devices}
    for name in OWNED_DEVICES:
        if name in links and name not in wanted:
            ipr.link("del", index=links[name].index)
            changes.removed += 1
    for device in devices:
        have = links.get(device.name)
        if have is not None and matches(have, device):
            if have.up:
                changes.unchanged += 1
            else:
                ipr.link("set", index=have.index, state="up")
                changes.changed += 1
            continue
        try:
            if have is not None:
                ipr.link("del", index=have.index)
                changes.changed += 1
            else:
                changes.added += 1
            _create(ipr, device)
            ipr.link("set", index=ipr.link_lookup(ifname=device.name)[0], state="up")
        except NetlinkError as err:
            raise ApplyError(f"creating {device.kind.value} device {device.name}: {err}") \
                from err
    return changes


def remove_devices(ipr: Any) -> int:
    links = read_links(ipr)
    removed = 0
    for name in OWNED_DEVICES:
        if name in links:
            ipr.link("del", index=links[name].index)
            removed += 1
    return removed
