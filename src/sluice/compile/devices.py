"""The node-level devices Sluice owns, by name, and how they are derived."""

from __future__ import annotations

import hashlib

TUNNEL_DEVICE = "sl-vxlan"  # the VXLAN device of the overlay
HOST_DEVICE = "sl-host"  # bpf mode: where the host's own packets to pod CIDRs are routed
TUNNEL_VNI = 1
# Service traffic another node forwards for an outside client: its replies go back there.
SERVICE_VNI = 2
TUNNEL_PORT = 4789


def tunnel_mac(node_name: str) -> str:
    """A stable, locally administered MAC for a node's VXLAN device, so peers can program
    neighbour and forwarding entries for it without asking the node."""
    digest = hashlib.sha256(node_name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))
