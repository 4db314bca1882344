"""`sluice bpf masq`: the masquerade mappings of a node, read from its pinned map."""

from __future__ import annotations

import os
import time
from typing import Any

from sluice.datapath import masq
from sluice.datapath.lb import PROTOCOLS
from sluice.loader.maps import Map
from sluice.observe.ctview import table

PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()} | {1: "ICMP", 58: "ICMPV6"}


def read_mappings(pin_dir: str) -> list[dict[str, Any]]:
    """Each flow masquerade translates (its outbound entry), oldest activity last; flows an
    outside peer opened toward a pod are marked inbound (left untranslated)."""
    opened: Map[masq.MasqKey, masq.MasqEntry] = Map.from_pin(
        os.path.join(pin_dir, masq.MAPPINGS_MAP), masq.MasqKey, masq.MasqEntry)
    try:
        entries = opened.lookup_batch()
    finally:
        opened.close()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    rows = []
    for key, entry in entries:
        mapping = masq.Mapping.decode(key, entry)
        if mapping.direction is not masq.MasqDir.OUT:
            continue
        rows.append({"protocol": PROTOCOL_NAMES.get(mapping.proto, str(mapping.proto)),
                     "pod": str(mapping.addr), "podPort": mapping.port,
                     "peer": str(mapping.peer), "peerPort": mapping.peer_port,
                     "node": None if mapping.inbound else str(mapping.to_addr),
                     "nodePort": None if mapping.inbound else mapping.to_port,
                     "inbound": mapping.inbound, "packets": mapping.packets,
                     "idleSeconds": max(0.0, (now - mapping.last_seen_ns) / 1e9)})
    return sorted(rows, key=lambda r: r["idleSeconds"])


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def render_mappings(rows: list[dict[str, Any]]) -> str:
    lines = [(_endpoint(r["pod"], r["podPort"]), _endpoint(r["peer"], r["peerPort"]),
              r["protocol"],
              "inbound" if r["inbound"] else _endpoint(r["node"], r["nodePort"]),
              str(r["packets"]), f"{r['idleSeconds']:.0f}s") for r in rows]
    return table(("POD", "PEER", "PROTO", "AS", "PACKETS", "IDLE"), lines,
                 f"{len(lines)} masqueraded flows")
