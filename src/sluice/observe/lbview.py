"""The load balancer as the datapath sees it: frontends, their backend slots and
backends, read from a node's pinned maps (no agent needed)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from sluice.datapath import lb
from sluice.loader.maps import Map
from sluice.model.addresses import IPAddress

PROTOCOL_NAMES = {number: name for name, number in lb.PROTOCOLS.items()}


@dataclass(frozen=True)
class BackendView:
    backend_id: int
    address: IPAddress | None  # None: the slot names an id lb_backends does not hold
    port: int


@dataclass(frozen=True)
class FrontendView:
    address: IPAddress
    port: int
    protocol: str
    service_id: int
    flags: lb.LbFlags
    affinity_timeout: int
    maglev_id: int
    maglev_slots: int  # slots of its Maglev table present in lb_maglev
    backends: tuple[BackendView, ...]
    missing_slots: tuple[int, ...]  # slots 1..count without an entry (should be none)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frontend": f"{_host(self.address)}:{self.port}/{self.protocol}",
            "serviceId": self.service_id,
            "flags": flag_names(self.flags),
            "affinityTimeout": self.affinity_timeout or None,
            "maglev": {"table": self.maglev_id, "slots": self.maglev_slots}
            if lb.LbFlags.MAGLEV in self.flags else None,
            "backends": [{"id": b.backend_id,
                          "address": None if b.address is None else str(b.address),
                          "port": b.port} for b in self.backends],
            "missingSlots": list(self.missing_slots),
        }


def flag_names(flags: lb.LbFlags) -> list[str]:
    return [(f.name or str(int(f))).lower() for f in lb.LbFlags if f in flags]


def _host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _open(pin_dir: str, name: str, key: type[Any], value: type[Any]) -> Map[Any, Any]:
    path = os.path.join(pin_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no pinned map {path}: is a bpf-mode agent running for "
                                "this node (see --pin-dir)?")
    return Map.from_pin(path, key, value)


def read_frontends(pin_dir: str) -> list[FrontendView]:
    services = _open(pin_dir, lb.SERVICES_MAP, lb.LbKey, lb.LbValue)
    backends = _open(pin_dir, lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend)
    maglev = _open(pin_dir, lb.MAGLEV_MAP, lb.LbMaglevKey, lb.MaglevSlot)
    try:
        entries = services.lookup_batch()
        by_id = {int(k.value): v for k, v in backends.lookup_batch()}
        tables: dict[int, int] = {}
        for key, _ in maglev.lookup_batch():
            tables[key.table] = tables.get(key.table, 0) + 1
    finally:
        services.close()
        backends.close()
        maglev.close()
    slots = {(bytes(k.addr), k.port, k.proto, k.slot): v for k, v in entries}
    views = []
    for key, value in entries:
        if key.slot != 0:
            continue
        found, missing = [], []
        for slot in range(1, value.count + 1):
            entry = slots.get((bytes(key.addr), key.port, key.proto, slot))
            if entry is None:
                missing.append(slot)
                continue
            backend = by_id.get(entry.backend_id)
            found.append(BackendView(entry.backend_id,
                                     backend.addr.to_ip() if backend else None,
                                     socket.ntohs(backend.port) if backend else 0))
        views.append(FrontendView(
            key.addr.to_ip(), socket.ntohs(key.port), PROTOCOL_NAMES.get(key.proto, str(key.proto)),
            value.service_id, lb.LbFlags(value.flags), value.affinity_timeout, value.maglev_id,
            tables.get(value.maglev_id, 0), tuple(found), tuple(missing)))
    views.sort(key=lambda v: (v.address.version, int(v.address), v.port, v.protocol))
    return views


def render_table(views: list[FrontendView]) -> str:
    if not views:
        return "no frontends"
    lines = [f"{'FRONTEND':<30} {'FLAGS':<22} BACKENDS"]
    for view in views:
        flags = ",".join(flag_names(view.flags)) or "-"
        if lb.LbFlags.MAGLEV in view.flags:
            flags += f" ({view.maglev_slots} slots)"
        backends = ", ".join(
            f"#{b.backend_id} {'?' if b.address is None else _host(b.address)}:{b.port}"
            for b in view.backends) or "none: new flows are refused"
        if view.missing_slots:
            backends += f"  [missing slots {list(view.missing_slots)}]"
        frontend = f"{_host(view.address)}:{view.port}/{view.protocol}"
        lines.append(f"{frontend:<30} {flags:<22} {backends}")
    return "\n".join(lines)
