"""iptables mode: a PolicyState as ipsets and filter/mangle/raw chains, per address family,
for `ipset restore` and `iptables-restore --noflush` / `ip6tables-restore --noflush`.

Per endpoint and enforced direction, one chain holds the global tier in order, then either
a catch-all DROP (a global policy selects the endpoint) or a goto into the endpoint's
Kubernetes tier chain (its allows, then a DROP when a NetworkPolicy isolates it):

    SLUICE-PI-<hash>  ingress    SLUICE-PO-<hash>   egress     SLUICE-PP-<hash>  pre-DNAT
    SLUICE-PFI-<hash> forward in SLUICE-PFO-<hash>  forward out SLUICE-PU-<hash> untracked
    SLUICE-KI-<hash>, SLUICE-KO-<hash>, ...: the Kubernetes tier of the same direction

An allowed flow RETURNs to the dispatch chain rather than being ACCEPTed, so that a packet
from one local pod to another is judged by the egress chain of the one and then by the
ingress chain of the other; whatever no chain drops continues through the built-in chain.
Pass is a goto into the Kubernetes tier (its RETURN then ends the endpoint's chain too).
Denied new flows are DROPped, never rejected. Dispatch, with one jump from each built-in:

    filter FORWARD    -> SLUICE-POLICY-FWD  established ACCEPT; -i hostep (forward in),
                                            -i veth (egress), -o veth (ingress), -o hostep
    filter INPUT      -> SLUICE-POLICY-IN   established ACCEPT; -i veth (egress), -i hostep
    filter OUTPUT     -> SLUICE-POLICY-OUT  established ACCEPT; -o veth (ingress), -o hostep
    mangle PREROUTING -> SLUICE-POLICY-PRE  new flows, -i hostep (pre-DNAT)
    raw PREROUTING    -> SLUICE-POLICY-RAW  prefilter_deny sources DROP; -i hostep (untracked)

A dispatch chain exists only while it has something to dispatch. Peers are matched by
address: a PeerSet's pod addresses are one hash:ip set, its blocks hash:net sets (an
except is a `nomatch` entry), the node itself `-m addrtype --src-type/--dst-type LOCAL`;
each part is its own rule. Sets are named by their content and family, so identical peer
sets are shared and a set's members never change under its name (the fixed-name
prefilter set excepted).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sluice.compile.devices import TUNNEL_PORT
from sluice.compile.iptables_services import chain_name
from sluice.compile.policytypes import (
    Action,
    AddressBlock,
    CompiledRule,
    Direction,
    DirectionPolicy,
    EndpointPolicy,
    FailsafePort,
    Identity,
    PeerSet,
    PolicyState,
    PortRange,
)
from sluice.model.addresses import IPNetwork

FORWARD_DISPATCH = "SLUICE-POLICY-FWD"
INPUT_DISPATCH = "SLUICE-POLICY-IN"
OUTPUT_DISPATCH = "SLUICE-POLICY-OUT"
PREDNAT_DISPATCH = "SLUICE-POLICY-PRE"
RAW_DISPATCH = "SLUICE-POLICY-RAW"
UNTRACKED_ALLOW = "SLUICE-POLICY-NOTRACK"
DISPATCH_PREFIX = "SLUICE-POLICY-"
SET_PREFIX = "sluice-"

# Packets an untracked (doNotTrack) rule allowed carry this mark, so that filter INPUT does
# not judge them again; services use 0x4000 and 0x8000.
UNTRACKED_MARK = "0x10000/0x10000"
# A connection a policy change forbids carries this conntrack mark: its packets, both ways,
# are rejected (TCP) or dropped by every dispatch chain, not accepted as established.
CUT_MARK = "0x20000"
NFLOG_GROUP = 50
MULTIPORT_SLOTS = 15  # a port takes one slot of -m multiport, a range two
COMMENT_MAX = 255

TABLES = ("raw", "mangle", "filter")


@dataclass(frozen=True)
class Dispatch:
    """A dispatch chain and the built-in chain that jumps to it."""

    table: str
    builtin: str
    chain: str


DISPATCHES = (
    Dispatch("raw", "PREROUTING", RAW_DISPATCH),
    Dispatch("mangle", "PREROUTING", PREDNAT_DISPATCH),
    Dispatch("filter", "INPUT", INPUT_DISPATCH),
    Dispatch("filter", "FORWARD", FORWARD_DISPATCH),
    Dispatch("filter", "OUTPUT", OUTPUT_DISPATCH),
)


@dataclass(frozen=True)
class Placement:
    """Where a direction's chains live, what they are called and which side is the peer."""

    table: str
    prefix: str  # the endpoint chain; the Kubernetes tier chain swaps the P for a K
    peer_is_source: bool

    @property
    def tier_prefix(self) -> str:
        return "SLUICE-K" + self.prefix.removeprefix("SLUICE-P")


PLACEMENTS = {
    Direction.INGRESS: Placement("filter", "SLUICE-PI", peer_is_source=True),
    Direction.EGRESS: Placement("filter", "SLUICE-PO", peer_is_source=False),
    Direction.PREDNAT: Placement("mangle", "SLUICE-PP", peer_is_source=True),
    Direction.FORWARD_INGRESS: Placement("filter", "SLUICE-PFI", peer_is_source=True),
    Direction.FORWARD_EGRESS: Placement("filter", "SLUICE-PFO", peer_is_source=False),
    Direction.UNTRACKED: Placement("raw", "SLUICE-PU", peer_is_source=True),
}
POD_DIRECTIONS = frozenset({Direction.INGRESS, Direction.EGRESS})
# Failsafe ports: inbound ones for traffic to the host, outbound ones for traffic from it.
FAILSAFE_INBOUND = frozenset({Direction.INGRESS, Direction.PREDNAT, Direction.UNTRACKED})
FAILSAFE_OUTBOUND = frozenset({Direction.EGRESS})
OWNED_CHAIN_PREFIXES = (DISPATCH_PREFIX,
                        *(f"{p.prefix}-" for p in PLACEMENTS.values()),
                        *(f"{p.tier_prefix}-" for p in PLACEMENTS.values()))

PROTOCOL_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
# IPv6 neighbour discovery between a pod and its node, whatever the pod's policy:
# router solicitation/advertisement, neighbour solicitation/advertisement.
NDP_TYPES = (133, 134, 135, 136)


@dataclass(frozen=True)
class IpSet:
    name: str
    type: str  # "hash:ip" or "hash:net"
    version: int
    entries: tuple[str, ...]  # ipset's member syntax: "198.18.0.0/16", "198.18.1.0/24 nomatch"

    @property
    def family(self) -> str:
        return "inet" if self.version == 4 else "inet6"


@dataclass(frozen=True)
class PolicyRules:
    """One address family: the sets the rules use, and the iptables-restore input."""

    version: int
    text: str
    sets: tuple[IpSet, ...]


def endpoint_chains(endpoint_name: str) -> tuple[str, ...]:
    """Every chain name an endpoint can have (both tiers, every direction)."""
    return tuple(chain_name(prefix, endpoint_name) for p in PLACEMENTS.values()
                 for prefix in (p.prefix, p.tier_prefix))


def owned_chain(chain: str) -> bool:
    return chain.startswith(OWNED_CHAIN_PREFIXES)


def prefilter_set_name(version: int) -> str:
    return f"{SET_PREFIX}{version}-prefilter"


# --- sets -------------------------------------------------------------------------------


def _set_name(kind: str, version: int, entries: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join([kind, str(version), *entries]).encode()).digest()
    letter = "a" if kind == "hash:ip" else "n"
    return f"{SET_PREFIX}{version}{letter}-{base64.b32encode(digest).decode()[:16].lower()}"


def _storable(network: IPNetwork) -> list[IPNetwork]:
    """hash:net cannot hold a /0: its two halves say the same."""
    return list(network.subnets(prefixlen_diff=1)) if network.prefixlen == 0 else [network]


def _net_entries(nets: Iterable[IPNetwork], nomatch: Iterable[IPNetwork] = ()) -> list[str]:
    keyed = {(n, False) for net in nets for n in _storable(net)}
    keyed |= {(n, True) for net in nomatch for n in _storable(net)}
    return [f"{n} nomatch" if excluded else str(n)
            for n, excluded in sorted(keyed, key=lambda k: (k[0], k[1]))]


def _effective_excepts(block: AddressBlock) -> tuple[IPNetwork, ...] | None:
    """The excepts that take something out of the block; None when they take all of it."""
    inside = []
    for excluded in block.excepts:
        if excluded.version != block.cidr.version or not excluded.overlaps(block.cidr):
            continue
        if block.cidr.subnet_of(excluded):  # type: ignore[arg-type]
            return None
        inside.append(excluded)
    return tuple(inside)


@dataclass
class _Sets:
    """The sets one family's rules use, by name."""

    version: int
    by_name: dict[str, IpSet] = field(default_factory=dict)

    def add(self, kind: str, entries: list[str], name: str | None = None) -> str:
        name = name or _set_name(kind, self.version, entries)
        self.by_name.setdefault(name, IpSet(name, kind, self.version, tuple(entries)))
        return name


# --- matches ----------------------------------------------------------------------------


def _peer_matches(peers: PeerSet | None, sets: _Sets, source: bool) -> list[str]:
    """One match per part of PEERS in this family ("" for any peer; none: no peer here)."""
    if peers is None:
        return [""]
    side = "src" if source else "dst"
    version = sets.version
    matches = []
    pods = sorted(a for a in peers.pod_addresses if a.version == version)
    if pods:
        name = sets.add("hash:ip", [str(a) for a in pods])
        matches.append(f" -m set --match-set {name} {side}")
    plain: list[IPNetwork] = []
    excepted: list[tuple[IPNetwork, tuple[IPNetwork, ...]]] = []
    for block in peers.blocks:
        if block.cidr.version != version:
            continue
        excepts = _effective_excepts(block)
        if excepts is None:
            continue
        if excepts:
            excepted.append((block.cidr, excepts))
        else:
            plain.append(block.cidr)
    if plain:
        name = sets.add("hash:net", _net_entries(plain))
        matches.append(f" -m set --match-set {name} {side}")
    # Blocks with excepts get a set each: in one set an except of one block could hide
    # an address another block holds.
    for cidr, excepts in excepted:
        name = sets.add("hash:net", _net_entries([cidr], excepts))
        matches.append(f" -m set --match-set {name} {side}")
    if peers.host:
        matches.append(f" -m addrtype --{side}-type LOCAL")
    return matches


def _port_text(ports: PortRange) -> str:
    return str(ports.first) if ports.first == ports.last else f"{ports.first}:{ports.last}"


def _port_matches(ports: tuple[PortRange, ...], protocol: str) -> list[str]:
    if not ports:
        return [""]
    ordered = sorted(set(ports))
    if len(ordered) == 1:
        return [f" -m {protocol} --dport {_port_text(ordered[0])}"]
    chunks: list[list[PortRange]] = [[]]
    used = 0
    for port in ordered:
        slots = 1 if port.first == port.last else 2
        if used + slots > MULTIPORT_SLOTS:
            chunks.append([])
            used = 0
        chunks[-1].append(port)
        used += slots
    return [f" -m multiport --dports {','.join(map(_port_text, chunk))}" for chunk in chunks]


def _protocol_match(rule: CompiledRule, where: str) -> tuple[str, str]:
    """(-p match, protocol name for port matches)."""
    if rule.protocol is None:
        if rule.ports:
            raise ValueError(f"{where}: rule {rule.rule_id} ({rule.origin or 'no origin'}) "
                             "has ports but no protocol")
        return "", ""
    name = PROTOCOL_NAMES.get(rule.protocol, str(rule.protocol))
    if rule.ports and rule.protocol not in PROTOCOL_NAMES:
        raise ValueError(f"{where}: rule {rule.rule_id} ({rule.origin or 'no origin'}) has "
                         f"ports, but protocol {rule.protocol} has none (only TCP, UDP, SCTP)")
    for ports in rule.ports:
        if not 1 <= ports.first <= ports.last <= 65535:
            raise ValueError(f"{where}: rule {rule.rule_id} ({rule.origin or 'no origin'}): "
                             f"port range {ports} is not within 1-65535")
    return f" -p {name}", name


def _comment(rule: CompiledRule) -> str:
    text = rule.origin or f"rule {rule.rule_id}"
    cleaned = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in text)
    return f' -m comment --comment "{cleaned[:COMMENT_MAX]}"'


# --- chains -----------------------------------------------------------------------------


@dataclass
class _Table:
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def chain(self, name: str) -> None:
        self.chains.append(name)


@dataclass
class _Render:
    version: int
    sets: _Sets
    tables: dict[str, _Table] = field(default_factory=lambda: {t: _Table() for t in TABLES})

    def rule_lines(self, chain: str, rule: CompiledRule, target: str, where: str,
                   placement: Placement) -> list[str]:
        protocol, protocol_name = _protocol_match(rule, where)
        ports = _port_matches(rule.ports, protocol_name)
        comment = _comment(rule)
        return [f"-A {chain}{protocol}{peer}{port}{comment} {target}"
                for peer in _peer_matches(rule.peers, self.sets, placement.peer_is_source)
                for port in ports]


def _failsafe_lines(chain: str, failsafe: Iterable[FailsafePort],
                    direction: Direction) -> list[str]:
    if direction in FAILSAFE_INBOUND:
        wanted = [f for f in failsafe if f.inbound]
    elif direction in FAILSAFE_OUTBOUND:
        wanted = [f for f in failsafe if not f.inbound]
    else:
        return []
    lines = []
    for port in sorted(set(wanted), key=lambda f: (f.protocol, f.port)):
        name = PROTOCOL_NAMES.get(port.protocol)
        if name is None:
            raise ValueError(f"failsafe port {port.port}: protocol {port.protocol} has no ports")
        lines.append(f"-A {chain} -p {name} -m {name} --dport {port.port} "
                     f'-m comment --comment "failsafe" -j RETURN')
    return lines


def _direction_chains(render: _Render, endpoint: EndpointPolicy, direction: Direction,
                      policy: DirectionPolicy, failsafe: Sequence[FailsafePort]) -> str:
    """Write the chains of one endpoint direction; returns the endpoint chain."""
    placement = PLACEMENTS[direction]
    table = render.tables[placement.table]
    chain = chain_name(placement.prefix, endpoint.name)
    tier_chain = chain_name(placement.tier_prefix, endpoint.name)
    where = f"endpoint {endpoint.name} {direction.name.lower()}"
    allow = f"-g {UNTRACKED_ALLOW}" if direction is Direction.UNTRACKED else "-j RETURN"
    reaches_tier = (not policy.global_selected
                    or any(r.action is Action.PASS for r in policy.global_rules))
    # A tier that does not isolate admits every flow whatever its allows say.
    tier_needed = reaches_tier and policy.kubernetes_isolated
    # Passing to a Kubernetes tier that admits everything is allowing.
    to_tier = f"-g {tier_chain}" if tier_needed else allow

    table.chain(chain)
    if endpoint.host_endpoint:
        # Failsafe flows stay tracked (also untracked ones), so their replies pass as such.
        table.rules += _failsafe_lines(chain, failsafe, direction)
    targets = {Action.ALLOW: allow, Action.DENY: "-j DROP", Action.PASS: to_tier}
    for rule in policy.global_rules:
        target = (f"-j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix {rule.rule_id}"
                  if rule.action is Action.LOG else targets[rule.action])
        table.rules += render.rule_lines(chain, rule, target, where, placement)
    if policy.global_selected:
        table.rules.append(f'-A {chain} -m comment --comment "global policy default" -j DROP')
    elif tier_needed:
        table.rules.append(f"-A {chain} -g {tier_chain}")
    if tier_needed:
        table.chain(tier_chain)
        for rule in policy.kubernetes_rules:
            if rule.action is not Action.ALLOW:
                raise ValueError(f"{where}: Kubernetes tier rule {rule.rule_id} "
                                 f"({rule.origin or 'no origin'}) is {rule.action.name}, "
                                 "not ALLOW")
            table.rules += render.rule_lines(tier_chain, rule, allow, where, placement)
        table.rules.append(
            f'-A {tier_chain} -m comment --comment "network policy default" -j DROP')
    return chain


def _check_endpoint(endpoint: EndpointPolicy) -> None:
    name = endpoint.interface
    if not name or len(name) > 15 or any(c in name for c in " /\t\n\"'"):
        raise ValueError(f"endpoint {endpoint.name}: interface {name!r} is not an interface "
                         "name (1-15 characters, no spaces or slashes)")
    if not endpoint.host_endpoint:
        odd = sorted(d.name for d, p in endpoint.directions.items()
                     if p.enforced and d not in POD_DIRECTIONS)
        if odd:
            raise ValueError(f"endpoint {endpoint.name}: a pod has no {', '.join(odd)} "
                             "direction (host endpoints only)")


@dataclass
class _Dispatch:
    """Dispatch rules by slot, in the order the slots are written into their chains."""

    forward_host_in: list[str] = field(default_factory=list)  # -i hostep: forward ingress
    forward_pod_egress: list[str] = field(default_factory=list)  # -i veth
    forward_pod_ingress: list[str] = field(default_factory=list)  # -o veth
    forward_host_out: list[str] = field(default_factory=list)  # -o hostep: forward egress
    input_pod_egress: list[str] = field(default_factory=list)  # pod -> host
    input_host: list[str] = field(default_factory=list)  # host endpoint ingress
    output_pod_ingress: list[str] = field(default_factory=list)  # host -> pod
    output_host: list[str] = field(default_factory=list)  # host endpoint egress
    prednat: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)

    def add(self, endpoint: EndpointPolicy, direction: Direction, chain: str) -> None:
        iface = endpoint.interface
        if not endpoint.host_endpoint:
            if direction is Direction.INGRESS:
                self.forward_pod_ingress.append(f"-A {FORWARD_DISPATCH} -o {iface} -j {chain}")
                self.output_pod_ingress.append(f"-A {OUTPUT_DISPATCH} -o {iface} -j {chain}")
            else:
                self.forward_pod_egress.append(f"-A {FORWARD_DISPATCH} -i {iface} -j {chain}")
                self.input_pod_egress.append(f"-A {INPUT_DISPATCH} -i {iface} -j {chain}")
        elif direction is Direction.INGRESS:
            self.input_host.append(f"-A {INPUT_DISPATCH} -i {iface} -j {chain}")
        elif direction is Direction.EGRESS:
            self.output_host.append(f"-A {OUTPUT_DISPATCH} -o {iface} -j {chain}")
        elif direction is Direction.FORWARD_INGRESS:
            self.forward_host_in.append(f"-A {FORWARD_DISPATCH} -i {iface} -j {chain}")
        elif direction is Direction.FORWARD_EGRESS:
            self.forward_host_out.append(f"-A {FORWARD_DISPATCH} -o {iface} -j {chain}")
        elif direction is Direction.PREDNAT:
            self.prednat.append(f"-A {PREDNAT_DISPATCH} -i {iface} -m conntrack --ctstate NEW "
                                f"-j {chain}")
        else:
            self.untracked.append(f"-A {RAW_DISPATCH} -i {iface} -j {chain}")

    def chains(self, version: int, prefilter_set: str | None,
               nodes_set: str | None) -> dict[str, list[str]]:
        """The dispatch chains that have something to dispatch, with their rules. The
        overlay between nodes (NODES_SET: the other nodes' addresses) is never judged by
        host endpoint policy: the cluster's own pod traffic travels in it."""
        established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        cut_flow = f"-m connmark --mark {CUT_MARK}/{CUT_MARK}"
        cut = [f"{cut_flow} -p tcp -j REJECT --reject-with tcp-reset", f"{cut_flow} -j DROP"]
        overlay = f"-p udp --dport {TUNNEL_PORT} -m set --match-set {nodes_set}"
        ndp = ([f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in NDP_TYPES]
               if version == 6 else [])
        found: dict[str, list[str]] = {}
        forward = (self.forward_host_in + self.forward_pod_egress + self.forward_pod_ingress
                   + self.forward_host_out)
        if forward:
            found[FORWARD_DISPATCH] = [*(f"-A {FORWARD_DISPATCH} {r}" for r in cut),
                                     f"-A {FORWARD_DISPATCH} {established}", *forward]
        if self.input_pod_egress or self.input_host:
            untracked = ([f"-A {INPUT_DISPATCH} -m mark --mark {UNTRACKED_MARK} -j RETURN"]
                         if self.untracked else [])
            tunnel = ([f"-A {INPUT_DISPATCH} {overlay} src -j RETURN"]
                      if nodes_set and self.input_host else [])
            found[INPUT_DISPATCH] = [*(f"-A {INPUT_DISPATCH} {r}" for r in cut),
                                     f"-A {INPUT_DISPATCH} {established}",
                                     *(f"-A {INPUT_DISPATCH} {r}" for r in ndp), *untracked,
                                     *tunnel, *self.input_pod_egress, *self.input_host]
        if self.output_pod_ingress or self.output_host:
            tunnel = ([f"-A {OUTPUT_DISPATCH} {overlay} dst -j RETURN"]
                      if nodes_set and self.output_host else [])
            found[OUTPUT_DISPATCH] = [*(f"-A {OUTPUT_DISPATCH} {r}" for r in cut),
                                      f"-A {OUTPUT_DISPATCH} {established}",
                                      *(f"-A {OUTPUT_DISPATCH} {r}" for r in ndp), *tunnel,
                                      *self.output_pod_ingress, *self.output_host]
        if self.prednat:
            found[PREDNAT_DISPATCH] = list(self.prednat)
        raw = list(self.untracked)
        if prefilter_set is not None:
            raw.insert(0, f"-A {RAW_DISPATCH} -m set --match-set {prefilter_set} src "
                          '-m comment --comment "prefilter deny" -j DROP')
        if raw:
            found[RAW_DISPATCH] = raw
        return found


def policy_rules(state: PolicyState, version: int) -> PolicyRules:
    """The ipsets and the raw, mangle and filter chains of STATE for one address family.

    Raises ValueError naming the endpoint and rule when something cannot be rendered."""
    render = _Render(version, _Sets(version))
    dispatch = _Dispatch()
    for endpoint in sorted(state.endpoints, key=lambda e: e.name):
        _check_endpoint(endpoint)
        for direction in sorted(endpoint.directions):
            policy = endpoint.directions[direction]
            if policy.enforced:
                chain = _direction_chains(render, endpoint, direction, policy, state.failsafe)
                dispatch.add(endpoint, direction, chain)
    denied = [n for n in state.prefilter_deny if n.version == version]
    prefilter = (render.sets.add("hash:net", _net_entries(denied), prefilter_set_name(version))
                 if denied else None)
    nodes = [net for net, entry in state.ipcache.items()
             if entry.identity == Identity.REMOTE_NODE and net.version == version]
    nodes_set = (render.sets.add("hash:net", _net_entries(nodes))
                 if nodes and (dispatch.input_host or dispatch.output_host) else None)
    dispatch_chains = dispatch.chains(version, prefilter, nodes_set)
    if dispatch.untracked:
        render.tables["raw"].chain(UNTRACKED_ALLOW)
        render.tables["raw"].rules += [
            f"-A {UNTRACKED_ALLOW} -j MARK --set-xmark {UNTRACKED_MARK}",
            f"-A {UNTRACKED_ALLOW} -j NOTRACK",
        ]
    lines: list[str] = []
    for name in TABLES:
        table = render.tables[name]
        chains = [d.chain for d in DISPATCHES if d.table == name and d.chain in dispatch_chains]
        chains += table.chains
        if not chains:
            continue
        lines += [f"*{name}", *(f":{c} - [0:0]" for c in chains),
                  *(r for c in chains for r in dispatch_chains.get(c, ())), *table.rules,
                  "COMMIT"]
    text = "\n".join(lines) + "\n" if lines else ""
    return PolicyRules(version, text, tuple(sorted(render.sets.by_name.values(),
                                                   key=lambda s: s.name)))


def normalize_entry(set_type: str, entry: str) -> str:
    """An ipset member as `policy_rules` writes it (ipset prints /32 nets without prefix)."""
    address, _, flag = entry.partition(" ")
    if set_type == "hash:net":
        text = str(ipaddress.ip_network(address, strict=False))
    else:
        text = str(ipaddress.ip_address(address))
    return f"{text} {flag}".strip()
