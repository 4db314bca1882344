"""What compile makes of network policy, before either dataplane renders it.

Every policy kind (Kubernetes NetworkPolicy, GlobalNetworkPolicy, host endpoint policy)
becomes, per endpoint of this node and per direction, two tiers of rules: the ordered
global tier and the Kubernetes tier. bpf mode flattens them into LPM entries keyed by
peer identity (`policy.h`); iptables mode renders them as per-endpoint chains and ipsets.
The enums mirror `bpf/include/policy.h`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from sluice.model.addresses import IPAddress, IPNetwork


class Identity(IntEnum):
    """Reserved identities; allocated ones start at FIRST_ALLOCATED_IDENTITY."""

    ANY = 0  # in a policy key: any peer; never an address's identity
    HOST = 1  # this node
    WORLD_V4 = 2  # 0.0.0.0/0
    WORLD_V6 = 3  # ::/0
    REMOTE_NODE = 4  # another node's InternalIP


FIRST_ALLOCATED_IDENTITY = 256


class Direction(IntEnum):
    INGRESS = 0  # to the endpoint (host endpoints: to the host itself)
    EGRESS = 1  # from the endpoint (host endpoints: from the host itself)
    PREDNAT = 2  # host endpoint ingress before service translation
    FORWARD_INGRESS = 3  # host endpoint: arriving and forwarded by the host (applyOnForward)
    FORWARD_EGRESS = 4  # host endpoint: leaving, forwarded by the host (applyOnForward)
    UNTRACKED = 5  # host endpoint ingress under doNotTrack: judged per packet in XDP


class Tier(IntEnum):
    GLOBAL = 0
    KUBERNETES = 1
    LOG = 2


class Action(IntEnum):
    ALLOW = 1
    DENY = 2
    PASS = 3
    LOG = 4


# Ranks in the flattened tables: global rules rank by position; the catch-all denies of a
# selected tier rank after every rule.
KUBERNETES_ALLOW_RANK = 0
CATCH_ALL_RANK = 0xFFFF_FFFE


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class AddressBlock:
    """An ipBlock: `cidr` minus every network in `excepts`."""

    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        return (address.version == self.cidr.version and address in self.cidr
                and not any(address in e for e in self.excepts))


@dataclass(frozen=True)
class PeerSet:
    """The peers a rule names. A rule with `peers=None` matches any peer.

    Pods are named twice: by identity (bpf) and by address (iptables); both are filled.
    """

    identities: frozenset[int] = frozenset()  # pod identities, and Identity.HOST for the node
    pod_addresses: frozenset[IPAddress] = frozenset()  # the addresses of those pods
    blocks: tuple[AddressBlock, ...] = ()  # by address: ipBlock, GlobalNetworkPolicy nets
    host: bool = False  # the node itself (the k8s tier always allows it)

    @property
    def is_empty(self) -> bool:
        return not (self.identities or self.pod_addresses or self.blocks or self.host)


@dataclass(frozen=True)
class CompiledRule:
    rule_id: int  # unique within one PolicyState; echoed by the datapath
    action: Action
    peers: PeerSet | None  # None: any peer
    protocol: int | None  # IP protocol number (6, 17, 132); None: any protocol
    ports: tuple[PortRange, ...] = ()  # destination ports; empty: any port
    origin: str = ""  # e.g. 'NetworkPolicy x/allow-b ingress[0]'


@dataclass(frozen=True)
class DirectionPolicy:
    """One endpoint, one direction."""

    global_rules: tuple[CompiledRule, ...] = ()  # in evaluation order (Allow/Deny/Pass/Log)
    global_selected: bool = False  # a global policy applies here: unmatched flows are denied
    kubernetes_rules: tuple[CompiledRule, ...] = ()  # allows; any one of them admits a flow
    kubernetes_isolated: bool = False  # a NetworkPolicy applies here: unmatched are denied

    @property
    def enforced(self) -> bool:
        return self.global_selected or self.kubernetes_isolated or bool(self.global_rules)


@dataclass(frozen=True)
class EndpointPolicy:
    name: str  # "namespace/pod", or "hostendpoint/NAME"
    policy_id: int  # the datapath's endpoint key: host veth ifindex, or the interface's
    identity: int  # Identity.HOST for host endpoints
    addresses: tuple[IPAddress, ...]
    interface: str  # host veth (pods) or the host endpoint's interface
    directions: Mapping[Direction, DirectionPolicy] = field(default_factory=dict)
    host_endpoint: bool = False


@dataclass(frozen=True)
class IdentityInfo:
    identity: int
    namespace: str = ""  # pods
    labels: Mapping[str, str] = field(default_factory=dict)  # pods
    cidr: IPNetwork | None = None  # CIDR identities

    def __str__(self) -> str:
        if self.cidr is not None:
            return f"cidr:{self.cidr}"
        if self.identity < FIRST_ALLOCATED_IDENTITY:
            return Identity(self.identity).name.lower().replace("_", "-")
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.namespace}:{{{labels}}}"


@dataclass(frozen=True)
class IpcacheEntry:
    identity: int
    cidr_identity: int


@dataclass(frozen=True)
class FailsafePort:
    inbound: bool
    protocol: int
    port: int


@dataclass(frozen=True)
class PolicyState:
    """Everything policy means on one node."""

    endpoints: tuple[EndpointPolicy, ...] = ()
    identities: Mapping[int, IdentityInfo] = field(default_factory=dict)
    ipcache: Mapping[IPNetwork, IpcacheEntry] = field(default_factory=dict)
    failsafe: tuple[FailsafePort, ...] = ()
    prefilter_deny: tuple[IPNetwork, ...] = ()  # XDP CIDR deny list of this node's uplink
    problems: tuple[str, ...] = ()

    @property
    def filters_before_the_stack(self) -> bool:
        """Whether the uplink's XDP program has anything to judge: a deny list or a
        doNotTrack host endpoint policy. XDP on a veth turns off its peer's segmentation
        offload, so it is attached only then."""
        return bool(self.prefilter_deny) or any(
            Direction.UNTRACKED in e.directions for e in self.endpoints if e.host_endpoint)
