"""iptables mode: accept overlay frames from bpf-mode peers (mixed clusters).

A bpf-mode node encapsulates a pod's packet as the pod sent it: the inner Ethernet
destination is that pod's gateway (its host veth's MAC on the sending node), not this
node's `sl-vxlan` MAC, which iptables-mode peers address (compile/devices.tunnel_mac).
The kernel would take such a frame for another host and drop it before routing. An
nftables netdev chain on the tunnel's ingress marks every frame as addressed to this
host; this kernel has neither tc's skbedit nor pedit, and nftables is what iptables
mode already uses. The table is Sluice's own (`netdev sluice-tunnel`), replaced whole,
and removed in bpf mode, whose programs deliver by address and ignore the MAC.
"""

from __future__ import annotations

from sluice.apply.errors import ApplyError
from sluice.apply.servicerules import run_tool
from sluice.compile.devices import TUNNEL_DEVICE

TABLE = "sluice-tunnel"


def ruleset(device: str = TUNNEL_DEVICE) -> str:
    return (f"table netdev {TABLE}\n"
            f"delete table netdev {TABLE}\n"
            f"table netdev {TABLE} {{\n"
            f"  chain rx {{\n"
            f"    type filter hook ingress device \"{device}\" priority 0; policy accept;\n"
            f"    meta pkttype set host\n"
            f"  }}\n"
            f"}}\n")


def install_tunnel_rx(device: str = TUNNEL_DEVICE) -> None:
    """(Re)bind the chain to DEVICE: after the device was made again, say."""
    proc = run_tool(["nft", "-f", "-"], ruleset(device))
    if proc.returncode != 0:
        raise ApplyError(f"nft: installing table netdev {TABLE} on {device}: "
                         f"{proc.stderr.strip()}")


def remove_tunnel_rx() -> bool:
    """Remove the table if it exists; True if it did."""
    if run_tool(["nft", "list", "table", "netdev", TABLE]).returncode != 0:
        return False
    proc = run_tool(["nft", "delete", "table", "netdev", TABLE])
    if proc.returncode != 0:
        raise ApplyError(f"nft: removing table netdev {TABLE}: {proc.stderr.strip()}")
    return True
