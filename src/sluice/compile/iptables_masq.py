"""iptables mode: masquerade as ip-masq-agent programs it, for iptables-restore.

    POSTROUTING   -> SLUICE-MASQ
    SLUICE-MASQ   -d NON-MASQ-CIDR -j RETURN, one per CIDR of the family
                  -s POD-CIDR -j MASQUERADE --random-fully, one per local pod CIDR

Conntrack applies the translation to the whole flow and to its replies, and picks ports
that do not collide with the host's own connections (it tracks those too). A flow an
outside peer opened toward a pod is not masqueraded: its first packet came from outside.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.compile.masquerade import MasqueradeState

MASQ_CHAIN = "SLUICE-MASQ"
JUMP_SPEC = f'-m comment --comment "sluice masquerade" -j {MASQ_CHAIN}'


@dataclass(frozen=True)
class MasqRules:
    """iptables-restore input (nat table) for one address family; empty: no rules."""

    version: int
    text: str
    rules: tuple[str, ...]  # the chain's rules, as iptables-save prints them


def masq_rules(state: MasqueradeState, version: int) -> MasqRules:
    sources = [c for c in state.pod_cidrs if c.version == version]
    if not state.enabled or not sources:
        return MasqRules(version, "", ())
    rules = (*(f"-A {MASQ_CHAIN} -d {cidr} -j RETURN" for cidr in state.nonmasq_of(version)),
             *(f"-A {MASQ_CHAIN} -s {cidr} -j MASQUERADE --random-fully" for cidr in sources))
    text = "\n".join(["*nat", f":{MASQ_CHAIN} - [0:0]", *rules, "COMMIT", ""])
    return MasqRules(version, text, rules)
