"""bpf mode: a PolicyState flattened into the entries of the `policy` LPM map (policy.h).

A key is (endpoint, direction, tier, protocol, peer identity) matched in full, then a
prefix of the destination port; the value is (rank, action, rule_id), lower rank first.

- Peers become identities: a rule's pod identities, Identity.HOST when it names the node,
  and for every address block the identity of each policy CIDR inside the block and
  inside none of its excepts. That is exact because the ipcache gives every address the
  identity of the most specific policy CIDR holding it (and a block's cidr and excepts are
  policy CIDRs themselves). A rule for any peer uses Identity.ANY.
- Any protocol: protocol 0, port prefix 0. A protocol without ports: port prefix 0. A
  port range becomes the few aligned (value, prefix) blocks that cover exactly it.
- Ranks: a global rule ranks by its position in the endpoint's global rules; Log rules go
  to Tier.LOG (only there) with their position. A selected global tier adds a catch-all
  deny (any peer, protocol 0) at CATCH_ALL_RANK; every Kubernetes allow ranks
  KUBERNETES_ALLOW_RANK, and an isolated Kubernetes tier adds its catch-all deny.
- One LPM lookup per class (endpoint, direction, tier, protocol, peer) returns only the
  longest matching port prefix, so every entry carries the best verdict of all entries of
  its class whose prefix covers it, itself included. "Best" is the lowest rank, then the
  lowest rule_id (Kubernetes allows share one rank); duplicate keys keep the best.

The datapath, for each tier (global first), looks up every class of
{peer identity, peer's CIDR identity, ANY} x {protocol, 0} and takes the best verdict;
Pass or no entry in the global tier hands the flow to the Kubernetes tier, and no entry
there allows it. `evaluate` does exactly that over the entries; `evaluate_rules` decides
from the CompiledRules themselves, so the two can be checked against each other.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sluice.compile.policy import (
    GLOBAL_DEFAULT_DENY_RULE_ID,
    KUBERNETES_DEFAULT_DENY_RULE_ID,
)
from sluice.compile.policytypes import (
    CATCH_ALL_RANK,
    KUBERNETES_ALLOW_RANK,
    Action,
    AddressBlock,
    CompiledRule,
    Direction,
    DirectionPolicy,
    Identity,
    PeerSet,
    PolicyState,
    PortRange,
    Tier,
)
from sluice.model.addresses import IPAddress, IPNetwork

PORT_BITS = 16
NO_RULE_ID = 0  # the verdict when no entry decides: allowed


@dataclass(frozen=True, order=True)
class PolicyKeySpec:
    endpoint: int  # EndpointPolicy.policy_id
    direction: Direction
    tier: Tier
    proto: int  # 0: any protocol
    peer: int  # identity; Identity.ANY: any peer
    dport: int  # only the first `port_prefix` bits count
    port_prefix: int  # 0..16

    def covers(self, port: int) -> bool:
        return _masked(port, self.port_prefix) == self.dport


@dataclass(frozen=True, order=True)
class PolicyVerdictSpec:
    rank: int
    action: Action
    rule_id: int

    @property
    def order(self) -> tuple[int, int]:
        """Lower is better: rank, then rule_id."""
        return (self.rank, self.rule_id)


PolicyEntries = dict[PolicyKeySpec, PolicyVerdictSpec]
RuleShape = tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]


def rule_keys(state: PolicyState) -> RuleKeys:
    """What the rules of STATE resolve to: peer identities and port keys."""
    return RuleKeys({info.cidr: identity for identity, info in state.identities.items()
                      if info.cidr is not None})


def policy_entries(state: PolicyState) -> PolicyEntries:
    identities = rule_keys(state)
    entries: PolicyEntries = {}
    for endpoint in state.endpoints:
        for direction, policy in endpoint.directions.items():
            for key, verdict in _direction_entries(endpoint.policy_id, direction, policy,
                                                   identities):
                _keep_best(entries, key, verdict)
    return _with_covering_verdicts(entries)


def port_blocks(ports: PortRange) -> list[tuple[int, int]]:
    """The fewest aligned (value, prefix length) blocks covering exactly `ports`."""
    blocks: list[tuple[int, int]] = []
    first = ports.first
    while first <= ports.last:
        size = first & -first if first else 1 << PORT_BITS
        while size > ports.last - first + 1:
            size >>= 1
        blocks.append((first, PORT_BITS - (size.bit_length() - 1)))
        first += size
    return blocks


_PREFIX_MASKS = tuple(((1 << prefix) - 1) << (PORT_BITS - prefix)
                      for prefix in range(PORT_BITS + 1))


def _masked(port: int, prefix: int) -> int:
    return port & _PREFIX_MASKS[prefix]


def _direction_entries(endpoint: int, direction: Direction, policy: DirectionPolicy,
                       identities: RuleKeys
                       ) -> Iterable[tuple[PolicyKeySpec, PolicyVerdictSpec]]:
    for position, rule in enumerate(policy.global_rules):
        tier = Tier.LOG if rule.action is Action.LOG else Tier.GLOBAL
        yield from _rule_entries(endpoint, direction, tier, rule, rank=position,
                                 identities=identities)
    if policy.global_selected:
        yield (PolicyKeySpec(endpoint, direction, Tier.GLOBAL, 0, Identity.ANY, 0, 0),
               PolicyVerdictSpec(CATCH_ALL_RANK, Action.DENY, GLOBAL_DEFAULT_DENY_RULE_ID))
    for rule in policy.kubernetes_rules:
        yield from _rule_entries(endpoint, direction, Tier.KUBERNETES, rule,
                                 rank=KUBERNETES_ALLOW_RANK, identities=identities)
    if policy.kubernetes_isolated:
        yield (PolicyKeySpec(endpoint, direction, Tier.KUBERNETES, 0, Identity.ANY, 0, 0),
               PolicyVerdictSpec(CATCH_ALL_RANK, Action.DENY, KUBERNETES_DEFAULT_DENY_RULE_ID))


def _rule_entries(endpoint: int, direction: Direction, tier: Tier, rule: CompiledRule, *,
                  rank: int, identities: RuleKeys
                  ) -> Iterable[tuple[PolicyKeySpec, PolicyVerdictSpec]]:
    verdict = PolicyVerdictSpec(rank, rule.action, rule.rule_id)
    peers, ports = identities.shape(rule)
    for peer in peers:
        for proto, value, prefix in ports:
            yield (PolicyKeySpec(endpoint, direction, tier, proto, peer, value, prefix),
                   verdict)


def _port_keys(rule: CompiledRule) -> tuple[tuple[int, int, int], ...]:
    """(proto, dport, port prefix) of every key a rule needs."""
    if rule.protocol is None:
        return ((0, 0, 0),)
    if not rule.ports:
        return ((rule.protocol, 0, 0),)
    return tuple((rule.protocol, value, prefix)
                 for port_range in rule.ports for value, prefix in port_blocks(port_range))


def _keep_best(entries: PolicyEntries, key: PolicyKeySpec, verdict: PolicyVerdictSpec) -> None:
    present = entries.get(key)
    if present is None or verdict.order < present.order:
        entries[key] = verdict


def _with_covering_verdicts(entries: PolicyEntries) -> PolicyEntries:
    """Every entry takes the best verdict of the entries of its class that cover it."""
    classes: dict[tuple[int, int, int, int, int], dict[tuple[int, int], PolicyVerdictSpec]] = {}
    for key, verdict in entries.items():
        classes.setdefault(_class_of(key), {})[(key.dport, key.port_prefix)] = verdict
    prefixes = {cls: sorted({prefix for _, prefix in ports}) for cls, ports in classes.items()}
    result: PolicyEntries = {}
    for key, verdict in entries.items():
        cls = _class_of(key)
        ports, best = classes[cls], verdict
        for prefix in prefixes[cls]:
            if prefix >= key.port_prefix:
                break
            cover = ports.get((key.dport & _PREFIX_MASKS[prefix], prefix))
            if cover is not None and cover.order < best.order:
                best = cover
        result[key] = best
    return result


def _class_of(key: PolicyKeySpec) -> tuple[int, int, int, int, int]:
    return (key.endpoint, key.direction, key.tier, key.proto, key.peer)


class RuleKeys:
    """The identities a PeerSet stands for in the policy map, and the keys of a rule."""

    def __init__(self, cidr_identities: Mapping[IPNetwork, int]) -> None:
        starts: dict[int, list[tuple[int, int, IPNetwork]]] = {4: [], 6: []}
        for cidr in cidr_identities:
            starts[cidr.version].append((int(cidr.network_address), cidr.prefixlen, cidr))
        self._sorted = {version: sorted(found) for version, found in starts.items()}
        self._identity = cidr_identities
        self._cache: dict[AddressBlock, frozenset[int]] = {}
        # By object: policy_state shares one CompiledRule among the endpoints it applies to.
        self._shapes: dict[int, tuple[CompiledRule, RuleShape]] = {}

    def shape(self, rule: CompiledRule) -> RuleShape:
        """(peer identities, (proto, dport, prefix) keys) of a rule."""
        known = self._shapes.get(id(rule))
        if known is None or known[0] is not rule:
            known = (rule, (tuple(sorted(self.of(rule.peers))), _port_keys(rule)))
            self._shapes[id(rule)] = known
        return known[1]

    def of(self, peers: PeerSet | None) -> frozenset[int]:
        if peers is None:
            return frozenset({Identity.ANY})
        found = set(peers.identities)
        if peers.host:
            found.add(Identity.HOST)
        for block in peers.blocks:
            found |= self._block(block)
        return frozenset(found)

    def _block(self, block: AddressBlock) -> frozenset[int]:
        """Identities of the policy CIDRs inside `block.cidr` and inside none of its excepts."""
        cached = self._cache.get(block)
        if cached is None:
            cidr = block.cidr
            candidates = self._sorted[cidr.version]
            low = bisect.bisect_left(candidates, (int(cidr.network_address), -1))
            high = bisect.bisect_right(candidates,
                                       (int(cidr.broadcast_address), cidr.max_prefixlen + 1))
            excepts = [e for e in block.excepts if e.version == cidr.version]
            cached = frozenset(
                self._identity[network] for _, prefixlen, network in candidates[low:high]
                if prefixlen >= cidr.prefixlen
                and not any(_inside(network, excluded) for excluded in excepts))
            self._cache[block] = cached
        return cached


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return (inner.prefixlen >= outer.prefixlen
            and int(inner.network_address) >= int(outer.network_address)
            and int(inner.broadcast_address) <= int(outer.broadcast_address))


# -- reference evaluators

@dataclass(frozen=True)
class Flow:
    """The first packet of a flow as an endpoint's policy sees it."""

    endpoint: int  # EndpointPolicy.policy_id
    direction: Direction
    peer_address: IPAddress
    peer_identity: int  # what the ipcache says of peer_address
    peer_cidr_identity: int
    proto: int
    port: int  # destination port; 0 for protocols without ports


def evaluate(entries: Mapping[PolicyKeySpec, PolicyVerdictSpec],
             flow: Flow) -> tuple[Action, int]:
    """The datapath's decision from the flattened entries: (ALLOW or DENY, rule_id)."""
    decided = _tier_lookup(entries, flow, Tier.GLOBAL)
    if decided is not None and decided.action in (Action.ALLOW, Action.DENY):
        return decided.action, decided.rule_id
    decided = _tier_lookup(entries, flow, Tier.KUBERNETES)
    if decided is not None:
        return decided.action, decided.rule_id
    return Action.ALLOW, NO_RULE_ID


def logged_rule(entries: Mapping[PolicyKeySpec, PolicyVerdictSpec], flow: Flow) -> int | None:
    """The best Log rule that matches (the datapath records it when it ranks before the
    global tier's decision)."""
    found = _tier_lookup(entries, flow, Tier.LOG)
    return None if found is None else found.rule_id


def _tier_lookup(entries: Mapping[PolicyKeySpec, PolicyVerdictSpec], flow: Flow,
                 tier: Tier) -> PolicyVerdictSpec | None:
    best: PolicyVerdictSpec | None = None
    for peer in dict.fromkeys((flow.peer_identity, flow.peer_cidr_identity, Identity.ANY)):
        for proto in dict.fromkeys((flow.proto, 0)):
            found = _longest_prefix(entries, PolicyKeySpec(
                flow.endpoint, flow.direction, tier, proto, peer, flow.port, PORT_BITS))
            if found is not None and (best is None or found.order < best.order):
                best = found
    return best


def _longest_prefix(entries: Mapping[PolicyKeySpec, PolicyVerdictSpec],
                    key: PolicyKeySpec) -> PolicyVerdictSpec | None:
    for prefix in range(PORT_BITS, -1, -1):
        found = entries.get(PolicyKeySpec(key.endpoint, key.direction, key.tier, key.proto,
                                          key.peer, _masked(key.dport, prefix), prefix))
        if found is not None:
            return found
    return None


def evaluate_rules(state: PolicyState, flow: Flow) -> tuple[Action, int]:
    """The decision from the CompiledRules, without flattening: pods are matched by
    address, the node by identity (HOST), blocks by address."""
    policy = next((e.directions.get(flow.direction) for e in state.endpoints
                   if e.policy_id == flow.endpoint), None)
    if policy is None:
        return Action.ALLOW, NO_RULE_ID
    decided = next((rule for rule in policy.global_rules
                    if rule.action is not Action.LOG and _rule_matches(rule, flow)), None)
    if decided is None and policy.global_selected:
        return Action.DENY, GLOBAL_DEFAULT_DENY_RULE_ID
    if decided is not None and decided.action is not Action.PASS:
        return decided.action, decided.rule_id
    allowing = [rule.rule_id for rule in policy.kubernetes_rules if _rule_matches(rule, flow)]
    if allowing:
        return Action.ALLOW, min(allowing)
    if policy.kubernetes_isolated:
        return Action.DENY, KUBERNETES_DEFAULT_DENY_RULE_ID
    return Action.ALLOW, NO_RULE_ID


def _rule_matches(rule: CompiledRule, flow: Flow) -> bool:
    if rule.protocol is not None and (
            rule.protocol != flow.proto
            or (rule.ports and not any(r.first <= flow.port <= r.last for r in rule.ports))):
        return False
    peers = rule.peers
    return peers is None or (
        flow.peer_address in peers.pod_addresses
        or (peers.host and flow.peer_identity == Identity.HOST)
        or any(block.contains(flow.peer_address) for block in peers.blocks))

