"""The netfilter rules of this network namespace that are not Sluice's own.

Read with the tools an operator would use, in the calling thread's namespace:

  iptables-nft-save, ip6tables-nft-save        the tables of the iptables-nft layer
  iptables-legacy-save, ip6tables-legacy-save  the legacy x_tables, when the namespace has
                                               any (/proc/thread-self/net/ip*_tables_names)
  nft -j list ruleset                          every other nftables table

A rule is foreign unless it sits in one of Sluice's chains (SLUICE-*) or jumps into one.
Empty tables and chains (iptables-nft makes them the first time anyone lists a table) are
not rules; a built-in chain whose policy is not ACCEPT is, since it decides traffic.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sluice.apply.servicerules import PREFIX, rule_target

IPTABLES_NFT = "iptables-nft"
IPTABLES_LEGACY = "iptables-legacy"
NFTABLES = "nftables"
FAMILIES = {"ipv4": ("iptables", "ip"), "ipv6": ("ip6tables", "ip6")}
# The tables iptables-nft makes; their rules are read (as iptables prints them) from the
# *-nft-save tools, unless those call a table incompatible (native nft rules in it).
XTABLES_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
TOOL_TIMEOUT = 30.0
_INCOMPATIBLE = re.compile(r"^# Table `([^']+)' is incompatible")

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True, order=True)
class ForeignRule:
    backend: str  # iptables-nft, iptables-legacy or nftables
    family: str  # ipv4 or ipv6 (iptables); the nftables family (ip, ip6, inet, arp, ...)
    table: str
    text: str  # `-A INPUT -s 198.18.9.9/32 -j DROP`, `-P INPUT DROP`, or an nft rule
    occurrence: int = 0  # the n-th identical rule of its table (iptables has no handles)

    @property
    def source(self) -> str:
        """The read this rule came from (one tool run)."""
        return NFTABLES if self.backend == NFTABLES else f"{self.backend}/{self.family}"

    def describe(self) -> str:
        return f"{self.backend} {self.family} table {self.table}: {self.text}"


@dataclass(frozen=True)
class Scan:
    rules: frozenset[ForeignRule]
    failed: frozenset[str]  # sources (ForeignRule.source) whose tool failed: rules unknown
    problems: tuple[str, ...]


def _own_chain(chain: str) -> bool:
    return chain.startswith(PREFIX)


def foreign_save_rules(text: str, backend: str, family: str) -> tuple[list[ForeignRule],
                                                                      set[str]]:
    """(foreign rules, tables the tool called incompatible) of iptables-save output."""
    rules: list[ForeignRule] = []
    incompatible: set[str] = set()
    seen: Counter[tuple[str, str]] = Counter()
    table = ""

    def add(text: str) -> None:
        rules.append(ForeignRule(backend, family, table, text, seen[(table, text)]))
        seen[(table, text)] += 1

    for line in text.splitlines():
        found = _INCOMPATIBLE.match(line)
        if found:
            incompatible.add(found.group(1))
        elif line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            policy = rest.split(" ", 1)[0]
            if policy not in ("-", "ACCEPT", "") and not _own_chain(name):
                add(f"-P {name} {policy}")
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            if not _own_chain(chain) and not (rule_target(line) or "").startswith(PREFIX):
                add(line)
    return rules, incompatible


def _jump_targets(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("jump", "goto") and isinstance(inner, dict):
                yield str(inner.get("target", ""))
            else:
                yield from _jump_targets(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _jump_targets(inner)


def _foreign_policy(chain: Mapping[str, Any]) -> ForeignRule | None:
    name, policy = str(chain.get("name", "")), chain.get("policy")
    if not chain.get("hook") or policy in (None, "accept") or _own_chain(name):
        return None
    return ForeignRule(NFTABLES, str(chain.get("family", "")), str(chain.get("table", "")),
                       f"chain {name} (hook {chain['hook']}) policy {policy}")


def _foreign_nft_rule(rule: Mapping[str, Any]) -> ForeignRule | None:
    chain, expr = str(rule.get("chain", "")), rule.get("expr", [])
    if _own_chain(chain) or any(t.startswith(PREFIX) for t in _jump_targets(expr)):
        return None
    return ForeignRule(NFTABLES, str(rule.get("family", "")), str(rule.get("table", "")),
                       f"chain {chain} handle {rule.get('handle')}: "
                       f"{json.dumps(expr, separators=(',', ':'))}")


def foreign_nft_rules(doc: Mapping[str, Any], covered: set[tuple[str, str]]
                      ) -> list[ForeignRule]:
    """Foreign rules of `nft -j list ruleset` output, leaving out the (family, table)
    pairs in COVERED (read from the iptables tools instead)."""
    rules: list[ForeignRule] = []
    for item in doc.get("nftables", []):
        if not isinstance(item, dict):
            continue
        chain, rule = item.get("chain"), item.get("rule")
        entry = chain if isinstance(chain, dict) else rule if isinstance(rule, dict) else {}
        if (str(entry.get("family", "")), str(entry.get("table", ""))) in covered:
            continue
        found = (_foreign_policy(entry) if entry is chain
                 else _foreign_nft_rule(entry) if entry else None)
        if found is not None:
            rules.append(found)
    return rules


def run_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # Forked by the calling thread: the child runs in that thread's network namespace.
    return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          check=False)


def _legacy_tables(family: str) -> bool:
    """Whether this namespace has legacy tables of FAMILY (else there are no rules to
    read, and reading would only instantiate empty tables)."""
    name = "ip_tables_names" if family == "ipv4" else "ip6_tables_names"
    try:
        with open(os.path.join("/proc/thread-self/net", name), encoding="ascii") as names:
            return bool(names.read().split())
    except OSError:
        return False


def read_foreign_rules(run: Runner = run_tool) -> Scan:
    rules: list[ForeignRule] = []
    failed: set[str] = set()
    problems: list[str] = []
    covered: set[tuple[str, str]] = set()  # (nft family, table) the iptables view shows

    def tool(argv: list[str], source: str) -> str | None:
        try:
            done = run(argv)
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = f"{argv[0]}: {err}"
        else:
            if done.returncode == 0:
                return done.stdout
            problem = f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
        failed.add(source)
        problems.append(problem)
        return None

    for (family, (prefix, nft_family)), backend in itertools.product(
            FAMILIES.items(), (IPTABLES_NFT, IPTABLES_LEGACY)):
        command = f"{prefix}-{backend.removeprefix('iptables-')}-save"
        if not shutil.which(command) or (backend == IPTABLES_LEGACY
                                         and not _legacy_tables(family)):
            continue
        text = tool([command], f"{backend}/{family}")
        found, incompatible = foreign_save_rules(text or "", backend, family)
        rules += found
        if backend == IPTABLES_NFT:
            covered |= {(nft_family, table) for table in XTABLES_TABLES - incompatible}
    if shutil.which("nft"):
        text = tool(["nft", "-j", "list", "ruleset"], NFTABLES)
        if text is not None:
            try:
                doc = json.loads(text) if text.strip() else {}
                rules += foreign_nft_rules(doc, covered)
            except (ValueError, AttributeError) as err:
                failed.add(NFTABLES)
                problems.append(f"nft -j list ruleset: unreadable output: {err}")
    return Scan(frozenset(rules), frozenset(failed), tuple(problems))
