"""bpf flattening of policy: port prefixes, ranks, covering verdicts, peer identities, and
random clusters on which the flattened lookup must decide exactly as the rules do."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from sluice.compile.identities import IpcacheLookup, PodAddresses, ipcache_entries
from sluice.compile.policy import (
    GLOBAL_DEFAULT_DENY_RULE_ID,
    KUBERNETES_DEFAULT_DENY_RULE_ID,
    policy_state,
)
from sluice.compile.policyflat import (
    NO_RULE_ID,
    Flow,
    PolicyKeySpec,
    PolicyVerdictSpec,
    evaluate,
    evaluate_rules,
    policy_entries,
    port_blocks,
)
from sluice.compile.policytypes import (
    CATCH_ALL_RANK,
    KUBERNETES_ALLOW_RANK,
    Action,
    AddressBlock,
    CompiledRule,
    Direction,
    DirectionPolicy,
    EndpointPolicy,
    Identity,
    IdentityInfo,
    PeerSet,
    PolicyState,
    PortRange,
    Tier,
)
from sluice.datastore import ClusterState
from sluice.model import Resource
from sluice.model.addresses import IPAddress
from tests.compile.helpers import N1, N2
from tests.compile.test_policy_semantics import (
    endpoints_of,
    global_policy,
    host_endpoint,
    namespace,
    network_policy,
    pod,
)

NET = ip_network
TCP, UDP = 6, 17
ENDPOINT = 7
IN = Direction.INGRESS
PEER = 300  # a pod identity in the hand-built states
OTHER_PEER = 301


# -- port ranges to prefixes

def _canonical_cover(first: int, last: int, low: int = 0, bits: int = 16
                     ) -> Iterator[tuple[int, int]]:
    """The maximal aligned blocks of [first, last], by walking the binary trie."""
    high = low + (1 << bits) - 1
    if last < low or first > high:
        return
    if first <= low and high <= last:
        yield low, 16 - bits
        return
    half = 1 << (bits - 1)
    yield from _canonical_cover(first, last, low, bits - 1)
    yield from _canonical_cover(first, last, low + half, bits - 1)


@pytest.mark.parametrize(("first", "last", "expected"), [
    (80, 80, [(80, 16)]),
    (0, 65535, [(0, 0)]),
    (1024, 2047, [(1024, 6)]),
    (1000, 1003, [(1000, 14)]),
    (1, 3, [(1, 16), (2, 15)]),
])
def test_port_blocks_known_ranges(first: int, last: int, expected: list[tuple[int, int]]) -> None:
    assert port_blocks(PortRange(first, last)) == expected


def test_port_blocks_cover_exactly_with_the_fewest_blocks() -> None:
    rng = random.Random(5)
    ranges = [(1, 65535), (0, 0), (65535, 65535), (32768, 65535), (1, 32767)]
    for _ in range(2000):
        low, high = sorted((rng.randrange(65536), rng.randrange(65536)))
        ranges.append((low, high))
    for first, last in ranges:
        blocks = port_blocks(PortRange(first, last))
        covered: list[int] = []
        for value, prefix in blocks:
            size = 1 << (16 - prefix)
            assert value % size == 0, f"{first}-{last}: {value}/{prefix} is not aligned"
            covered += range(value, value + size)
        assert covered == list(range(first, last + 1))
        assert blocks == list(_canonical_cover(first, last))
    assert len(port_blocks(PortRange(1, 65535))) == 16


# -- hand-built states

def _rule(rule_id: int, action: Action, *, peers: PeerSet | None = None,
          protocol: int | None = TCP, ports: tuple[PortRange, ...] = ()) -> CompiledRule:
    return CompiledRule(rule_id, action, peers, protocol, ports, f"rule {rule_id}")


PODS = PeerSet(identities=frozenset({PEER}))


def _state(policy: DirectionPolicy, identities: dict[int, IdentityInfo] | None = None
           ) -> PolicyState:
    endpoint = EndpointPolicy("x/a", ENDPOINT, 299, (ip_address("198.18.16.10"),), "lxc0",
                              {IN: policy})
    return PolicyState(endpoints=(endpoint,), identities=identities or {})


def _flow(port: int, proto: int = TCP, peer: int = PEER, cidr_peer: int = Identity.WORLD_V4,
          address: str = "198.18.16.20") -> Flow:
    return Flow(ENDPOINT, IN, ip_address(address), peer, cidr_peer, proto, port)


def _key(tier: Tier, peer: int, dport: int, prefix: int, proto: int = TCP) -> PolicyKeySpec:
    return PolicyKeySpec(ENDPOINT, IN, tier, proto, peer, dport, prefix)


def test_a_longer_prefix_carries_the_better_verdict_that_covers_it() -> None:
    state = _state(DirectionPolicy(global_rules=(
        _rule(20, Action.DENY, peers=PODS, ports=(PortRange(1000, 2000),)),
        _rule(21, Action.ALLOW, peers=PODS, ports=(PortRange(1024, 1024),)),
    )))
    entries = policy_entries(state)
    assert entries[_key(Tier.GLOBAL, PEER, 1024, 16)] == PolicyVerdictSpec(0, Action.DENY, 20), \
        "the exact port would win the LPM lookup: it must carry the earlier deny"
    assert evaluate(entries, _flow(1024)) == (Action.DENY, 20)
    assert evaluate(entries, _flow(2001)) == (Action.ALLOW, NO_RULE_ID)

    reversed_order = _state(DirectionPolicy(global_rules=(
        _rule(21, Action.ALLOW, peers=PODS, ports=(PortRange(1024, 1024),)),
        _rule(20, Action.DENY, peers=PODS, ports=(PortRange(1000, 2000),)),
    )))
    entries = policy_entries(reversed_order)
    assert evaluate(entries, _flow(1024)) == (Action.ALLOW, 21)
    assert evaluate(entries, _flow(1025)) == (Action.DENY, 20)


def test_classes_are_combined_by_rank() -> None:
    state = _state(DirectionPolicy(global_rules=(
        _rule(30, Action.DENY, peers=None, protocol=None),
        _rule(31, Action.ALLOW, peers=PODS, ports=(PortRange(80, 80),)),
    )))
    entries = policy_entries(state)
    assert entries[_key(Tier.GLOBAL, Identity.ANY, 0, 0, proto=0)].rank == 0
    assert entries[_key(Tier.GLOBAL, PEER, 80, 16)].rank == 1, "another class: its own rank"
    assert evaluate(entries, _flow(80)) == (Action.DENY, 30)


def test_log_rules_go_to_the_log_tier_only_and_catch_alls_rank_last() -> None:
    state = _state(DirectionPolicy(
        global_rules=(_rule(40, Action.LOG, peers=None, protocol=None),
                      _rule(41, Action.PASS, peers=PODS, protocol=UDP)),
        global_selected=True,
        kubernetes_rules=(_rule(42, Action.ALLOW, peers=PODS, protocol=UDP,
                                ports=(PortRange(53, 53),)),),
        kubernetes_isolated=True))
    entries = policy_entries(state)
    assert entries == {
        _key(Tier.LOG, Identity.ANY, 0, 0, proto=0): PolicyVerdictSpec(0, Action.LOG, 40),
        _key(Tier.GLOBAL, PEER, 0, 0, proto=UDP): PolicyVerdictSpec(1, Action.PASS, 41),
        _key(Tier.GLOBAL, Identity.ANY, 0, 0, proto=0):
            PolicyVerdictSpec(CATCH_ALL_RANK, Action.DENY, GLOBAL_DEFAULT_DENY_RULE_ID),
        _key(Tier.KUBERNETES, PEER, 53, 16, proto=UDP):
            PolicyVerdictSpec(KUBERNETES_ALLOW_RANK, Action.ALLOW, 42),
        _key(Tier.KUBERNETES, Identity.ANY, 0, 0, proto=0):
            PolicyVerdictSpec(CATCH_ALL_RANK, Action.DENY, KUBERNETES_DEFAULT_DENY_RULE_ID),
    }
    assert evaluate(entries, _flow(53, UDP)) == (Action.ALLOW, 42)
    assert evaluate(entries, _flow(54, UDP)) == (Action.DENY, KUBERNETES_DEFAULT_DENY_RULE_ID)
    assert evaluate(entries, _flow(53, TCP)) == (Action.DENY, GLOBAL_DEFAULT_DENY_RULE_ID)


def test_duplicate_keys_keep_the_lowest_rank_and_kubernetes_ties_the_lowest_id() -> None:
    state = _state(DirectionPolicy(
        global_rules=(_rule(50, Action.ALLOW, peers=PODS, ports=(PortRange(80, 80),)),
                      _rule(51, Action.DENY, peers=PODS, ports=(PortRange(80, 80),))),
        kubernetes_rules=(_rule(61, Action.ALLOW, peers=PODS), _rule(60, Action.ALLOW,
                                                                      peers=PODS))))
    entries = policy_entries(state)
    assert entries[_key(Tier.GLOBAL, PEER, 80, 16)] == PolicyVerdictSpec(0, Action.ALLOW, 50)
    assert entries[_key(Tier.KUBERNETES, PEER, 0, 0)].rule_id == 60


def test_blocks_become_the_identities_of_policy_cidrs_inside_and_not_excepted() -> None:
    cidrs = {1000: NET("10.0.0.0/8"), 1001: NET("10.1.0.0/16"), 1002: NET("10.1.2.0/24"),
             1003: NET("10.2.0.0/16"), 1004: NET("11.0.0.0/8"), 1005: NET("fd00::/8"),
             Identity.WORLD_V4: NET("0.0.0.0/0")}
    identities = {i: IdentityInfo(i, cidr=c) for i, c in cidrs.items()}
    block = AddressBlock(NET("10.0.0.0/8"), (NET("10.1.0.0/16"),))
    peers = PeerSet(identities=frozenset({PEER}), blocks=(block,), host=True)
    state = _state(DirectionPolicy(global_rules=(_rule(70, Action.ALLOW, peers=peers),)),
                   identities)
    entries = policy_entries(state)
    assert {key.peer for key in entries} == {PEER, Identity.HOST, 1000, 1003}
    world = AddressBlock(NET("0.0.0.0/0"), (NET("10.0.0.0/8"),))
    state = _state(DirectionPolicy(global_rules=(
        _rule(71, Action.ALLOW, peers=PeerSet(blocks=(world,))),)), identities)
    assert {key.peer for key in policy_entries(state)} == {Identity.WORLD_V4, 1004}


def test_do_not_track_rules_flatten_into_the_untracked_direction() -> None:
    cluster = ClusterState([
        N1, N2, host_endpoint("n1-eth0", "n1", "eth0", {"role": "edge"}),
        global_policy("drop-udp", {"hostEndpointSelector": {"matchLabels": {"role": "edge"}},
                                   "doNotTrack": True, "applyOnForward": True,
                                   "ingress": [{"action": "Deny", "ports": [
                                       {"protocol": "UDP", "port": 9}]}]})])
    state = policy_state(cluster, "n1", [], interface_ifindexes={"eth0": 2})
    entries = policy_entries(state)
    assert {(k.endpoint, k.direction, k.tier) for k in entries} == {
        (2, Direction.UNTRACKED, Tier.GLOBAL)}
    flow = Flow(2, Direction.UNTRACKED, ip_address("203.0.113.1"), Identity.WORLD_V4,
                Identity.WORLD_V4, UDP, 9)
    assert evaluate(entries, flow)[0] is Action.DENY


# -- random rule lists over few peers and overlapping ports: ranks and covering prefixes

_POD_ADDRESSES = {300: "198.18.16.30", 301: "198.18.16.31"}
_BLOCKS = (AddressBlock(NET("10.0.0.0/8"), (NET("10.1.0.0/16"),)), AddressBlock(NET("0.0.0.0/0")))
_PEER_ADDRESSES = ("198.18.16.30", "198.18.16.31", "198.18.0.11", "10.0.0.1", "10.1.0.1",
                   "8.8.8.8")


def _random_peers(rng: random.Random) -> PeerSet | None:
    choice = rng.randrange(5)
    if choice == 0:
        return None
    if choice == 1:
        return PeerSet(host=True, identities=frozenset({Identity.HOST}))
    if choice == 2:
        return PeerSet(blocks=(rng.choice(_BLOCKS),))
    chosen = rng.sample(sorted(_POD_ADDRESSES), rng.randrange(1, 3))
    return PeerSet(identities=frozenset(chosen),
                   pod_addresses=frozenset(ip_address(_POD_ADDRESSES[i]) for i in chosen))


def _random_rule(rng: random.Random, rule_id: int, actions: tuple[Action, ...]) -> CompiledRule:
    protocol = rng.choice((None, TCP, TCP, UDP))
    ports: tuple[PortRange, ...] = ()
    if protocol is not None and rng.random() < 0.8:
        firsts = [rng.randrange(41) for _ in range(rng.randrange(1, 3))]
        ports = tuple(PortRange(f, f + rng.choice((0, 0, 1, 3, 7, 15, 20))) for f in firsts)
    return _rule(rule_id, rng.choice(actions), peers=_random_peers(rng), protocol=protocol,
                 ports=ports)


def test_flattened_lookup_agrees_with_random_overlapping_rules() -> None:
    rng = random.Random(11)
    identity_of = {"p300": 300, "p301": 301, "cidr:10.0.0.0/8": 1000, "cidr:10.1.0.0/16": 1001}
    ipcache = ipcache_entries(
        [PodAddresses(f"p{i}", (ip_address(a),)) for i, a in _POD_ADDRESSES.items()],
        [ip_address("198.18.0.11")], [], [NET("10.0.0.0/8"), NET("10.1.0.0/16")], identity_of)
    identities = {1000: IdentityInfo(1000, cidr=NET("10.0.0.0/8")),
                  1001: IdentityInfo(1001, cidr=NET("10.1.0.0/16")),
                  int(Identity.WORLD_V4): IdentityInfo(Identity.WORLD_V4, cidr=NET("0.0.0.0/0"))}
    lookup = IpcacheLookup(ipcache)
    decided_by_rule = 0
    for case in range(300):
        global_actions = (Action.ALLOW, Action.DENY, Action.PASS, Action.LOG)
        policy = DirectionPolicy(
            global_rules=tuple(_random_rule(rng, 100 + i, global_actions)
                               for i in range(rng.randrange(8))),
            global_selected=rng.random() < 0.5,
            kubernetes_rules=tuple(_random_rule(rng, 200 + i, (Action.ALLOW,))
                                   for i in range(rng.randrange(5))),
            kubernetes_isolated=rng.random() < 0.7)
        state = _state(policy, identities)
        entries = policy_entries(state)
        for _ in range(80):
            address = ip_address(rng.choice(_PEER_ADDRESSES))
            entry = lookup(address)
            assert entry is not None
            flow = Flow(ENDPOINT, IN, address, entry.identity, entry.cidr_identity,
                        rng.choice((TCP, UDP, 1)), rng.randrange(46))
            flattened = evaluate(entries, flow)
            assert flattened == evaluate_rules(state, flow), f"case {case}: {flow}\n{policy}"
            decided_by_rule += flattened[1] >= 100
    assert decided_by_rule > 6_000


# -- random clusters: the flattened lookup decides exactly as the rules

CIDR_POOL = ("198.18.16.0/24", "198.18.16.0/28", "198.18.16.16/28", "198.18.16.24/29",
             "198.18.17.0/24", "198.18.0.0/24", "198.18.0.11/32", "198.18.0.0/15",
             "0.0.0.0/0", "203.0.113.0/24", "203.0.113.128/25", "198.18.16.12/32",
             "fd00:10::/32", "fd00:10:1::/48", "fd00:10:1::10/124", "::/0", "fd00:ff::/64")
PORT_NAMES = ("web", "metrics", "dns")
NUMBERS = (53, 80, 81, 443, 1000, 1023, 1024, 8080, 9090)


class _RandomCluster:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.identity_ports: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}

    def selector(self) -> dict[str, Any]:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            return {}
        if choice == 1:
            return {"matchLabels": {"app": rng.choice(("web", "db", "cache"))}}
        if choice == 2:
            return {"matchLabels": {"ns": rng.choice("xyz")}}
        operator = rng.choice(("In", "NotIn", "Exists", "DoesNotExist"))
        key = rng.choice(("app", "tier", "team"))
        values = rng.sample(("web", "db", "front", "back", "red"), 2) \
            if operator in ("In", "NotIn") else []
        return {"matchExpressions": [{"key": key, "operator": operator, "values": values}]}

    def ip_block(self) -> dict[str, Any]:
        cidr = NET(self.rng.choice(CIDR_POOL))
        inside = [c for c in CIDR_POOL if NET(c).version == cidr.version
                  and NET(c) != cidr and NET(c).subnet_of(cidr)]  # type: ignore[arg-type]
        excepts = self.rng.sample(inside, min(len(inside), self.rng.randrange(3)))
        return {"cidr": str(cidr), "except": excepts}

    def peer(self, global_peer: bool) -> dict[str, Any]:
        choice = self.rng.randrange(6 if global_peer else 5)
        if choice == 0:
            return {"podSelector": self.selector()}
        if choice == 1:
            return {"namespaceSelector": self.selector()}
        if choice == 2:
            return {"podSelector": self.selector(), "namespaceSelector": self.selector()}
        if choice in (3, 4):
            return {"ipBlock": self.ip_block()}
        return {"nets": self.rng.sample(CIDR_POOL, 2)}

    def ports(self) -> list[dict[str, Any]]:
        rng = self.rng
        found: list[dict[str, Any]] = []
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            protocol = rng.choice(("TCP", "TCP", "UDP", "SCTP"))
            kind = rng.randrange(4)
            if kind == 0:
                found.append({"protocol": protocol, "port": rng.choice(NUMBERS)})
            elif kind == 1:
                first = rng.choice(NUMBERS)
                found.append({"protocol": protocol, "port": first,
                              "endPort": first + rng.choice((1, 7, 100, 1000))})
            elif kind == 2:
                found.append({"protocol": protocol, "port": rng.choice(PORT_NAMES)})
            else:
                found.append({"protocol": protocol})
        return found

    def pod(self, ns: str, index: int) -> Resource:
        rng = self.rng
        labels = {"app": rng.choice(("web", "db", "cache"))}
        if rng.random() < 0.5:
            labels["tier"] = rng.choice(("front", "back"))
        key = (ns, tuple(sorted(labels.items())))
        # Pods of one identity get the same ports, so a named port resolves alike for all.
        ports = self.identity_ports.setdefault(key, [
            {"name": name, "containerPort": rng.choice(NUMBERS),
             "protocol": rng.choice(("TCP", "UDP"))}
            for name in rng.sample(PORT_NAMES, rng.randrange(4))])
        node = rng.choice(("n1", "n2"))
        subnet = 16 if node == "n1" else 17
        host = 10 + 8 * "xyz".index(ns) + index
        return pod(ns, f"p{index}", labels=labels, node=node, ports=ports,
                   ips=(f"198.18.{subnet}.{host}", f"fd00:10:{subnet - 15}::{host:x}"))

    def global_rule(self, ingress: bool, actions: tuple[str, ...]) -> dict[str, Any]:
        rule: dict[str, Any] = {"action": self.rng.choice(actions), "ports": self.ports()}
        if self.rng.random() < 0.7:
            rule["from" if ingress else "to"] = [self.peer(True)
                                                 for _ in range(self.rng.randrange(1, 3))]
        return rule

    def global_policy(self, name: str) -> Resource:
        rng = self.rng
        spec: dict[str, Any] = {"order": rng.randrange(3)}
        flavour = rng.choice(("pods", "pods", "hosts", "forward", "preDNAT", "doNotTrack"))
        if flavour == "pods":
            spec["podSelector" if rng.random() < 0.5 else "namespaceSelector"] = self.selector()
        else:
            spec["hostEndpointSelector"] = {"matchLabels": {"role": "edge"}}
        actions: tuple[str, ...] = ("Allow", "Deny", "Pass", "Log")
        if flavour in ("preDNAT", "doNotTrack"):
            spec["applyOnForward"] = True
            spec[flavour] = True
            actions = ("Allow", "Deny", "Log") if flavour == "preDNAT" else ("Allow", "Deny")
        elif flavour == "forward":
            spec["applyOnForward"] = True
        spec["ingress"] = [self.global_rule(True, actions) for _ in range(rng.randrange(4))]
        if flavour not in ("preDNAT", "doNotTrack"):
            spec["egress"] = [self.global_rule(False, actions) for _ in range(rng.randrange(3))]
        return global_policy(name, spec)

    def network_policy(self, name: str) -> Resource:
        rng = self.rng
        spec: dict[str, Any] = {"podSelector": self.selector()}
        if rng.random() < 0.5:
            spec["policyTypes"] = rng.choice((["Ingress"], ["Egress"], ["Ingress", "Egress"]))
        for side, peers in (("ingress", "from"), ("egress", "to")):
            rules = []
            for _ in range(rng.randrange(3)):
                rule: dict[str, Any] = {"ports": self.ports()}
                if rng.random() < 0.7:
                    rule[peers] = [self.peer(False) for _ in range(rng.randrange(1, 3))]
                rules.append(rule)
            spec[side] = rules
        return network_policy(rng.choice("xyz"), name, spec)

    def cluster(self) -> ClusterState:
        rng = self.rng
        objects: list[Resource] = [N1, N2]
        objects += [namespace(ns, ns=ns, team=rng.choice(("red", "blue"))) for ns in "xyz"]
        objects += [self.pod(ns, i) for ns in "xyz" for i in range(rng.randrange(2, 6))]
        objects += [self.network_policy(f"np{i}") for i in range(rng.randrange(4))]
        objects += [self.global_policy(f"gnp{i}") for i in range(rng.randrange(3))]
        objects.append(host_endpoint("n1-eth0", "n1", "eth0", {"role": "edge"}))
        return ClusterState(objects)


def _peer_addresses(cluster: ClusterState, rng: random.Random) -> list[IPAddress]:
    addresses = [ip for p in cluster.pods() for ip in p.ips]
    addresses += [ip for n in cluster.nodes() for ip in n.internal_ips]
    edges = [address for cidr in CIDR_POOL for net in (NET(cidr),)
             for address in (net.network_address, net.broadcast_address)]
    addresses += edges
    addresses += [ip_address(f"198.18.16.{rng.randrange(256)}") for _ in range(5)]
    addresses += [ip_address(f"203.0.113.{rng.randrange(256)}") for _ in range(3)]
    addresses += [ip_address(f"fd00:10:1::{rng.randrange(64):x}"), ip_address("8.8.8.8"),
                  ip_address("2001:db8::1")]
    return addresses


def test_flattened_lookup_agrees_with_the_rules_on_random_clusters() -> None:
    rng = random.Random(20260121)
    outcomes: Counter[tuple[Action, str]] = Counter()
    compared = 0
    for _ in range(80):
        cluster = _RandomCluster(rng).cluster()
        state = policy_state(cluster, "n1", endpoints_of(cluster, "n1"),
                             interface_ifindexes={"eth0": 2})
        entries = policy_entries(state)
        lookup = IpcacheLookup(state.ipcache)
        addresses = _peer_addresses(cluster, rng)
        for endpoint in state.endpoints:
            for direction in endpoint.directions or (Direction.INGRESS,):
                for _ in range(45):
                    address = rng.choice(addresses)
                    entry = lookup(address)
                    assert entry is not None
                    proto = rng.choice((6, 6, 17, 132, 1))
                    port = 0 if proto == 1 else rng.choice(
                        (*NUMBERS, 0, 54, 82, 999, 1001, 1100, 1101, 2023, 2024, 65535))
                    flow = Flow(endpoint.policy_id, direction, address, entry.identity,
                                entry.cidr_identity, proto, port)
                    flattened, direct = evaluate(entries, flow), evaluate_rules(state, flow)
                    assert flattened == direct, (
                        f"{endpoint.name} {flow}: flattened {flattened}, rules {direct}\n"
                        f"{endpoint.directions.get(direction)}")
                    compared += 1
                    outcomes[(flattened[0], _decided_by(flattened[1]))] += 1
    print(f"\n{compared} random flows compared: {dict(outcomes)}")
    assert compared > 15_000
    for outcome in [(Action.ALLOW, "rule"), (Action.DENY, "rule"), (Action.ALLOW, "no policy"),
                    (Action.DENY, "global default"), (Action.DENY, "kubernetes default")]:
        assert outcomes[outcome] > 200, f"the random cases rarely reach {outcome}"


def _decided_by(rule_id: int) -> str:
    return {NO_RULE_ID: "no policy", GLOBAL_DEFAULT_DENY_RULE_ID: "global default",
            KUBERNETES_DEFAULT_DENY_RULE_ID: "kubernetes default"}.get(rule_id, "rule")
