"""/state: the desired state of the last successful reconcile, as JSON."""

from __future__ import annotations

from typing import Any

from sluice.agent.config import AgentConfig
from sluice.agent.status import StatusView


def state_document(config: AgentConfig, view: StatusView) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node": config.node,
        "dataplane": config.dataplane.value,
        "routing": config.routing.value,
        "pinDir": config.pins if config.dataplane.value == "bpf" else None,
        "healthy": view.health.ok,
        "reason": view.health.reason,
        "reconciles": view.reconciles,
    }
    outcome = view.outcome
    if outcome is None:
        return doc
    desired = outcome.desired
    doc["revision"] = desired.revision
    doc["uplink"] = desired.uplink
    doc["problems"] = list(outcome.problems)
    doc["lastChanges"] = outcome.changes.summary()
    doc["endpoints"] = [
        {"key": e.key, "pod": e.pod, "addresses": [str(a) for a in e.addresses],
         "hostIfname": e.host_ifname, "hostIfindex": e.host_ifindex,
         "hostMac": e.host_mac, "podMac": e.pod_mac}
        for e in desired.endpoints.endpoints
    ]
    kernel = desired.kernel
    doc["kernel"] = {
        "devices": [{"name": d.name, "kind": d.kind.value, "mac": d.mac,
                     "local": str(d.local) if d.local else None} for d in kernel.devices],
        "routes": [{"dst": str(r.dst), "dev": r.dev,
                    "gateway": str(r.gateway) if r.gateway else None, "onlink": r.onlink}
                   for r in sorted(kernel.routes, key=lambda r: (r.dst.version, r.dst))],
        "neighbours": [{"ip": str(n.ip), "mac": n.mac, "dev": n.dev}
                       for n in sorted(kernel.neighbors, key=lambda n: (n.dev, str(n.ip)))],
        "fdb": [{"mac": f.mac, "dst": str(f.dst), "dev": f.dev}
                for f in sorted(kernel.forwarding, key=lambda f: (f.mac, str(f.dst)))],
    }
    if desired.bpf is not None:
        bpf = desired.bpf
        doc["bpf"] = {
            "endpoints": {str(ip): {"ifindex": s.host_ifindex, "ifname": s.host_ifname,
                                    "mac": s.pod_mac, "hostMac": s.host_mac}
                          for ip, s in sorted(bpf.endpoints.items(),
                                              key=lambda i: (i[0].version, i[0]))},
            "routes": {str(c): {"kind": s.kind.name.lower(),
                                "nextHop": str(s.next_hop) if s.next_hop else None}
                       for c, s in sorted(bpf.routes.items(), key=lambda i: (i[0].version, i[0]))},
            "links": [{"program": a.program, "device": a.ifname,
                       "hook": a.hook_name} for a in desired.attachments],
        }
    return doc
