"""iptables mode: program the node's Services as kube-proxy's iptables mode does, from the
rules `sluice.compile.iptables_services` generates, in this thread's network namespace.

Per family, one `iptables-restore --noflush` (or `ip6tables-restore`) writes the nat and
the filter table, each in one transaction: every SLUICE chain of the generated text is
declared (which flushes it) and rewritten, service chains (SLUICE-SVC/SEP/EXT/FW-*) that
are no longer wanted are flushed and deleted, and the jumps from the built-in chains are
made exactly one each, inserted at the top:

    nat     PREROUTING, OUTPUT -> SLUICE-SERVICES; POSTROUTING -> SLUICE-POSTROUTING
    filter  INPUT, FORWARD, OUTPUT (new connections) -> SLUICE-SERVICES

Rules of other owners, in the built-in chains or elsewhere, are never touched. What was
applied is remembered per namespace and family: a resync whose generated text equals the
last applied one and whose live SLUICE chains still read back as they did right after that
restore runs no restore at all (it costs one `iptables-save` per table and family).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from sluice.apply import xtables
from sluice.apply.diff import Changes
from sluice.apply.errors import ApplyError
from sluice.apply.restored import AppliedTexts
from sluice.compile.iptables_services import (
    FILTER_SERVICES,
    MARK_MASQ,
    NODEPORTS,
    POSTROUTING,
    SERVICES,
    service_rules,
)
from sluice.compile.services import ServiceTable

PREFIX = "SLUICE-"
# Chains named per service; one that the generated text no longer declares is deleted.
SERVICE_CHAIN_PREFIXES = ("SLUICE-SVC-", "SLUICE-SEP-", "SLUICE-EXT-", "SLUICE-FW-")
FIXED_CHAINS = frozenset({SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ, FILTER_SERVICES})
TABLES = ("nat", "filter")
FAMILIES = (4, 6)
TOOL_TIMEOUT = 30.0
LINES_PER_SECOND = 2000.0
"""A restore of a large ruleset gets a second more per this many input lines: at 10,000
Services iptables-restore alone can take longer than TOOL_TIMEOUT on a busy machine."""
LOCK_WAIT = "5"  # seconds iptables-restore waits for the xtables lock (legacy backend)

_PORTALS = '-m comment --comment "sluice service portals"'


@dataclass(frozen=True)
class Jump:
    """One rule in a built-in chain that leads into Sluice's chains."""

    table: str
    chain: str
    target: str
    spec: str  # the rule after `-A CHAIN`, exactly as iptables-save prints it

    @property
    def rule(self) -> str:
        return f"-A {self.chain} {self.spec}"


JUMPS = (
    Jump("nat", "PREROUTING", SERVICES, f"{_PORTALS} -j {SERVICES}"),
    Jump("nat", "OUTPUT", SERVICES, f"{_PORTALS} -j {SERVICES}"),
    Jump("nat", "POSTROUTING", POSTROUTING,
         f'-m comment --comment "sluice postrouting rules" -j {POSTROUTING}'),
    # Frontends without backends are rejected, and sources outside loadBalancerSourceRanges
    # dropped, when a connection starts; established ones never need the chain.
    *(Jump("filter", chain, FILTER_SERVICES,
           f"-m conntrack --ctstate NEW {_PORTALS} -j {FILTER_SERVICES}")
      for chain in ("INPUT", "FORWARD", "OUTPUT")),
)
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}

# --- reading what the kernel holds ----------------------------------------------------


@dataclass(frozen=True)
class TableDump:
    """One table as iptables-save prints it: chains in order, rules per chain."""

    chains: tuple[str, ...]
    rules: dict[str, tuple[str, ...]]

    def sluice_chains(self) -> list[str]:
        return [c for c in self.chains if c.startswith(PREFIX)]

    def jumps_to(self, chain: str, target: str) -> list[str]:
        return [r for r in self.rules.get(chain, ()) if rule_target(r) == target]

    def jumps_into_sluice(self, chain: str) -> list[str]:
        return [r for r in self.rules.get(chain, ())
                if (rule_target(r) or "").startswith(PREFIX)]


def rule_target(rule: str) -> str | None:
    """The chain or target a saved rule jumps (-j) or goes (-g) to."""
    try:
        words = shlex.split(rule)
    except ValueError:
        return None
    for flag, value in itertools.pairwise(words):
        if flag in ("-j", "--jump", "-g", "--goto"):
            return value
    return None


def parse_save(text: str, table: str) -> TableDump:
    chains: list[str] = []
    rules: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current != table or not line or line.startswith("#"):
            continue
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            chains.append(name)
            rules.setdefault(name, [])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            rules.setdefault(chain, []).append(line)
    return TableDump(tuple(chains), {c: tuple(r) for c, r in rules.items()})


def family_supported(version: int) -> bool:
    """Whether this namespace can hold rules of the family (the tools are installed and,
    for IPv6, the kernel has IPv6)."""
    if not xtables.installed(version):
        return False
    return version == 4 or os.path.exists("/proc/net/if_inet6")


class ToolTimeoutError(ApplyError):
    """A tool that did not finish in the time it was given."""


def run_tool(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # The child is forked by this thread, so it runs in this thread's network namespace.
    timeout = TOOL_TIMEOUT + (stdin.count("\n") / LINES_PER_SECOND if stdin else 0.0)
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as err:
        raise ApplyError(f"{argv[0]} is not installed: {err}") from None
    except subprocess.TimeoutExpired:
        raise ToolTimeoutError(f"{argv[0]} did not finish within {timeout:.0f} s") from None


def read_table(version: int, table: str) -> TableDump:
    tool = xtables.tool(version, "save")
    done = run_tool([tool, "-t", table])
    if done.returncode != 0:
        raise ApplyError(f"{tool} -t {table} failed (exit {done.returncode}): "
                         f"{done.stderr.strip()}")
    return parse_save(done.stdout, table)


def restore(version: int, text: str) -> None:
    """iptables-restore --noflush TEXT; raises ApplyError with the tool's message and the
    line it failed on."""
    tool = xtables.tool(version, "restore")
    try:
        done = run_tool([tool, "-w", LOCK_WAIT, "--noflush"], text)
    except ToolTimeoutError as err:
        if xtables.selected() is xtables.Backend.LEGACY:
            raise
        raise ToolTimeoutError(f"{err}; with many Services iptables-legacy is much faster "
                          "(--iptables-backend legacy)") from None
    if done.returncode == 0:
        return
    stderr = "; ".join(line.strip() for line in done.stderr.splitlines()
                       if line.strip() and not line.startswith("Try `"))
    message = f"{tool} failed (exit {done.returncode}): {stderr}"
    found = (re.search(r"Error occurred at line: (\d+)", stderr)
             or re.search(r"line (\d+) failed", stderr))
    lines = text.splitlines()
    number = int(found.group(1)) if found else 0
    if 0 < number <= len(lines) and lines[number - 1] == "COMMIT":
        # The nf_tables backend finds some errors only when the batch commits: point at
        # the first rule naming what the tool complained about instead.
        named = [n for n in re.findall(r"'([^'\s]+)'", stderr) if n in text]
        number = next((i for i, line in enumerate(lines, 1) if line.startswith("-")
                       and any(n in line.split() for n in named)), number)
    if 0 < number <= len(lines):
        message += f"; input line {number}: {lines[number - 1]}"
    raise ApplyError(message)


# What of a family the service rules own, as read back: the rules of their chains and the
# jumps into them, by ("chain" | "jump", table, chain). Built-in chains' counters, others'
# rules (and other SLUICE-* chains, should another part of Sluice add some) are left out.
Snapshot = dict[tuple[str, str, str], tuple[str, ...]]


def owned_chain(chain: str) -> bool:
    return chain in FIXED_CHAINS or chain.startswith(SERVICE_CHAIN_PREFIXES)


def snapshot(dumps: dict[str, TableDump]) -> Snapshot:
    found: Snapshot = {}
    for table, dump in dumps.items():
        for chain in dump.sluice_chains():
            if owned_chain(chain):
                found[("chain", table, chain)] = dump.rules.get(chain, ())
        for jump in JUMPS:
            rules = dump.jumps_to(jump.chain, jump.target) if jump.table == table else []
            if rules:
                found[("jump", table, jump.chain)] = tuple(rules)
    return found


def _read_family(version: int, *, unreadable_is_empty: bool = False) -> dict[str, TableDump]:
    found = {}
    for table in TABLES:
        try:
            found[table] = read_table(version, table)
        except ApplyError:
            if not unreadable_is_empty:
                raise
            # A table the kernel cannot give (no ip6table_nat, say) holds no rules of ours.
            found[table] = TableDump((), {})
    return found


def count_changes(before: Snapshot, after: Snapshot) -> Changes:
    """Chains (and built-in chains' jumps into them) added, changed, removed, unchanged."""
    changes = Changes()
    for key in before.keys() | after.keys():
        if key not in before:
            changes.added += 1
        elif key not in after:
            changes.removed += 1
        elif before[key] != after[key]:
            changes.changed += 1
        else:
            changes.unchanged += 1
    return changes


# --- what was applied last, per namespace and family ------------------------------------

APPLIED: AppliedTexts[Snapshot] = AppliedTexts()


# --- writing ----------------------------------------------------------------------------


def _split_tables(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """The generated text by table: (chain declarations, rules)."""
    tables: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), ([], []))
        elif line == "COMMIT" or not line or line.startswith("#"):
            continue
        elif current is None:
            raise ValueError(f"a rule outside any table: {line}")
        elif line.startswith(":"):
            current[0].append(line)
        else:
            current[1].append(line)
    return tables


def _jump_fixes(table: str, dump: TableDump) -> list[str]:
    """Commands that leave exactly one jump per built-in chain of TABLE; none when so."""
    commands: list[str] = []
    for jump in JUMPS:
        if jump.table != table:
            continue
        found = dump.jumps_to(jump.chain, jump.target)
        if found == [jump.rule]:
            continue
        commands += ["-D" + rule.removeprefix("-A") for rule in found]
        commands.append(f"-I {jump.chain} 1 {jump.spec}")
    return commands


def restore_text(generated: str, live: dict[str, TableDump]) -> str:
    """The --noflush input that turns LIVE into GENERATED: declares (flushes) and fills
    every wanted chain, flushes and deletes unwanted service chains, fixes the jumps."""
    out: list[str] = []
    for table, (declarations, rules) in _split_tables(generated).items():
        dump = live.get(table, TableDump((), {}))
        wanted = {d[1:].split(" ", 1)[0] for d in declarations}
        stale = [c for c in dump.sluice_chains()
                 if c not in wanted and c.startswith(SERVICE_CHAIN_PREFIXES)]
        out += [f"*{table}", *declarations, *(f":{c} - [0:0]" for c in stale), *rules,
                *(f"-X {c}" for c in stale), *_jump_fixes(table, dump), "COMMIT"]
    return "\n".join(out) + "\n"


def sync_family(table: ServiceTable, version: int) -> Changes:
    generated = service_rules(table, version).text
    live = _read_family(version)
    before = snapshot(live)
    if APPLIED.unchanged(version, generated, before):
        return Changes(unchanged=len(before))
    APPLIED.forget(version)
    restore(version, restore_text(generated, live))
    after = snapshot(_read_family(version))
    APPLIED.remember(version, generated, after)
    return count_changes(before, after)


def sync_service_rules(table: ServiceTable) -> Changes:
    """Make this namespace's nat and filter tables program TABLE's services, IPv4 and IPv6.

    A family whose tools or kernel support are missing is skipped when TABLE has no
    frontend of it, and raises ApplyError when it has."""
    total = Changes()
    for version in FAMILIES:
        if not family_supported(version):
            wanted = [p for p in table.plans if p.frontend.address.version == version]
            if wanted:
                raise ApplyError(f"{len(wanted)} IPv{version} service frontends, but this "
                                 f"node cannot program IPv{version} rules "
                                 f"({xtables.tool(version, 'restore')} or kernel support is "
                                 "missing)")
            continue
        total.add(sync_family(table, version))
    return total


def _removal_text(live: dict[str, TableDump]) -> tuple[str, int]:
    out: list[str] = []
    removed = 0
    for table in TABLES:
        dump = live[table]
        jumps = [r for chain in BUILTIN_CHAINS[table] for r in dump.jumps_into_sluice(chain)]
        chains = dump.sluice_chains()
        if not jumps and not chains:
            continue
        removed += len(jumps) + len(chains)
        out += [f"*{table}", *(f":{c} - [0:0]" for c in chains),
                *("-D" + r.removeprefix("-A") for r in jumps), *(f"-X {c}" for c in chains),
                "COMMIT"]
    return ("\n".join(out) + "\n" if out else ""), removed


def remove_service_rules(families: Iterable[int] = FAMILIES) -> int:
    """Remove the jumps into Sluice's chains and every SLUICE-* chain of the nat and filter
    tables in this namespace; returns how many chains and jumps went (0: nothing there)."""
    removed = 0
    for version in families:
        if not family_supported(version):
            continue
        APPLIED.forget(version)
        text, count = _removal_text(_read_family(version, unreadable_is_empty=True))
        if count:
            restore(version, text)
            removed += count
    return removed

