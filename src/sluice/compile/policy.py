"""What network policy means on one node: per endpoint and direction, the ordered global
tier and the Kubernetes tier of rules, plus the identities and the ipcache that name peers.

Kubernetes NetworkPolicy, as documented and as the upstream conformance tests check it:
- a policy selects pods of its own namespace by podSelector; a pod is isolated in a
  direction when some policy of that policyType selects it, and then admits the union of
  the rules of every policy selecting it (plus traffic with its own node, always);
- empty from/to: every peer; empty ports: every port and protocol; a peer's podSelector
  alone means pods of the policy's namespace, namespaceSelector alone every pod of the
  matching namespaces, both the intersection; ipBlock is by address (pods and nodes too);
- namespaces carry `kubernetes.io/metadata.name: <name>` as the API server sets it.

GlobalNetworkPolicy, as Calico's tiers: policies by (order, name), rules in order; Allow
and Deny decide, Pass hands the flow to the Kubernetes tier, Log records and goes on; a
flow no rule decides is denied when any global policy applies in that direction. Host
endpoints have no Kubernetes tier; an endpoint and direction no policy applies to allows.

Named ports: on ingress a name is resolved against the local pod's own container ports
(name and protocol must match; unresolvable, the port matches nothing); on egress per
destination pod, one rule per port number naming the pods whose port resolves to it.
Address peers (ipBlock, nets) never match a named port. bpf mode names pods by identity,
and pods of one identity may resolve a name differently: the identity then appears in the
rule of every number, so it is admitted on the union of them (iptables mode, by address,
stays exact).

Host-network pods are not policy endpoints or peers (they are the node), nor are pods
that finished (Succeeded, Failed), whose addresses may already belong to another pod.

Rule ids come from the rule's origin (`NetworkPolicy x/allow-b ingress[0]`) the way
identities come from labels: every node numbers the cluster's rules alike, and a rule
keeps its id while other policies change. A rule split by protocol or named port keeps
one id; a few reserved ids name what no single rule says (RESERVED_RULE_ORIGINS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sluice.compile.endpoints import LocalEndpoint
from sluice.compile.identities import (
    WORLD_V4_NETWORK,
    WORLD_V6_NETWORK,
    PodAddresses,
    allocate,
    cidr_identity_key,
    hashed_ids,
    ipcache_entries,
    pod_identity_key,
)
from sluice.compile.policytypes import (
    Action,
    AddressBlock,
    CompiledRule,
    Direction,
    DirectionPolicy,
    EndpointPolicy,
    FailsafePort,
    Identity,
    IdentityInfo,
    PeerSet,
    PolicyState,
    PortRange,
)
from sluice.datastore.state import ClusterState
from sluice.model import (
    GlobalNetworkPolicy,
    GlobalNetworkPolicySpec,
    GlobalPeer,
    GlobalRule,
    HostEndpoint,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    Node,
    Pod,
)
from sluice.model.addresses import IPAddress, IPNetwork
from sluice.model.fieldtypes import Protocol

PROTOCOL_NUMBERS: Mapping[Protocol, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

GLOBAL_DEFAULT_DENY_RULE_ID = 1
KUBERNETES_DEFAULT_DENY_RULE_ID = 2
OWN_NODE_RULE_ID = 3
FIRST_RULE_ID = 16
RULE_ID_SPACE = 2**31 - FIRST_RULE_ID
RESERVED_RULE_ORIGINS: Mapping[int, str] = {
    GLOBAL_DEFAULT_DENY_RULE_ID: "GlobalNetworkPolicy (no rule matched: default deny)",
    KUBERNETES_DEFAULT_DENY_RULE_ID: "NetworkPolicy (isolated, no rule allowed: default deny)",
    OWN_NODE_RULE_ID: "NetworkPolicy (isolated: the pod's own node is always allowed)",
}

_ACTIONS = {"Allow": Action.ALLOW, "Deny": Action.DENY, "Pass": Action.PASS, "Log": Action.LOG}
_FINISHED_PHASES = ("Succeeded", "Failed")
_OWN_NODE_PEERS = PeerSet(identities=frozenset({Identity.HOST}), host=True)


def policy_state(state: ClusterState, node: str, endpoints: Iterable[LocalEndpoint],
                 failsafe: Iterable[FailsafePort] = (),
                 interface_ifindexes: Mapping[str, int] | None = None) -> PolicyState:
    """Policy of every local pod (`endpoints`) and of this node's HostEndpoints, whose
    interfaces `interface_ifindexes` (name -> ifindex) locates. Only the directions some
    policy applies to appear in an EndpointPolicy; a missing one allows everything."""
    endpoints = tuple(endpoints)
    problems: list[str] = []
    node_object = next((n for n in state.nodes() if n.name == node), None)
    if node_object is None:
        problems.append(f"Node {node} is not in the datastore: policy does not know this "
                        "node's own addresses")
    cluster = _Cluster(state, endpoints)
    policies = _pod_endpoints(cluster, endpoints)
    policies += _host_endpoints(cluster, node, interface_ifindexes or {},
                                {e.host_ifindex: f"endpoint {e.key}" for e in endpoints},
                                problems)
    local_ips, remote_ips = _node_addresses(state, node)
    ipcache = ipcache_entries(
        (PodAddresses(p.identity_key, p.addresses) for p in cluster.pods),
        local_ips, remote_ips, cluster.cidrs, cluster.identity_of)
    return PolicyState(endpoints=tuple(policies), identities=_identity_infos(cluster),
                       ipcache=ipcache, failsafe=tuple(failsafe),
                       prefilter_deny=_prefilter_deny(state, node_object),
                       problems=tuple(problems))


def network_policy_origin(policy: NetworkPolicy, ingress: bool, index: int) -> str:
    return f"NetworkPolicy {policy.namespace}/{policy.name} {_side(ingress)}[{index}]"


def global_policy_origin(policy: GlobalNetworkPolicy, ingress: bool, index: int) -> str:
    return f"GlobalNetworkPolicy {policy.name} {_side(ingress)}[{index}]"


def rule_ids(state: ClusterState) -> dict[str, int]:
    """The id of every rule origin in the cluster (see the module docstring)."""
    origins = [network_policy_origin(policy, ingress, index)
               for policy in state.network_policies()
               for ingress, rules in ((True, policy.spec.ingress), (False, policy.spec.egress))
               for index in range(len(rules))]
    origins += [global_policy_origin(policy, ingress, index)
                for policy in state.global_network_policies()
                for ingress, global_rules in ((True, policy.spec.ingress),
                                              (False, policy.spec.egress))
                for index in range(len(global_rules))]
    return hashed_ids(origins, FIRST_RULE_ID, RULE_ID_SPACE)


def policy_cidrs(state: ClusterState) -> set[IPNetwork]:
    """Every CIDR a policy names: ipBlock cidrs and excepts, GlobalPeer nets."""
    cidrs: set[IPNetwork] = set()
    for policy in state.network_policies():
        peers = [peer for rule in policy.spec.ingress for peer in rule.from_]
        peers += [peer for rule in policy.spec.egress for peer in rule.to]
        for peer in peers:
            if peer.ip_block is not None:
                cidrs.update((peer.ip_block.cidr, *peer.ip_block.except_))
    for global_policy in state.global_network_policies():
        for rule in (*global_policy.spec.ingress, *global_policy.spec.egress):
            for global_peer in (*rule.from_, *rule.to):
                if global_peer.ip_block is not None:
                    cidrs.update((global_peer.ip_block.cidr, *global_peer.ip_block.except_))
                cidrs.update(global_peer.nets or ())
    return cidrs


def _side(ingress: bool) -> str:
    return "ingress" if ingress else "egress"


@dataclass(frozen=True)
class _PolicyPod:
    """A pod that policy can select, with what selection and identities need."""

    pod: Pod
    namespace_labels: Mapping[str, str]
    identity_key: str
    identity: int
    addresses: tuple[IPAddress, ...]

    @property
    def ref(self) -> str:
        return f"{self.pod.namespace}/{self.pod.name}"


@dataclass(frozen=True)
class _Peers:
    """The peers of one rule (None stands for every peer)."""

    pods: tuple[_PolicyPod, ...] = ()
    blocks: tuple[AddressBlock, ...] = ()


def _pod_endpoints(cluster: _Cluster, endpoints: tuple[LocalEndpoint, ...]
                   ) -> list[EndpointPolicy]:
    policies: list[EndpointPolicy] = []
    for endpoint in endpoints:
        pod = cluster.pods_by_ref.get(endpoint.pod)
        if pod is None:
            # Wired before the datastore lists it running (or never in it, as a bare
            # container): no identity and no policy until it is.
            continue
        directions: dict[Direction, DirectionPolicy] = {}
        for direction, ingress in ((Direction.INGRESS, True), (Direction.EGRESS, False)):
            policy = _pod_direction(cluster, pod, ingress)
            if policy.enforced:
                directions[direction] = policy
        policies.append(EndpointPolicy(endpoint.pod, endpoint.host_ifindex, pod.identity,
                                       endpoint.addresses, endpoint.host_ifname, directions))
    return policies


def _pod_direction(cluster: _Cluster, pod: _PolicyPod, ingress: bool) -> DirectionPolicy:
    labels = pod.pod.labels
    global_policies = [p for p in cluster.global_policies
                       if p.spec.matches_pod(labels, pod.namespace_labels)
                       and (p.spec.isolates_ingress if ingress else p.spec.isolates_egress)]
    global_rules = tuple(rule for p in global_policies
                         for rule in cluster.global_rules(p, ingress, pod.pod))
    selecting = [p for p in cluster.state.network_policies(pod.pod.namespace)
                 if p.spec.pod_selector.matches(labels)
                 and (p.spec.isolates_ingress if ingress else p.spec.isolates_egress)]
    kubernetes_rules = tuple(rule for p in selecting
                             for rule in cluster.network_policy_rules(p, ingress, pod.pod))
    if selecting:
        kubernetes_rules += (CompiledRule(OWN_NODE_RULE_ID, Action.ALLOW, _OWN_NODE_PEERS,
                                          None, (), RESERVED_RULE_ORIGINS[OWN_NODE_RULE_ID]),)
    return DirectionPolicy(global_rules, bool(global_policies), kubernetes_rules,
                           bool(selecting))


def _host_endpoints(cluster: _Cluster, node: str, interface_ifindexes: Mapping[str, int],
                    taken: dict[int, str], problems: list[str]) -> list[EndpointPolicy]:
    """This node's HostEndpoints; `taken` names the interfaces already in use."""
    policies: list[EndpointPolicy] = []
    for host_endpoint in cluster.state.host_endpoints():
        if host_endpoint.node != node:
            continue
        interface = host_endpoint.interface_name
        ifindex = interface_ifindexes.get(interface)
        if ifindex is None:
            problems.append(f"{host_endpoint.ref}: interface {interface} not found on node "
                            f"{node}; its policy is not enforced")
            continue
        if ifindex in taken:
            problems.append(f"{host_endpoint.ref}: interface {interface} is already "
                            f"{taken[ifindex]}'s; ignored")
            continue
        taken[ifindex] = host_endpoint.ref
        policies.append(EndpointPolicy(
            f"hostendpoint/{host_endpoint.name}", ifindex, Identity.HOST,
            host_endpoint.expected_ips, interface,
            _host_endpoint_directions(cluster, host_endpoint), host_endpoint=True))
    return policies


def _host_endpoint_directions(cluster: _Cluster, host_endpoint: HostEndpoint
                              ) -> dict[Direction, DirectionPolicy]:
    rules: dict[Direction, list[CompiledRule]] = {}
    for policy in cluster.global_policies:
        if policy.spec.matches_host_endpoint(host_endpoint.labels):
            for direction, ingress in host_endpoint_directions(policy.spec):
                rules.setdefault(direction, []).extend(cluster.global_rules(policy, ingress,
                                                                            None))
    return {direction: DirectionPolicy(tuple(found), global_selected=True)
            for direction, found in sorted(rules.items())}


def _identity_infos(cluster: _Cluster) -> dict[int, IdentityInfo]:
    infos = {int(Identity.HOST): IdentityInfo(Identity.HOST),
             int(Identity.REMOTE_NODE): IdentityInfo(Identity.REMOTE_NODE)}
    for pod in cluster.pods:
        infos[pod.identity] = IdentityInfo(pod.identity, pod.pod.namespace,
                                           dict(pod.pod.labels))
    for cidr in cluster.cidrs:
        identity = cluster.identity_of[cidr_identity_key(cidr)]
        infos[identity] = IdentityInfo(identity, cidr=cidr)
    return dict(sorted(infos.items()))


class _Cluster:
    """What compiling rules needs, worked out once: pods that policy sees, identities,
    rule ids, global policies in evaluation order; compiled rules are cached."""

    def __init__(self, state: ClusterState, endpoints: tuple[LocalEndpoint, ...]) -> None:
        self.state = state
        self.cidrs: set[IPNetwork] = {*policy_cidrs(state), WORLD_V4_NETWORK, WORLD_V6_NETWORK}
        local_addresses: dict[str, list[IPAddress]] = {}
        for endpoint in endpoints:
            local_addresses.setdefault(endpoint.pod, []).extend(endpoint.addresses)
        namespace_labels = _namespace_labels(state)
        eligible = [pod for pod in state.pods()
                    if not pod.spec.host_network and pod.status.phase not in _FINISHED_PHASES]
        keys = [pod_identity_key(pod.namespace, pod.labels) for pod in eligible]
        self.identity_of = allocate([*keys, *(cidr_identity_key(c) for c in self.cidrs)])
        self.pods = tuple(
            _PolicyPod(pod,
                       namespace_labels.get(pod.namespace, {NAMESPACE_NAME_LABEL: pod.namespace}),
                       key, self.identity_of[key],
                       # The CNI's addresses count before the pod's status names them.
                       tuple(dict.fromkeys(
                           (*pod.ips, *local_addresses.get(f"{pod.namespace}/{pod.name}", ())))))
            for pod, key in zip(eligible, keys, strict=True))
        self.pods_by_ref = {pod.ref: pod for pod in self.pods}
        self.rule_ids = rule_ids(state)
        self.global_policies = sorted(state.global_network_policies(),
                                      key=lambda p: p.evaluation_key)
        self._rule_cache: dict[tuple[str, bool, object], tuple[CompiledRule, ...]] = {}

    # -- rules

    def network_policy_rules(self, policy: NetworkPolicy, ingress: bool,
                              local_pod: Pod) -> tuple[CompiledRule, ...]:
        cache_key = (policy.ref, ingress, _named_ports(local_pod) if ingress else None)
        cached = self._rule_cache.get(cache_key)
        if cached is None:
            spec = policy.spec
            sources = ([(rule.from_, rule.ports) for rule in spec.ingress] if ingress
                       else [(rule.to, rule.ports) for rule in spec.egress])
            compiled: list[CompiledRule] = []
            for index, (peers, ports) in enumerate(sources):
                compiled += self._rule(network_policy_origin(policy, ingress, index),
                                       Action.ALLOW,
                                       self._network_policy_peers(peers, policy.namespace),
                                       ports, ingress=ingress, local_pod=local_pod)
            cached = self._rule_cache[cache_key] = tuple(compiled)
        return cached

    def global_rules(self, policy: GlobalNetworkPolicy, ingress: bool,
                      local_pod: Pod | None) -> tuple[CompiledRule, ...]:
        cache_key = (policy.ref, ingress, _named_ports(local_pod) if ingress else None)
        cached = self._rule_cache.get(cache_key)
        if cached is None:
            rules: tuple[GlobalRule, ...] = policy.spec.ingress if ingress else policy.spec.egress
            compiled: list[CompiledRule] = []
            for index, rule in enumerate(rules):
                compiled += self._rule(global_policy_origin(policy, ingress, index),
                                       _ACTIONS[rule.action],
                                       self._global_peers(rule.from_ if ingress else rule.to),
                                       rule.ports, ingress=ingress, local_pod=local_pod)
            cached = self._rule_cache[cache_key] = tuple(compiled)
        return cached

    def _rule(self, origin: str, action: Action, peers: _Peers | None,
              ports: Sequence[NetworkPolicyPort], *, ingress: bool,
              local_pod: Pod | None) -> list[CompiledRule]:
        """One rule per protocol its ports name, plus one per egress named port number."""
        rule_id = self.rule_ids[origin]
        peer_set = None if peers is None else _peer_set(peers.pods, peers.blocks)
        if not ports:
            return [CompiledRule(rule_id, action, peer_set, None, (), origin)]
        by_protocol: dict[int, list[PortRange] | None] = {}
        named: dict[tuple[int, Protocol, str], None] = {}
        for port in ports:
            protocol = PROTOCOL_NUMBERS[port.protocol]
            if port.port is None:
                by_protocol[protocol] = None
                continue
            if isinstance(port.port, int):
                found: PortRange | None = PortRange(port.port, port.end_port or port.port)
            elif ingress:
                number = _named_port_number(local_pod, port.port, port.protocol)
                found = None if number is None else PortRange(number, number)
            else:
                named[(protocol, port.protocol, port.port)] = None
                continue
            if found is not None:
                ranges = by_protocol.setdefault(protocol, [])
                if ranges is not None:
                    ranges.append(found)
        compiled = [CompiledRule(rule_id, action, peer_set, protocol,
                                 () if ranges is None else _merged(ranges), origin)
                    for protocol, ranges in sorted(by_protocol.items())]
        for protocol, protocol_name, name in named:
            by_number: dict[int, list[_PolicyPod]] = {}
            for pod in self.pods if peers is None else peers.pods:
                number = _named_port_number(pod.pod, name, protocol_name)
                if number is not None:
                    by_number.setdefault(number, []).append(pod)
            compiled += [CompiledRule(rule_id, action, _peer_set(pods, ()), protocol,
                                      (PortRange(number, number),), origin)
                         for number, pods in sorted(by_number.items())]
        return compiled

    def _network_policy_peers(self, peers: Sequence[NetworkPolicyPeer],
                              namespace: str) -> _Peers | None:
        if not peers:
            return None
        blocks = tuple(AddressBlock(p.ip_block.cidr, p.ip_block.except_)
                       for p in peers if p.ip_block is not None)
        selectors = [p for p in peers if p.ip_block is None]
        pods = tuple(pod for pod in self.pods
                     if any(_network_policy_peer_selects(p, namespace, pod) for p in selectors))
        return _Peers(pods, blocks)

    def _global_peers(self, peers: Sequence[GlobalPeer]) -> _Peers | None:
        if not peers:
            return None
        blocks: list[AddressBlock] = []
        for peer in peers:
            if peer.ip_block is not None:
                blocks.append(AddressBlock(peer.ip_block.cidr, peer.ip_block.except_))
            blocks += [AddressBlock(net) for net in peer.nets or ()]
        selectors = [p for p in peers if not p.is_address_peer]
        pods = tuple(pod for pod in self.pods
                     if any(p.matches_pod(pod.pod.labels, pod.namespace_labels)
                            for p in selectors))
        return _Peers(pods, tuple(blocks))


def host_endpoint_directions(spec: GlobalNetworkPolicySpec) -> list[tuple[Direction, bool]]:
    """Where a global policy applies on a host endpoint: (direction, uses ingress rules)."""
    if spec.pre_dnat:
        return [(Direction.PREDNAT, True)] if spec.isolates_ingress else []
    if spec.do_not_track:
        return [(Direction.UNTRACKED, True)] if spec.isolates_ingress else []
    found: list[tuple[Direction, bool]] = []
    if spec.isolates_ingress:
        found.append((Direction.INGRESS, True))
        if spec.apply_on_forward:
            found.append((Direction.FORWARD_INGRESS, True))
    if spec.isolates_egress:
        found.append((Direction.EGRESS, False))
        if spec.apply_on_forward:
            found.append((Direction.FORWARD_EGRESS, False))
    return found


def _network_policy_peer_selects(peer: NetworkPolicyPeer, namespace: str,
                                 pod: _PolicyPod) -> bool:
    if peer.namespace_selector is None:
        in_namespace = pod.pod.namespace == namespace
    else:
        in_namespace = peer.namespace_selector.matches(pod.namespace_labels)
    return in_namespace and (peer.pod_selector is None
                             or peer.pod_selector.matches(pod.pod.labels))


def _peer_set(pods: Iterable[_PolicyPod], blocks: tuple[AddressBlock, ...]) -> PeerSet:
    pods = tuple(pods)
    return PeerSet(identities=frozenset(pod.identity for pod in pods),
                   pod_addresses=frozenset(a for pod in pods for a in pod.addresses),
                   blocks=blocks)


def _named_port_number(pod: Pod | None, name: str, protocol: Protocol) -> int | None:
    port = None if pod is None else pod.spec.named_port(name)
    return port.container_port if port is not None and port.protocol == protocol else None


def _named_ports(pod: Pod | None) -> tuple[tuple[str, str, int], ...]:
    """What ingress named ports resolve against: rules compiled once per distinct value."""
    if pod is None:
        return ()
    return tuple((port.name, port.protocol, port.container_port)
                 for container in pod.spec.containers for port in container.ports
                 if port.name is not None)


def _merged(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for port_range in sorted(ranges):
        if merged and port_range.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, port_range.last))
        else:
            merged.append(port_range)
    return tuple(merged)


def _namespace_labels(state: ClusterState) -> dict[str, dict[str, str]]:
    return {namespace.name: {NAMESPACE_NAME_LABEL: namespace.name, **namespace.labels}
            for namespace in state.namespaces()}


def _node_addresses(state: ClusterState, node_name: str
                    ) -> tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]:
    """This node's addresses (InternalIP, ExternalIP) and every other node's InternalIPs."""
    local: tuple[IPAddress, ...] = ()
    remote: list[IPAddress] = []
    for node in state.nodes():
        if node.name == node_name:
            local = node.addresses_of("InternalIP") + node.addresses_of("ExternalIP")
        else:
            remote += node.internal_ips
    return local, tuple(remote)


def _prefilter_deny(state: ClusterState, node: Node | None) -> tuple[IPNetwork, ...]:
    labels = {} if node is None else node.labels
    cidrs = {cidr for deny_list in state.prefilter_deny_lists()
             if deny_list.spec.applies_to_node(labels) for cidr in deny_list.cidrs}
    return tuple(sorted(cidrs, key=lambda c: (c.version, int(c.network_address), c.prefixlen)))


def rule_origins(state: PolicyState) -> dict[int, str]:
    """rule id -> what it came from, for every rule of STATE and the reserved ones."""
    origins = dict(RESERVED_RULE_ORIGINS)
    for endpoint in state.endpoints:
        for direction in endpoint.directions.values():
            for rule in (*direction.global_rules, *direction.kubernetes_rules):
                origins.setdefault(rule.rule_id, rule.origin)
    return origins
