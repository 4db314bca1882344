"""Routes, endpoints and counters of a node, read from its pinned maps and decoded."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any, TypeVar

from sluice.datapath import endpoints as ep
from sluice.datapath import events as ev
from sluice.datapath import policy as pol
from sluice.datapath import prefilter as pf
from sluice.datapath import routing
from sluice.loader.maps import Map
from sluice.observe.ctview import table
from sluice.observe.datapathstats import percpu_totals, read_event_outcomes, read_packets

T = TypeVar("T")


def _with_map(pin_dir: str, name: str, key: type[Any], value: type[Any],
              read: Callable[[Map[Any, Any]], T]) -> T:
    opened: Map[Any, Any] = Map.from_pin(os.path.join(pin_dir, name), key, value)
    try:
        return read(opened)
    finally:
        opened.close()


def read_routes(pin_dir: str) -> list[dict[str, Any]]:
    """Every route of the node's LPM table with its hit counter, most specific first."""
    entries = _with_map(pin_dir, routing.MAP_NAME, routing.RouteKey, routing.RouteEntry,
                        lambda m: m.lookup_batch())
    rows = []
    for key, entry in entries:
        kind = routing.RouteKind(entry.kind) if entry.kind in routing.RouteKind._value2member_map_ \
            else None
        rows.append({"cidr": str(key.network()),
                     "kind": kind.name.lower().replace("_", "-") if kind else str(entry.kind),
                     "ifindex": int(entry.ifindex),
                     "nextHop": str(entry.next_hop.to_ip())
                     if kind is not routing.RouteKind.LOCAL_PODS else None,
                     "hits": int(entry.hits)})
    return sorted(rows, key=lambda r: (-int(r["cidr"].rsplit("/", 1)[1]), r["cidr"]))


def render_routes(rows: list[dict[str, Any]]) -> str:
    lines = [(r["cidr"], r["kind"], str(r["ifindex"] or "-"), r["nextHop"] or "-",
              str(r["hits"])) for r in rows]
    return table(("CIDR", "KIND", "IFINDEX", "NEXT HOP", "HITS"), lines, f"{len(rows)} routes")


def read_endpoints(pin_dir: str) -> list[dict[str, Any]]:
    entries = _with_map(pin_dir, ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo,
                        lambda m: m.lookup_batch())
    rows = [{"address": str(key.to_ip()), "ifindex": int(info.ifindex),
             "flags": [f.name.lower() for f in ep.EndpointFlags if f.name and info.flags & f],
             "identity": int(info.identity), "mac": ep.mac_text(info.mac),
             "hostMac": ep.mac_text(info.host_mac)} for key, info in entries]
    return sorted(rows, key=lambda r: (":" in r["address"], r["address"]))


def render_endpoints(rows: list[dict[str, Any]]) -> str:
    lines = [(r["address"], str(r["ifindex"]), str(r["identity"]), r["mac"], r["hostMac"],
              ",".join(r["flags"]) or "-") for r in rows]
    return table(("ADDRESS", "IFINDEX", "IDENTITY", "MAC", "HOST MAC", "FLAGS"), lines,
                 f"{len(rows)} endpoints")


def read_counters(pin_dir: str) -> dict[str, Any]:
    """Packets by hook and drop reason, flow event outcomes, policy verdict counters (all
    summed over CPUs), deny-list entries and route hits."""
    def policy_counters(m: Map[Any, Any]) -> dict[str, dict[str, int]]:
        totals = {int.from_bytes(k, "little"): v for k, v in percpu_totals(m).items()}
        return {reason.name.lower(): dict(zip(("packets", "bytes"),
                                              totals.get(int(reason), (0, 0)), strict=True))
                for reason in pol.CounterReason}

    doc: dict[str, Any] = {
        "policy": _with_map(pin_dir, pol.COUNTERS_MAP, pol.StateIndex, pol.PolicyCounter,
                            policy_counters)}
    if os.path.exists(os.path.join(pin_dir, ev.COUNTERS_MAP)):
        doc["datapath"] = [{"hook": c.hook, "direction": c.direction, "reason": c.reason,
                            "packets": c.packets, "bytes": c.bytes}
                           for c in _with_map(pin_dir, ev.COUNTERS_MAP, ctypes.c_uint32,
                                              ev.DatapathCounter, read_packets)]
        doc["flowEvents"] = dict(_with_map(pin_dir, ev.STATS_MAP, ctypes.c_uint32,
                                           ctypes.c_uint64, read_event_outcomes))
    prefilter_path = os.path.join(pin_dir, pf.MAP_NAME)
    if os.path.exists(prefilter_path):
        entries = _with_map(pin_dir, pf.MAP_NAME, pf.PrefilterKey, pf.PrefilterEntry,
                            lambda m: m.lookup_batch())
        doc["prefilter"] = [{"cidr": str(k.network()),
                             "action": pf.PrefilterAction(v.action).name.lower(),
                             "packets": int(v.packets), "bytes": int(v.bytes)}
                            for k, v in entries]
    doc["routeHits"] = sum(r["hits"] for r in read_routes(pin_dir))
    return doc


def render_counters(doc: dict[str, Any]) -> str:
    lines = [(f"{c['hook']} {'forwarded' if c['reason'] == 'none' else c['reason']}",
              str(c["packets"]), str(c["bytes"])) for c in doc.get("datapath", [])]
    lines += [(f"flow events {outcome}", str(count), "-")
              for outcome, count in doc.get("flowEvents", {}).items()]
    lines += [(f"policy {reason}", str(c["packets"]), str(c["bytes"]))
              for reason, c in doc["policy"].items()]
    lines += [(f"prefilter {p['action']} {p['cidr']}", str(p["packets"]), str(p["bytes"]))
              for p in doc.get("prefilter", [])]
    lines.append(("route hits", str(doc["routeHits"]), "-"))
    return table(("COUNTER", "PACKETS", "BYTES"), lines, "")
