"""The service conntrack table as the datapath holds it, decoded: one row per entry
(a NATed flow has two: its forward leg and its reply leg), with filters and flush."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sluice.datapath import conntrack as ct
from sluice.datapath.lb import PROTOCOLS
from sluice.loader.maps import Map
from sluice.model.addresses import IPAddress

PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
KIND_NAMES = {ct.CtKind.DNAT: "dnat", ct.CtKind.REPLY_SNAT: "reply-snat",
              ct.CtKind.RETURN_TUNNEL: "return-tunnel"}


@dataclass(frozen=True)
class CtRow:
    source: IPAddress
    source_port: int
    destination: IPAddress
    destination_port: int
    protocol: str
    kind: str
    flags: tuple[str, ...]
    nat_address: IPAddress
    nat_port: int
    backend_id: int
    packets: int
    idle_seconds: float
    tunnel_peer: IPAddress | None
    key: ct.CtKey

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "source": endpoint(self.source, self.source_port),
            "destination": endpoint(self.destination, self.destination_port),
            "protocol": self.protocol, "kind": self.kind, "flags": list(self.flags),
            "packets": self.packets, "idleSeconds": round(self.idle_seconds, 1)}
        if self.kind == "return-tunnel":
            doc["tunnelPeer"] = str(self.tunnel_peer)
        else:
            doc["nat"] = endpoint(self.nat_address, self.nat_port)
            doc["backendId"] = self.backend_id
        return doc


@dataclass(frozen=True)
class CtFilter:
    """Rows to keep: every given field must match (address/CIDR on either side)."""

    address: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None
    protocol: str | None = None
    kind: str | None = None

    def matches(self, row: CtRow) -> bool:
        if self.address is not None and not any(
                a.version == self.address.version and a in self.address
                for a in (row.source, row.destination, row.nat_address)):
            return False
        if self.port is not None and self.port not in (row.source_port, row.destination_port,
                                                       row.nat_port):
            return False
        if self.protocol is not None and row.protocol != self.protocol:
            return False
        return self.kind is None or row.kind == self.kind


def endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _row(key: ct.CtKey, entry: ct.CtEntry, now_ns: int) -> CtRow:
    nat_address, nat_port = entry.nat
    kind = ct.CtKind(entry.kind) if entry.kind in ct.CtKind._value2member_map_ else None
    flags = tuple(flag.name.lower() for flag in ct.CtFlags
                  if flag.name and entry.flags & flag)
    return CtRow(
        source=key.src.to_ip(), source_port=socket.ntohs(key.sport),
        destination=key.dst.to_ip(), destination_port=socket.ntohs(key.dport),
        protocol=PROTOCOL_NAMES.get(key.proto, str(key.proto)),
        kind=KIND_NAMES[kind] if kind else f"unknown({entry.kind})", flags=flags,
        nat_address=nat_address, nat_port=nat_port, backend_id=int(entry.backend_id),
        packets=int(entry.packets), idle_seconds=max(0, now_ns - entry.last_seen_ns) / 1e9,
        tunnel_peer=entry.peer.to_ip() if kind == ct.CtKind.RETURN_TUNNEL else None, key=key)


def _open(pin_dir: str) -> Map[ct.CtKey, ct.CtEntry]:
    return Map.from_pin(os.path.join(pin_dir, ct.MAP_NAME), ct.CtKey, ct.CtEntry)


def read_conntrack(pin_dir: str, wanted: CtFilter = CtFilter()) -> list[CtRow]:
    """The entries of the node's conntrack map that WANTED keeps, oldest activity last."""
    table = _open(pin_dir)
    try:
        entries = table.lookup_batch()
    finally:
        table.close()
    now = time.monotonic_ns()  # the clock bpf_ktime_get_ns reads
    rows = [r for r in (_row(k, v, now) for k, v in entries) if wanted.matches(r)]
    return sorted(rows, key=lambda r: (r.idle_seconds, str(r.source), r.source_port))


def flush_conntrack(pin_dir: str, wanted: CtFilter = CtFilter()) -> int:
    """Delete the entries WANTED keeps; returns how many were deleted. Flows whose
    entries go are classified as new on their next packet."""
    rows = read_conntrack(pin_dir, wanted)
    table = _open(pin_dir)
    try:
        return table.delete_batch([row.key for row in rows])
    finally:
        table.close()


def render_conntrack(rows: list[CtRow]) -> str:
    header = ("SOURCE", "DESTINATION", "PROTO", "KIND", "NAT / PEER", "BACKEND", "PACKETS",
              "IDLE", "FLAGS")
    lines = [(endpoint(r.source, r.source_port), endpoint(r.destination, r.destination_port),
              r.protocol, r.kind,
              str(r.tunnel_peer) if r.tunnel_peer else endpoint(r.nat_address, r.nat_port),
              str(r.backend_id) if r.backend_id else "-", str(r.packets),
              f"{r.idle_seconds:.0f}s", ",".join(r.flags) or "-") for r in rows]
    return table(header, lines, f"{len(rows)} entries")


def render_nat(rows: list[CtRow]) -> str:
    """The translations: each forward leg as client -> frontend => backend."""
    header = ("CLIENT", "FRONTEND", "PROTO", "BACKEND", "BACKEND ID", "PACKETS", "IDLE")
    lines = [(endpoint(r.source, r.source_port), endpoint(r.destination, r.destination_port),
              r.protocol, endpoint(r.nat_address, r.nat_port), str(r.backend_id),
              str(r.packets), f"{r.idle_seconds:.0f}s") for r in rows if r.kind == "dnat"]
    return table(header, lines, f"{len(lines)} translations")


def table(header: tuple[str, ...], lines: Sequence[tuple[str, ...]], footer: str) -> str:
    """Columns padded to their widest cell, and a footer line."""
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
           for row in [header, *lines]]
    return "\n".join([*out, footer])
