"""iptables mode: the SLUICE-MASQ chain of `sluice.compile.iptables_masq` in this thread's
network namespace, and its one jump from nat POSTROUTING; removed when masquerade is off
or the node runs bpf mode (the datapath masquerades then).

Per family, one `iptables-restore --noflush` declares (flushes) and fills the chain and
fixes the jump; nothing is written when the chain and the jump already read back as
wanted. Other owners' rules are never touched.
"""

from __future__ import annotations

from sluice.apply.diff import Changes
from sluice.apply.errors import ApplyError
from sluice.apply.servicerules import (
    FAMILIES,
    TableDump,
    family_supported,
    read_table,
    restore,
)
from sluice.compile.iptables_masq import JUMP_SPEC, MASQ_CHAIN, MasqRules, masq_rules
from sluice.compile.masquerade import MasqueradeState

JUMP_RULE = f"-A POSTROUTING {JUMP_SPEC}"


def _live(version: int) -> TableDump | None:
    """The nat table, or None when this namespace cannot give it (no ip6table_nat)."""
    try:
        return read_table(version, "nat")
    except ApplyError:
        return None


def _removal(dump: TableDump) -> list[str]:
    commands = ["-D" + rule.removeprefix("-A") for rule in dump.jumps_to("POSTROUTING",
                                                                         MASQ_CHAIN)]
    if MASQ_CHAIN in dump.chains:
        commands += [f":{MASQ_CHAIN} - [0:0]", f"-X {MASQ_CHAIN}"]
    return commands


def sync_family(wanted: MasqRules) -> Changes:
    dump = _live(wanted.version)
    if dump is None:
        return Changes()
    have = dump.rules.get(MASQ_CHAIN) if MASQ_CHAIN in dump.chains else None
    jumps = dump.jumps_to("POSTROUTING", MASQ_CHAIN)
    if not wanted.text:
        commands = _removal(dump)
        if not commands:
            return Changes()
        restore(wanted.version, "\n".join(["*nat", *commands, "COMMIT", ""]))
        return Changes(removed=1)
    if have == wanted.rules and jumps == [JUMP_RULE]:
        return Changes(unchanged=1)
    body = wanted.text.splitlines()[:-1]  # without COMMIT
    fixes = [] if jumps == [JUMP_RULE] else [
        *("-D" + rule.removeprefix("-A") for rule in jumps), f"-I POSTROUTING 1 {JUMP_SPEC}"]
    restore(wanted.version, "\n".join([*body, *fixes, "COMMIT", ""]))
    return Changes(added=1) if have is None else Changes(changed=1)


def sync_masq_rules(state: MasqueradeState) -> Changes:
    """Make this namespace's nat tables masquerade as STATE says, IPv4 and IPv6."""
    total = Changes()
    for version in FAMILIES:
        if family_supported(version):
            total.add(sync_family(masq_rules(state, version)))
    return total


def remove_masq_rules() -> int:
    """Remove SLUICE-MASQ and its jump, both families; returns how many were there."""
    removed = 0
    for version in FAMILIES:
        if not family_supported(version):
            continue
        dump = _live(version)
        commands = _removal(dump) if dump is not None else []
        if commands:
            restore(version, "\n".join(["*nat", *commands, "COMMIT", ""]))
            removed += 1
    return removed
