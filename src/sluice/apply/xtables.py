"""Which iptables tools the iptables dataplane runs.

Debian and most distributions ship two implementations behind the same rule language:
`iptables-legacy` (the x_tables kernel API) and `iptables-nft` (rules translated to
nf_tables). `iptables` itself is whichever the host's alternatives point to. They are not
equally fast for what a kube-proxy-style ruleset needs: `iptables-nft-restore --noflush`
grows much faster than linearly with the number of chains (on the development VM 42,000
lines took 3.3 s, 168,000 lines 95 s, and 420,000 lines, 10,000 Services x 10 endpoints,
did not finish in 500 s), while `iptables-legacy-restore` wrote the 420,000 lines in
4.8 s.

One agent process programs one node, so the choice is made once, at start
(`sluice agent --iptables-backend`), and every writer and reader of Sluice's rules goes
through `tool`. Rules of one backend are invisible to the other's save tool: a node must
not switch backends without `sluice agent --uninstall` under the old one first.
"""

from __future__ import annotations

import enum
import shutil
from dataclasses import dataclass


class Backend(enum.StrEnum):
    SYSTEM = "system"  # `iptables`, whatever the host's alternatives choose
    LEGACY = "legacy"  # iptables-legacy: x_tables
    NFT = "nft"  # iptables-nft: nf_tables


@dataclass
class _Selection:
    backend: Backend = Backend.SYSTEM


_SELECTION = _Selection()


def use(backend: Backend) -> None:
    """Run BACKEND's tools from now on (the agent calls this once, before any rule)."""
    _SELECTION.backend = backend


def selected() -> Backend:
    return _SELECTION.backend


def command(backend: Backend, version: int, action: str = "") -> str:
    """BACKEND's command for VERSION (4 or 6) and ACTION ("save", "restore", or "" for the
    plain command): e.g. ip6tables-legacy-restore."""
    name = "iptables" if version == 4 else "ip6tables"
    if backend is not Backend.SYSTEM:
        name += f"-{backend.value}"
    return f"{name}-{action}" if action else name


def tool(version: int, action: str = "") -> str:
    """The command for VERSION and ACTION under the selected backend."""
    return command(selected(), version, action)


def installed(version: int) -> bool:
    """Whether the selected backend's save and restore tools for VERSION are installed."""
    return bool(shutil.which(tool(version, "save")) and shutil.which(tool(version, "restore")))
