"""Pure compile of network policy: what NetworkPolicy and GlobalNetworkPolicy mean.

Every decision below is taken twice, from the CompiledRules and from the flattened bpf
entries (through the ipcache, as the datapath does), and the two must agree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any

from sluice.compile.endpoints import LocalEndpoint
from sluice.compile.identities import IpcacheLookup, pod_identity_key
from sluice.compile.policy import (
    GLOBAL_DEFAULT_DENY_RULE_ID,
    KUBERNETES_DEFAULT_DENY_RULE_ID,
    OWN_NODE_RULE_ID,
    policy_state,
)
from sluice.compile.policyflat import (
    Flow,
    PolicyEntries,
    evaluate,
    evaluate_rules,
    logged_rule,
    policy_entries,
)
from sluice.compile.policytypes import (
    Action,
    Direction,
    EndpointPolicy,
    FailsafePort,
    Identity,
    PolicyState,
)
from sluice.datastore import ClusterState
from sluice.model import (
    GlobalNetworkPolicy,
    HostEndpoint,
    Namespace,
    NetworkPolicy,
    Pod,
    PrefilterDenyList,
    Resource,
)
from sluice.model.addresses import IPAddress
from tests.compile.helpers import N1, N2

IN, OUT = Direction.INGRESS, Direction.EGRESS
ALLOW, DENY = Action.ALLOW, Action.DENY
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}
NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
NODE_OF = {"a": "n1", "b": "n1", "c": "n2"}  # n1 InternalIP 198.18.0.11, n2 198.18.0.12
SERVE_PORTS: tuple[dict[str, Any], ...] = (
    {"name": "serve-80-tcp", "containerPort": 80},
    {"name": "serve-81-tcp", "containerPort": 81},
    {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
    {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
)


# -- cluster builders (also used by test_policy_flatten)

def pod_ip(namespace: str, name: str) -> str:
    subnet = 16 if NODE_OF.get(name, "n1") == "n1" else 17
    return f"198.18.{subnet}.{10 + 3 * NAMESPACES.index(namespace) + POD_NAMES.index(name)}"


def pod_ip6(namespace: str, name: str) -> str:
    node_index = 1 if NODE_OF.get(name, "n1") == "n1" else 2
    host = 10 + 3 * NAMESPACES.index(namespace) + POD_NAMES.index(name)
    return f"fd00:10:{node_index}::{host:x}"


def namespace(name: str, **labels: str) -> Namespace:
    return Namespace.model_validate({"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name, "labels": labels}})


def pod(namespace_name: str, name: str, *, labels: Mapping[str, str] | None = None,
        ips: Sequence[str] = (), node: str = "n1",
        ports: Sequence[Mapping[str, Any]] = SERVE_PORTS, phase: str = "Running",
        host_network: bool = False) -> Pod:
    return Pod.model_validate({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace_name,
                     "labels": dict(labels if labels is not None else {"pod": name})},
        "spec": {"nodeName": node, "hostNetwork": host_network,
                 "containers": [{"name": "c", "ports": list(ports)}]},
        "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]},
    })


def network_policy(namespace_name: str, name: str, spec: Mapping[str, Any]) -> NetworkPolicy:
    return NetworkPolicy.model_validate({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace_name}, "spec": dict(spec)})


def global_policy(name: str, spec: Mapping[str, Any]) -> GlobalNetworkPolicy:
    return GlobalNetworkPolicy.model_validate({
        "apiVersion": "sluice.io/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name}, "spec": dict(spec)})


def host_endpoint(name: str, node: str, interface: str,
                  labels: Mapping[str, str]) -> HostEndpoint:
    return HostEndpoint.model_validate({
        "apiVersion": "sluice.io/v1", "kind": "HostEndpoint",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"node": node, "interfaceName": interface}})


def standard_cluster(*extra: Resource) -> ClusterState:
    """Namespaces x, y, z (ns=<name>), pods a, b (node n1) and c (n2) in each (pod=<name>)
    serving TCP and UDP 80 and 81, dual-stack; `extra` objects are added or replace these."""
    objects: list[Resource] = [N1, N2]
    objects += [namespace(ns, ns=ns) for ns in NAMESPACES]
    objects += [pod(ns, name, ips=(pod_ip(ns, name), pod_ip6(ns, name)), node=NODE_OF[name])
                for ns in NAMESPACES for name in POD_NAMES]
    return ClusterState([*objects, *extra])


def endpoints_of(state: ClusterState, node: str) -> list[LocalEndpoint]:
    return [LocalEndpoint(f"{p.namespace}_{p.name}", f"{p.namespace}/{p.name}", p.ips,
                          f"lxc{index}", 100 + index, "02:00:00:00:00:01", "02:00:00:00:00:02")
            for index, p in enumerate(state.pods())
            if p.spec.node_name == node and not p.spec.host_network]


@dataclass
class Compiled:
    cluster: ClusterState
    state: PolicyState
    entries: PolicyEntries
    lookup: IpcacheLookup = field(init=False)

    def __post_init__(self) -> None:
        self.lookup = IpcacheLookup(self.state.ipcache)

    def endpoint(self, name: str) -> EndpointPolicy:
        return next(e for e in self.state.endpoints if e.name == name)

    def address(self, peer: str, family: int = 4) -> IPAddress:
        if "/" in peer:
            namespace_name, name = peer.split("/")
            found = next(p for p in self.cluster.pods(namespace_name) if p.name == name)
            return next(ip for ip in found.ips if ip.version == family)
        return ip_address(peer)

    def flow(self, endpoint: str, direction: Direction, peer: str, proto: str = "TCP",
             port: int = 80, *, family: int = 4) -> Flow:
        address = self.address(peer, family)
        entry = self.lookup(address)
        assert entry is not None
        return Flow(self.endpoint(endpoint).policy_id, direction, address, entry.identity,
                    entry.cidr_identity, PROTOCOLS[proto], port)

    def decide(self, endpoint: str, direction: Direction, peer: str, proto: str = "TCP",
               port: int = 80, *, family: int = 4) -> tuple[Action, int]:
        flow = self.flow(endpoint, direction, peer, proto, port, family=family)
        flattened, direct = evaluate(self.entries, flow), evaluate_rules(self.state, flow)
        assert flattened == direct, f"{flow}: flattened {flattened}, rules {direct}"
        return flattened

    def allows(self, endpoint: str, direction: Direction, peer: str, proto: str = "TCP",
               port: int = 80, *, family: int = 4) -> bool:
        return self.decide(endpoint, direction, peer, proto, port, family=family)[0] is ALLOW

    def rule_id(self, origin: str) -> int:
        return next(rule.rule_id for e in self.state.endpoints
                    for d in e.directions.values()
                    for rule in (*d.global_rules, *d.kubernetes_rules) if rule.origin == origin)


def compile_policy(*extra: Resource, node: str = "n1", cluster: ClusterState | None = None,
                   interfaces: Mapping[str, int] | None = None,
                   failsafe: Sequence[FailsafePort] = ()) -> Compiled:
    state = cluster if cluster is not None else standard_cluster(*extra)
    compiled = policy_state(state, node, endpoints_of(state, node), failsafe, interfaces)
    return Compiled(state, compiled, policy_entries(compiled))


# -- Kubernetes NetworkPolicy

DENY_INGRESS = network_policy("x", "deny-ingress", {"podSelector": {},
                                                   "policyTypes": ["Ingress"]})
DENY_EGRESS = network_policy("x", "deny-egress", {"podSelector": {},
                                                 "policyTypes": ["Egress"]})


def test_no_policy_allows_everything_and_programs_nothing() -> None:
    compiled = compile_policy()
    assert compiled.endpoint("x/a").directions == {}
    assert compiled.entries == {}
    assert compiled.allows("x/a", IN, "y/b") and compiled.allows("x/a", OUT, "203.0.113.9")


def test_default_deny_ingress_isolates_only_ingress_of_its_namespace() -> None:
    compiled = compile_policy(DENY_INGRESS)
    assert compiled.decide("x/a", IN, "x/b") == (DENY, KUBERNETES_DEFAULT_DENY_RULE_ID)
    assert not compiled.allows("x/a", IN, "y/a")
    assert not compiled.allows("x/a", IN, "198.18.0.12"), "another node is not exempt"
    assert not compiled.allows("x/a", IN, "203.0.113.9")
    assert compiled.allows("x/a", OUT, "y/a"), "egress is not isolated"
    assert compiled.allows("y/a", IN, "x/a"), "pods of other namespaces are not selected"
    assert set(compiled.endpoint("x/a").directions) == {IN}


def test_the_pods_own_node_is_always_allowed() -> None:
    compiled = compile_policy(DENY_INGRESS, DENY_EGRESS)
    assert compiled.decide("x/a", IN, "198.18.0.11") == (ALLOW, OWN_NODE_RULE_ID)
    assert compiled.allows("x/a", OUT, "198.18.0.11")
    assert compiled.allows("x/a", IN, "198.18.0.11", "UDP", 9999)


def test_default_deny_egress() -> None:
    compiled = compile_policy(DENY_EGRESS)
    assert not compiled.allows("x/a", OUT, "y/b")
    assert not compiled.allows("x/a", OUT, "203.0.113.9", "UDP", 53)
    assert compiled.allows("x/a", IN, "y/b")


def test_allow_from_namespace() -> None:
    compiled = compile_policy(network_policy("x", "from-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    assert compiled.allows("x/a", IN, "y/b") and compiled.allows("x/a", IN, "y/c")
    assert not compiled.allows("x/a", IN, "x/b"), "its own namespace is not y"
    assert not compiled.allows("x/a", IN, "z/b")
    assert compiled.allows("x/b", IN, "z/b"), "x/b is not selected"


def test_namespace_selector_matches_the_automatic_name_label() -> None:
    compiled = compile_policy(network_policy("x", "from-z", {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}))
    assert compiled.allows("x/a", IN, "z/a") and not compiled.allows("x/a", IN, "y/a")


def test_pod_selector_alone_means_the_policys_namespace() -> None:
    compiled = compile_policy(network_policy("x", "from-b", {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert compiled.allows("x/a", IN, "x/b")
    assert not compiled.allows("x/a", IN, "y/b")


def test_pod_and_namespace_selector_in_one_peer_intersect() -> None:
    both = {"namespaceSelector": {"matchLabels": {"ns": "y"}},
            "podSelector": {"matchLabels": {"pod": "b"}}}
    compiled = compile_policy(network_policy("x", "y-b", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [both]}]}))
    assert compiled.allows("x/a", IN, "y/b")
    assert not compiled.allows("x/a", IN, "y/c")
    assert not compiled.allows("x/a", IN, "x/b")


def test_pod_and_namespace_selector_in_two_peers_add_up() -> None:
    compiled = compile_policy(network_policy("x", "y-or-b", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
            {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert compiled.allows("x/a", IN, "y/c") and compiled.allows("x/a", IN, "x/b")
    assert not compiled.allows("x/a", IN, "z/b"), "pod=b alone is x's pod b only"
    assert not compiled.allows("x/a", IN, "x/c")


def test_match_expressions() -> None:
    compiled = compile_policy(network_policy("x", "expressions", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn",
                                              "values": ["b"]}]},
        "ingress": [{"from": [{
            "namespaceSelector": {"matchExpressions": [
                {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"},
                                                 {"key": "role", "operator": "DoesNotExist"}]},
        }]}]}))
    assert compiled.allows("x/a", IN, "y/a") and compiled.allows("x/a", IN, "z/c")
    assert not compiled.allows("x/a", IN, "x/c")
    assert compiled.allows("x/b", IN, "x/c"), "NotIn b: x/b is not selected"


def test_ip_block_with_except_selects_by_address_including_pods() -> None:
    compiled = compile_policy(network_policy("x", "to-block", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "198.18.16.0/20",
                                        "except": ["198.18.17.0/24", "198.18.16.13/32"]}}]}]}))
    assert compiled.allows("x/a", OUT, "x/b"), "pods are selected by their address"
    assert compiled.allows("x/a", OUT, "198.18.30.1")
    assert not compiled.allows("x/a", OUT, "x/c"), "198.18.17.12 is in an except"
    assert not compiled.allows("x/a", OUT, "y/a"), "198.18.16.13 is excepted as a /32"
    assert compiled.allows("x/a", OUT, "y/b")
    assert not compiled.allows("x/a", OUT, "198.18.17.200")
    assert not compiled.allows("x/a", OUT, "198.18.32.1")
    assert not compiled.allows("x/a", OUT, "198.18.0.12"), "another node, outside the block"
    entry = compiled.lookup(ip_address(pod_ip("y", "a")))
    assert entry is not None and entry.identity != entry.cidr_identity, \
        "one ipcache entry names the pod and its /32 policy CIDR"


def test_ip_block_takes_node_addresses_too() -> None:
    compiled = compile_policy(network_policy("x", "from-nodes", {
        "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/24"}}]}]}))
    assert compiled.allows("x/a", IN, "198.18.0.12")
    assert not compiled.allows("x/a", IN, "y/a")


def test_named_port_on_ingress_resolves_against_the_selected_pod() -> None:
    web = pod("x", "a", ips=(pod_ip("x", "a"),),
              ports=({"name": "http", "containerPort": 8080},
                     {"name": "dns", "containerPort": 53, "protocol": "UDP"}))
    policy = network_policy("x", "named", {"podSelector": {}, "ingress": [{"ports": [
        {"port": "http"}, {"port": "dns", "protocol": "UDP"}, {"port": "serve-81-tcp"},
        {"port": "dns"}]}]})
    compiled = compile_policy(web, policy)
    assert compiled.allows("x/a", IN, "y/b", "TCP", 8080)
    assert compiled.allows("x/a", IN, "y/b", "UDP", 53)
    assert not compiled.allows("x/a", IN, "y/b", "TCP", 53), "dns is a UDP port"
    assert not compiled.allows("x/a", IN, "y/b", "TCP", 81), "x/a has no serve-81-tcp"
    assert not compiled.allows("x/a", IN, "y/b", "TCP", 80)
    assert compiled.allows("x/b", IN, "y/b", "TCP", 81), "x/b's own serve-81-tcp"
    assert not compiled.allows("x/b", IN, "y/b", "TCP", 8080)


def test_unresolvable_named_port_matches_nothing_not_everything() -> None:
    compiled = compile_policy(network_policy("x", "nothing", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "no-such-port"}]}]}))
    assert not compiled.allows("x/a", IN, "y/b", "TCP", 80)
    assert compiled.allows("x/a", IN, "198.18.0.11", "TCP", 80)


def test_named_port_on_egress_resolves_per_destination_pod() -> None:
    web_y = pod("y", "b", ips=(pod_ip("y", "b"),), ports=({"name": "web", "containerPort": 8080},))
    web_z = pod("z", "b", ips=(pod_ip("z", "b"),), ports=({"name": "web", "containerPort": 9090},))
    compiled = compile_policy(web_y, web_z, network_policy("x", "to-web", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0"}}],
                    "ports": [{"port": "web"}]}]}))
    assert compiled.allows("x/a", OUT, "y/b", "TCP", 8080)
    assert not compiled.allows("x/a", OUT, "y/b", "TCP", 9090)
    assert compiled.allows("x/a", OUT, "z/b", "TCP", 9090)
    assert not compiled.allows("x/a", OUT, "z/b", "TCP", 8080)
    assert not compiled.allows("x/a", OUT, "203.0.113.9", "TCP", 8080), \
        "an address peer never matches a named port"
    rules = [r for r in compiled.endpoint("x/a").directions[OUT].kubernetes_rules
             if r.rule_id != OWN_NODE_RULE_ID]
    assert [r.ports[0].first for r in rules] == [8080, 9090], "one rule per port number"
    assert len({r.rule_id for r in rules}) == 1, "which keep the rule's id"


def test_end_port_ranges() -> None:
    compiled = compile_policy(network_policy("x", "range", {
        "podSelector": {}, "ingress": [{"ports": [
            {"port": 1000, "endPort": 2000}, {"port": 5353, "protocol": "UDP"},
            {"protocol": "SCTP"}]}]}))
    allowed = [p for p in (999, 1000, 1001, 1023, 1024, 1500, 2000, 2001) if
               compiled.allows("x/a", IN, "y/a", "TCP", p)]
    assert allowed == [1000, 1001, 1023, 1024, 1500, 2000]
    assert not compiled.allows("x/a", IN, "y/a", "UDP", 1000)
    assert compiled.allows("x/a", IN, "y/a", "UDP", 5353)
    assert compiled.allows("x/a", IN, "y/a", "SCTP", 7), "a protocol without port: all ports"
    assert not compiled.allows("x/a", IN, "y/a", "ICMP", 0)


def test_rule_without_ports_allows_every_protocol() -> None:
    compiled = compile_policy(DENY_INGRESS, network_policy("x", "all-from-y", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
            "matchLabels": {"ns": "y"}}}]}]}))
    assert compiled.allows("x/a", IN, "y/a", "ICMP", 0)
    assert compiled.allows("x/a", IN, "y/a", "UDP", 4000)


def test_multiple_policies_add_up() -> None:
    from_y = network_policy("x", "from-y", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]})
    from_z = network_policy("x", "from-z", {"podSelector": {"matchLabels": {"pod": "a"}},
                                            "ingress": [{"from": [{"namespaceSelector": {
                                                "matchLabels": {"ns": "z"}}}]}]})
    compiled = compile_policy(DENY_INGRESS, from_y, from_z)
    assert compiled.allows("x/a", IN, "y/b", port=80)
    assert not compiled.allows("x/a", IN, "y/b", port=81)
    assert compiled.allows("x/a", IN, "z/b", port=81)
    assert not compiled.allows("x/b", IN, "z/b", port=81), "from-z selects x/a alone"
    assert compiled.decide("x/a", IN, "y/b", port=80)[1] == \
        compiled.rule_id("NetworkPolicy x/from-y ingress[0]")


def test_policy_types_default_from_the_rules() -> None:
    egress_rules_only = network_policy("x", "egress-only", {
        "podSelector": {}, "egress": [{"to": [{"namespaceSelector": {}}]}]})
    compiled = compile_policy(egress_rules_only)
    assert not compiled.allows("x/a", IN, "y/a"), "Ingress is always a default type"
    assert compiled.allows("x/a", OUT, "y/a")
    assert not compiled.allows("x/a", OUT, "203.0.113.9")

    ingress_only = network_policy("x", "ingress-only", {
        "podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    compiled = compile_policy(ingress_only)
    assert compiled.allows("x/a", OUT, "203.0.113.9"), "no egress rules: Egress not isolated"
    assert compiled.allows("x/a", IN, "x/b") and not compiled.allows("x/a", IN, "y/b")

    egress_type = network_policy("x", "egress-type", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "ingress": [{"from": [{"podSelector": {}}]}]})
    compiled = compile_policy(egress_type)
    assert compiled.allows("x/a", IN, "y/b"), "ingress rules without the Ingress type: ignored"
    assert not compiled.allows("x/a", OUT, "x/b")


def test_finished_and_host_network_pods_are_neither_endpoints_nor_peers() -> None:
    done = pod("y", "done", ips=("198.18.16.99",), phase="Succeeded")
    on_host = pod("y", "host", ips=("198.18.0.11",), host_network=True)
    compiled = compile_policy(done, on_host, network_policy("x", "from-y", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
            "matchLabels": {"ns": "y"}}}]}]}))
    assert not compiled.allows("x/a", IN, "198.18.16.99")
    entry = compiled.lookup(ip_address("198.18.0.11"))
    assert entry is not None and entry.identity == Identity.HOST


# -- GlobalNetworkPolicy

FROM_Y = {"namespaceSelector": {"matchLabels": {"ns": "y"}}}
FROM_Z = {"namespaceSelector": {"matchLabels": {"ns": "z"}}}
ALLOW_ALL_INGRESS = network_policy("x", "allow-all", {"podSelector": {}, "ingress": [{}]})


def test_global_deny_before_kubernetes_allow() -> None:
    compiled = compile_policy(ALLOW_ALL_INGRESS, global_policy("deny-y", {
        "order": 10, "namespaceSelector": {"matchLabels": {"ns": "x"}},
        "ingress": [{"action": "Deny", "from": [FROM_Y]}, {"action": "Pass"}]}))
    assert compiled.decide("x/a", IN, "y/b") == \
        (DENY, compiled.rule_id("GlobalNetworkPolicy deny-y ingress[0]"))
    assert compiled.decide("x/a", IN, "z/b") == \
        (ALLOW, compiled.rule_id("NetworkPolicy x/allow-all ingress[0]"))
    assert compiled.allows("y/a", IN, "y/b"), "namespace y is not selected"


def test_pass_hands_the_flow_to_the_kubernetes_tier() -> None:
    passing = global_policy("pass-y", {"podSelector": {}, "ingress": [
        {"action": "Pass", "from": [FROM_Y]}]})
    compiled = compile_policy(passing)
    assert compiled.allows("x/a", IN, "y/b"), "passed, and no NetworkPolicy isolates x/a"
    assert compiled.decide("x/a", IN, "z/b") == (DENY, GLOBAL_DEFAULT_DENY_RULE_ID)
    compiled = compile_policy(passing, DENY_INGRESS)
    assert compiled.decide("x/a", IN, "y/b") == (DENY, KUBERNETES_DEFAULT_DENY_RULE_ID)


def test_log_records_and_does_not_decide() -> None:
    compiled = compile_policy(global_policy("log-then-allow-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"action": "Log"}, {"action": "Allow", "from": [FROM_Y]}]}))
    log_id = compiled.rule_id("GlobalNetworkPolicy log-then-allow-y ingress[0]")
    assert compiled.decide("x/a", IN, "y/b") == \
        (ALLOW, compiled.rule_id("GlobalNetworkPolicy log-then-allow-y ingress[1]"))
    assert compiled.decide("x/a", IN, "z/b") == (DENY, GLOBAL_DEFAULT_DENY_RULE_ID)
    assert logged_rule(compiled.entries, compiled.flow("x/a", IN, "z/b")) == log_id
    assert compiled.allows("x/a", OUT, "z/b"), "the policy has no Egress type"


def test_policies_run_by_order_then_name() -> None:
    def compiled_with(deny_name: str, deny_order: int) -> Compiled:
        return compile_policy(
            global_policy(deny_name, {"order": deny_order, "podSelector": {},
                                      "ingress": [{"action": "Deny", "from": [FROM_Y]}]}),
            global_policy("m-allow", {"order": 100, "podSelector": {},
                                      "ingress": [{"action": "Allow"}]}))
    assert not compiled_with("a-deny", 100).allows("x/a", IN, "y/a"), "a-deny < m-allow"
    assert compiled_with("z-deny", 100).allows("x/a", IN, "y/a"), "m-allow < z-deny"
    assert not compiled_with("z-deny", 99).allows("x/a", IN, "y/a"), "order before name"


def test_global_peers_select_pods_in_any_namespace_and_by_nets() -> None:
    compiled = compile_policy(global_policy("peers", {"podSelector": {}, "ingress": [
        {"action": "Allow", "from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]},
        {"action": "Allow", "from": [{"nets": ["203.0.113.0/24", "198.51.100.7/32"]}]}]}))
    assert compiled.allows("x/a", IN, "y/c") and compiled.allows("x/a", IN, "z/c")
    assert not compiled.allows("x/a", IN, "y/b")
    assert compiled.allows("x/a", IN, "203.0.113.200")
    assert compiled.allows("x/a", IN, "198.51.100.7")
    assert not compiled.allows("x/a", IN, "198.51.100.8")


def test_global_policy_for_all_pods_of_a_namespace() -> None:
    compiled = compile_policy(global_policy("y-only", {
        "namespaceSelector": {"matchLabels": {"ns": "y"}},
        "egress": [{"action": "Deny", "to": [FROM_Z]}, {"action": "Allow"}]}))
    assert set(compiled.endpoint("y/a").directions) == {IN, OUT}
    assert not compiled.allows("y/a", OUT, "z/a") and compiled.allows("y/a", OUT, "x/a")
    assert not compiled.allows("y/a", IN, "x/a"), "types default to Ingress and Egress"
    assert compiled.endpoint("x/a").directions == {}


# -- host endpoints

HOST_INTERFACES = {"eth0": 2, "eth1": 3}


def host_policy_directions(spec: Mapping[str, Any]) -> set[Direction]:
    compiled = compile_policy(
        host_endpoint("n1-eth0", "n1", "eth0", {"role": "edge"}),
        global_policy("host", {"hostEndpointSelector": {"matchLabels": {"role": "edge"}},
                               **spec}),
        interfaces=HOST_INTERFACES)
    endpoint = compiled.endpoint("hostendpoint/n1-eth0")
    assert endpoint.host_endpoint and endpoint.policy_id == 2
    assert endpoint.identity == Identity.HOST
    return set(endpoint.directions)


def test_host_endpoint_flavours_map_to_their_directions() -> None:
    deny = [{"action": "Deny"}]
    assert host_policy_directions({"ingress": deny}) == {IN}
    assert host_policy_directions({"ingress": deny, "egress": deny}) == {IN, OUT}
    assert host_policy_directions({"applyOnForward": True, "ingress": deny, "egress": deny}) == \
        {IN, OUT, Direction.FORWARD_INGRESS, Direction.FORWARD_EGRESS}
    assert host_policy_directions({"preDNAT": True, "applyOnForward": True, "ingress": deny}) \
        == {Direction.PREDNAT}
    assert host_policy_directions({"doNotTrack": True, "applyOnForward": True,
                                   "ingress": deny}) == {Direction.UNTRACKED}


def test_host_endpoint_policy_decides_and_has_no_kubernetes_tier() -> None:
    compiled = compile_policy(
        host_endpoint("n1-eth0", "n1", "eth0", {"role": "edge"}),
        host_endpoint("n2-eth0", "n2", "eth0", {"role": "edge"}),
        global_policy("ssh", {"hostEndpointSelector": {"matchLabels": {"role": "edge"}},
                              "ingress": [{"action": "Allow", "ports": [{"port": 22}]},
                                          {"action": "Pass", "ports": [{"port": 80}]}]}),
        interfaces=HOST_INTERFACES)
    assert [e.name for e in compiled.state.endpoints if e.host_endpoint] == ["hostendpoint/n1-eth0"]
    assert compiled.allows("hostendpoint/n1-eth0", IN, "203.0.113.9", port=22)
    assert compiled.allows("hostendpoint/n1-eth0", IN, "203.0.113.9", port=80), \
        "Pass: a host endpoint has no Kubernetes tier, so it is allowed"
    assert not compiled.allows("hostendpoint/n1-eth0", IN, "203.0.113.9", port=23)
    assert compiled.allows("hostendpoint/n1-eth0", OUT, "203.0.113.9", port=23)
    direction = compiled.endpoint("hostendpoint/n1-eth0").directions[IN]
    assert direction.kubernetes_rules == () and not direction.kubernetes_isolated


def test_host_endpoint_without_its_interface_is_a_problem() -> None:
    compiled = compile_policy(host_endpoint("n1-eth9", "n1", "eth9", {}),
                              interfaces=HOST_INTERFACES)
    assert [e for e in compiled.state.endpoints if e.host_endpoint] == []
    assert any("HostEndpoint n1-eth9" in p and "eth9" in p for p in compiled.state.problems)


def test_endpoint_without_its_pod_has_no_policy_yet() -> None:
    """CNI wires a pod before the datastore lists it running: not a problem, no policy."""
    state = standard_cluster()
    stray = LocalEndpoint("k", "x/gone", (ip_address("198.18.16.250"),), "lxcq", 999, "", "")
    compiled = policy_state(state, "n1", [*endpoints_of(state, "n1"), stray])
    assert "x/gone" not in [e.name for e in compiled.endpoints]
    assert not compiled.problems


# -- identities, failsafe, prefilter

def test_pods_with_equal_labels_share_an_identity_and_a_label_change_moves_one() -> None:
    twin = pod("x", "a2", labels={"pod": "a"}, ips=("198.18.16.100",))
    compiled = compile_policy(twin)
    first, second = compiled.endpoint("x/a"), compiled.endpoint("x/a2")
    assert first.identity == second.identity >= 256
    assert compiled.endpoint("y/a").identity != first.identity, "namespaces differ"
    info = compiled.state.identities[first.identity]
    assert (info.namespace, dict(info.labels)) == ("x", {"pod": "a"})

    moved = pod("x", "a2", labels={"pod": "a", "tier": "db"}, ips=("198.18.16.100",))
    policy = network_policy("y", "from-db", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "db"}}}]}]})
    compiled = compile_policy(moved, policy)
    assert compiled.endpoint("x/a2").identity != compiled.endpoint("x/a").identity
    assert compiled.endpoint("x/a").identity == first.identity, "x/a keeps its identity"
    assert compiled.allows("y/a", IN, "198.18.16.100")
    assert not compiled.allows("y/a", IN, "x/a")


def test_identities_and_rule_ids_are_stable_across_calls_and_nodes() -> None:
    policy = network_policy("x", "from-y", {"podSelector": {}, "ingress": [{"from": [FROM_Y]}]})
    state = standard_cluster(policy)
    reordered = ClusterState(reversed(list(state)))
    n1 = compile_policy(cluster=state)
    again = compile_policy(cluster=reordered)
    n2 = compile_policy(cluster=state, node="n2")
    assert n1.state.identities == again.state.identities == n2.state.identities
    assert n1.state.ipcache == again.state.ipcache
    assert n1.entries == again.entries
    origin = "NetworkPolicy x/from-y ingress[0]"
    assert n1.rule_id(origin) == n2.rule_id(origin)
    info = n1.state.identities[n1.endpoint("x/a").identity]
    assert pod_identity_key(info.namespace, info.labels) == pod_identity_key("x", {"pod": "a"})


def test_failsafe_ports_are_copied_and_prefilter_follows_the_node_selector() -> None:
    labelled = N1.model_copy(update={"metadata": N1.metadata.model_copy(
        update={"labels": {"edge": "true"}})})
    deny_all_nodes = PrefilterDenyList.model_validate({
        "apiVersion": "sluice.io/v1", "kind": "PrefilterDenyList",
        "metadata": {"name": "everywhere"}, "spec": {"cidrs": ["203.0.113.0/24"]}})
    deny_edge = PrefilterDenyList.model_validate({
        "apiVersion": "sluice.io/v1", "kind": "PrefilterDenyList", "metadata": {"name": "edge"},
        "spec": {"cidrs": ["fd00:66::/64", "198.51.100.0/24"],
                 "nodeSelector": {"matchLabels": {"edge": "true"}}}})
    failsafe = (FailsafePort(True, 6, 22), FailsafePort(False, 17, 53))
    state = standard_cluster(labelled, deny_all_nodes, deny_edge)
    compiled = compile_policy(cluster=state, failsafe=failsafe)
    assert compiled.state.failsafe == failsafe
    assert compiled.state.prefilter_deny == (ip_network("198.51.100.0/24"),
                                             ip_network("203.0.113.0/24"),
                                             ip_network("fd00:66::/64"))
    assert compile_policy(cluster=state, node="n2").state.prefilter_deny == \
        (ip_network("203.0.113.0/24"),)


def test_ten_thousand_cidr_rules_compile_in_reasonable_time() -> None:
    rules = [{"action": "Deny" if i % 2 else "Allow",
              "from": [{"nets": [f"10.{i // 256}.{i % 256}.0/24"]}],
              "ports": [{"port": 1000 + i % 50, "endPort": 1100 + i % 50}]}
             for i in range(10_000)]
    big = global_policy("big", {"podSelector": {}, "ingress": rules})
    blocks = network_policy("x", "blocks", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]})
    started = time.perf_counter()
    compiled = compile_policy(big, blocks)
    elapsed = time.perf_counter() - started
    print(f"\n10k CIDR rules: {len(compiled.entries)} entries, "
          f"{len(compiled.state.ipcache)} ipcache entries in {elapsed:.2f} s")
    assert compiled.decide("x/a", IN, "10.0.3.7", port=1003) == \
        (DENY, compiled.rule_id("GlobalNetworkPolicy big ingress[3]"))
    assert compiled.allows("x/a", IN, "10.0.2.7", port=1002)
    assert not compiled.allows("x/a", IN, "10.0.2.7", port=999)


def test_ipv6_peers_are_judged_like_ipv4() -> None:
    compiled = compile_policy(network_policy("x", "v6", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "fd00:10::/32", "except": ["fd00:10:2::/48"]}}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}], "ports": [{"port": 81}]},
    ]}))
    assert compiled.allows("x/a", IN, "y/b", family=6)
    assert not compiled.allows("x/a", IN, "y/b"), "its IPv4 address is in no block"
    assert not compiled.allows("x/a", IN, "y/c", family=6), "fd00:10:2::/48 is excepted"
    assert compiled.allows("x/a", IN, "z/c", port=81, family=6)
    assert compiled.allows("x/a", IN, "z/c", port=81)
    assert not compiled.allows("x/a", IN, "fd00:ff::12")
    assert compiled.allows("x/a", IN, "fd00:ff::11"), "its own node, by IPv6"
