"""iptables mode: program network policy from the sets and chains that
`sluice.compile.iptables_policy` generates, in this thread's network namespace.

One sync, in this order, so that no rule ever names a set that is missing or half filled:

1. ipsets (`ipset restore`): a new set is created with its members; a set whose members
   differ gets them by swap (a fresh temporary set is filled, swapped in and destroyed),
   so it is never empty mid-update.
2. Per family, one `iptables-restore --noflush` over the raw, mangle and filter tables:
   every wanted policy chain is declared (flushed) and rewritten, policy chains no longer
   wanted are flushed and deleted, and each built-in chain has exactly one jump to its
   dispatch chain (inserted at the top) while that dispatch chain exists, none otherwise.
   Skipped when the generated text equals the last applied one and the live chains still
   read back as they did after it (as `servicerules` does).
3. Sets no rule uses any more are destroyed.
4. Flows are cut: for every enforced endpoint whose chains, dispatch rules or set members
   read back differently than before, its conntrack entries are deleted, so established
   flows are judged again on their next packet (`nf_conntrack_tcp_loose` picks them up as
   new). A restarted agent compares what the kernel holds, so it cuts nothing needlessly.

Rules and sets of other owners, service chains included, are never touched.
"""

from __future__ import annotations

import errno
import re
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from pyroute2 import Conntrack
from pyroute2.conntrack import ConntrackEntry
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from sluice.apply import xtables
from sluice.apply.diff import Changes
from sluice.apply.errors import ApplyError
from sluice.apply.restored import AppliedTexts
from sluice.apply.servicerules import (
    Jump,
    Snapshot,
    TableDump,
    count_changes,
    family_supported,
    parse_save,
    restore,
    rule_target,
    run_tool,
)
from sluice.compile.flowcut import TrackedFlow, forbidden_flows
from sluice.compile.iptables_policy import (
    CUT_MARK,
    DISPATCH_PREFIX,
    DISPATCHES,
    SET_PREFIX,
    TABLES,
    IpSet,
    PolicyRules,
    endpoint_chains,
    normalize_entry,
    owned_chain,
    policy_rules,
)
from sluice.compile.policytypes import EndpointPolicy, PolicyState
from sluice.model.addresses import IPAddress

FAMILIES = (4, 6)
JUMPS = tuple(Jump(d.table, d.builtin, d.chain,
                   f'-m comment --comment "sluice policy" -j {d.chain}') for d in DISPATCHES)
BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
TEMP_SUFFIX = "-t"
MIN_MAXELEM = 65536  # ipset's default
_MATCH_SET = re.compile(r"--match-set (\S+)")

Dumps = dict[str, TableDump]  # one family's tables by name

# --- ipsets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveSet:
    name: str
    type: str
    version: int
    entries: frozenset[str]


def _ipset(argv: list[str], stdin: str | None = None) -> str:
    done = run_tool(["ipset", *argv], stdin)
    if done.returncode == 0:
        return done.stdout
    message = f"ipset {' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}"
    found = re.search(r"Error in line (\d+)", done.stderr)
    lines = (stdin or "").splitlines()
    if found and 0 < int(found.group(1)) <= len(lines):
        message += f"; input line {found.group(1)}: {lines[int(found.group(1)) - 1]}"
    raise ApplyError(message)


def read_sets() -> dict[str, LiveSet]:
    """Sluice's sets in this namespace, with their members as `policy_rules` writes them
    (none where the ipset tool is not installed: then nothing can have made any)."""
    if shutil.which("ipset") is None:
        return {}
    kinds: dict[str, tuple[str, int]] = {}
    entries: dict[str, set[str]] = {}
    for line in _ipset(["save"]).splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].startswith(SET_PREFIX):
            continue
        name = words[1]
        if words[0] == "create":
            version = 6 if "inet6" in words else 4
            kinds[name] = (words[2], version)
            entries.setdefault(name, set())
        elif words[0] == "add" and name in kinds:
            entries[name].add(normalize_entry(kinds[name][0], " ".join(words[2:])))
    return {name: LiveSet(name, kind, version, frozenset(entries[name]))
            for name, (kind, version) in kinds.items()}


def _create(name: str, wanted: IpSet) -> list[str]:
    maxelem = max(MIN_MAXELEM, len(wanted.entries))
    return [f"create {name} {wanted.type} family {wanted.family} maxelem {maxelem}",
            *(f"add {name} {entry}" for entry in wanted.entries)]


def set_commands(wanted: Iterable[IpSet], live: Mapping[str, LiveSet]) -> tuple[list[str],
                                                                                 Changes]:
    """`ipset restore` input that makes every WANTED set exist with exactly its members."""
    commands: list[str] = []
    changes = Changes()
    for ipset in wanted:
        current = live.get(ipset.name)
        if current is None:
            commands += _create(ipset.name, ipset)
            changes.added += 1
            continue
        if (current.type, current.version) != (ipset.type, ipset.version):
            raise ApplyError(f"ipset {ipset.name} is a {current.type} set of IPv"
                             f"{current.version}, not {ipset.type} of IPv{ipset.version}: "
                             "remove it (ipset destroy) or the rules that use it")
        if current.entries == frozenset(ipset.entries):
            changes.unchanged += 1
            continue
        temp = ipset.name + TEMP_SUFFIX
        if temp in live:  # left by an interrupted sync
            commands.append(f"destroy {temp}")
        commands += [*_create(temp, ipset), f"swap {temp} {ipset.name}", f"destroy {temp}"]
        changes.changed += 1
    return commands, changes


def _sets_of(versions: Iterable[int], live: Mapping[str, LiveSet]) -> list[str]:
    return [name for name, found in live.items() if found.version in set(versions)]


# --- iptables ---------------------------------------------------------------------------


def read_family(version: int) -> Dumps:
    """The raw, mangle and filter tables; one that does not exist yet is empty (reading
    all tables at once creates none)."""
    tool = xtables.tool(version, "save")
    done = run_tool([tool])
    if done.returncode != 0:
        raise ApplyError(f"{tool} failed (exit {done.returncode}): {done.stderr.strip()}")
    return {table: parse_save(done.stdout, table) for table in TABLES}


def snapshot(dumps: Dumps) -> Snapshot:
    """The policy chains with their rules, and the built-in chains' jumps into them."""
    found: Snapshot = {}
    for table, dump in dumps.items():
        for chain in dump.chains:
            if owned_chain(chain):
                found[("chain", table, chain)] = dump.rules.get(chain, ())
        for builtin in BUILTIN_CHAINS[table]:
            jumps = tuple(r for r in dump.rules.get(builtin, ())
                          if owned_chain(rule_target(r) or ""))
            if jumps:
                found[("jump", table, builtin)] = jumps
    return found


def _jump_fixes(table: str, dump: TableDump, wanted_chains: Sequence[str]) -> list[str]:
    """Exactly one jump per dispatch chain that exists, none to one that does not."""
    commands: list[str] = []
    for jump in JUMPS:
        if jump.table != table:
            continue
        found = dump.jumps_to(jump.chain, jump.target)
        wanted = jump.target in wanted_chains
        if found == ([jump.rule] if wanted else []):
            continue
        commands += ["-D" + rule.removeprefix("-A") for rule in found]
        if wanted:
            commands.append(f"-I {jump.chain} 1 {jump.spec}")
    return commands


def restore_text(generated: str, live: Dumps) -> str:
    """The --noflush input that turns LIVE's policy chains into GENERATED's."""
    out: list[str] = []
    for table in TABLES:
        wanted = parse_save(generated, table)
        dump = live.get(table, TableDump((), {}))
        stale = [c for c in dump.chains if owned_chain(c) and c not in wanted.chains]
        fixes = _jump_fixes(table, dump, wanted.chains)
        if not (wanted.chains or stale or fixes):
            continue
        out += [f"*{table}", *(f":{c} - [0:0]" for c in (*wanted.chains, *stale)),
                *(r for c in wanted.chains for r in wanted.rules.get(c, ())), *fixes,
                *(f"-X {c}" for c in stale), "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


# --- what was applied last, per namespace and family ------------------------------------

APPLIED: AppliedTexts[Snapshot] = AppliedTexts()


def _sync_family(rules: PolicyRules, live: Dumps) -> Dumps | None:
    """Write one family's chains and return them as read back; None when they were
    already as generated."""
    if APPLIED.unchanged(rules.version, rules.text, snapshot(live)):
        return None
    APPLIED.forget(rules.version)
    text = restore_text(rules.text, live)
    if text:
        restore(rules.version, text)
    after = read_family(rules.version)
    APPLIED.remember(rules.version, rules.text, snapshot(after))
    return after


# --- cutting flows ----------------------------------------------------------------------


def endpoint_view(name: str, dumps: Mapping[int, Dumps],
                  sets: Mapping[str, LiveSet]) -> tuple[object, ...]:
    """Everything that decides an endpoint's flows, as the kernel holds it: its chains,
    the dispatch rules into them, and the members of the sets they name."""
    chains = set(endpoint_chains(name))
    view: list[object] = []
    named: set[str] = set()
    for version in sorted(dumps):
        for table, dump in dumps[version].items():
            for chain in dump.chains:
                rules = dump.rules.get(chain, ())
                if chain.startswith(DISPATCH_PREFIX):
                    rules = tuple(r for r in rules if rule_target(r) in chains)
                elif chain not in chains:
                    continue
                view.append((version, table, chain, rules))
                named.update(m for r in rules for m in _MATCH_SET.findall(r))
    view += [(s, sorted(sets[s].entries) if s in sets else None) for s in sorted(named)]
    return tuple(view)


def _enforced(endpoint: EndpointPolicy) -> bool:
    return any(p.enforced for p in endpoint.directions.values())


# TCP states whose flow is still going (SYN_SENT .. LAST_ACK); TIME_WAIT and CLOSE are over.
_LIVE_TCP_STATES = range(1, 7)


def _tracked(entry: ConntrackEntry) -> TrackedFlow | None:
    """A conntrack entry's pod-facing tuple: the original source, and the reply's source
    as the destination (the backend, when a Service was translated); None when over."""
    orig, reply = entry.tuple_orig, entry.tuple_reply
    if entry.protoinfo is not None and entry.protoinfo.state not in _LIVE_TCP_STATES:
        return None
    return TrackedFlow(int(orig.proto), ip_address(orig.saddr), int(orig.sport or 0),
                       ip_address(reply.saddr), int(reply.sport or 0))


def cut_flows(state: PolicyState, addresses: Iterable[IPAddress]) -> int:
    """Mark the live flows of ADDRESSES that STATE now forbids (CUT_MARK): every dispatch
    chain rejects or drops their packets, both ways. Returns how many."""
    wanted = set(addresses)
    cut = 0
    for family in sorted({a.version for a in wanted}):
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        with Conntrack(nfgen_family=af) as conntrack:
            entries = {}
            for entry in conntrack.dump_entries(tuple_orig=NFCTAttrTuple(family=af)):
                flow = _tracked(entry)
                if flow is not None and (flow.source in wanted or flow.destination in wanted):
                    entries[flow] = entry
            for flow in forbidden_flows(state, entries):
                try:
                    conntrack.entry("set", mark=int(CUT_MARK, 16),
                                    tuple_orig=entries[flow].tuple_orig)
                except NetlinkError as err:
                    if err.code != errno.ENOENT:  # ended meanwhile
                        raise ApplyError(f"marking conntrack entry {flow} cut: {err}") from err
                    continue
                cut += 1
    return cut


# --- the sync ---------------------------------------------------------------------------


def _families(state: PolicyState) -> list[int]:
    """The families this namespace can program; ApplyError when STATE needs a missing one."""
    usable = []
    for version in FAMILIES:
        if family_supported(version):
            usable.append(version)
            continue
        needed = [e.name for e in state.endpoints if _enforced(e)
                  and any(a.version == version for a in e.addresses)]
        if needed or any(n.version == version for n in state.prefilter_deny):
            tool = xtables.tool(version)
            raise ApplyError(f"policy for IPv{version} (endpoints {', '.join(needed[:3]) or '-'}"
                             f"), but this node cannot program IPv{version} rules ({tool}-restore"
                             " or kernel support is missing)")
    return usable


def sync_policy_rules(state: PolicyState) -> Changes:
    """Make this namespace's ipsets and raw, mangle and filter tables enforce STATE.

    Counts sets, and chains and built-in chains' jumps, added, changed, removed, unchanged.
    Raises ApplyError naming the tool and the input line that failed."""
    versions = _families(state)
    try:
        wanted = {v: policy_rules(state, v) for v in versions}
    except ValueError as err:
        raise ApplyError(f"network policy cannot be rendered as iptables rules: {err}") from None
    live_sets = read_sets()
    before = {v: read_family(v) for v in versions}

    commands, set_changes = set_commands((s for r in wanted.values() for s in r.sets),
                                         live_sets)
    if commands:
        _ipset(["restore"], "\n".join(commands) + "\n")
    after: dict[int, Dumps] = {}
    for v in versions:
        written = _sync_family(wanted[v], before[v])
        after[v] = before[v] if written is None else written
    wanted_names = {s.name for r in wanted.values() for s in r.sets}
    stale = [n for n in _sets_of(versions, live_sets) if n not in wanted_names]
    if stale:
        _ipset(["restore"], "".join(f"destroy {n}\n" for n in stale))
    set_changes.removed += len(stale)

    changes = set_changes
    for v in versions:
        changes.add(count_changes(snapshot(before[v]), snapshot(after[v])))
    if not changes.any:
        return changes
    sets_after = read_sets()
    changed = [e for e in state.endpoints if _enforced(e)
               and endpoint_view(e.name, before, live_sets)
               != endpoint_view(e.name, after, sets_after)]
    if changed:
        cut_flows(state, (a for e in changed for a in e.addresses))
    return changes


def _removal_text(live: Dumps) -> tuple[str, int]:
    out: list[str] = []
    removed = 0
    for table in TABLES:
        dump = live[table]
        jumps = [r for chain in BUILTIN_CHAINS[table] for r in dump.rules.get(chain, ())
                 if owned_chain(rule_target(r) or "")]
        chains = [c for c in dump.chains if owned_chain(c)]
        if not jumps and not chains:
            continue
        removed += len(jumps) + len(chains)
        out += [f"*{table}", *(f":{c} - [0:0]" for c in chains),
                *("-D" + r.removeprefix("-A") for r in jumps), *(f"-X {c}" for c in chains),
                "COMMIT"]
    return ("\n".join(out) + "\n" if out else ""), removed


def remove_policy_rules(families: Iterable[int] = FAMILIES) -> int:
    """Remove every policy chain, the jumps into them and Sluice's ipsets from this
    namespace; returns how many chains, jumps and sets went (0: nothing there)."""
    removed = 0
    versions = [v for v in families if family_supported(v)]
    for version in versions:
        APPLIED.forget(version)
        text, count = _removal_text(read_family(version))
        if count:
            restore(version, text)
            removed += count
    sets = _sets_of(versions, read_sets())
    if sets:
        _ipset(["restore"], "".join(f"destroy {n}\n" for n in sets))
    return removed + len(sets)
