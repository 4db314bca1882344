"""Which established flows a policy now forbids: iptables mode judges a flow once, when
conntrack first sees it, so a policy change must name the flows to cut. Pure: the flows
come from conntrack, the verdicts from the same rules the chains were made from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sluice.compile.identities import IpcacheLookup
from sluice.compile.policyflat import Flow, evaluate_rules
from sluice.compile.policytypes import Action, Direction, Identity, PolicyState
from sluice.model.addresses import IPAddress


@dataclass(frozen=True)
class TrackedFlow:
    """A conntrack entry's pod-facing tuple: the original source, and the destination
    that answers (the backend, after a Service's translation)."""

    protocol: int
    source: IPAddress
    source_port: int
    destination: IPAddress
    destination_port: int


def forbidden_flows(state: PolicyState, flows: Iterable[TrackedFlow]) -> list[TrackedFlow]:
    """The FLOWS that STATE denies at the egress of their source pod or at the ingress of
    their destination pod (the pods of this node that STATE knows)."""
    pods = {address: endpoint for endpoint in state.endpoints if not endpoint.host_endpoint
            for address in endpoint.addresses}
    lookup = IpcacheLookup(state.ipcache)

    def allowed(endpoint_address: IPAddress, direction: Direction, peer: IPAddress,
                flow: TrackedFlow) -> bool:
        endpoint = pods.get(endpoint_address)
        if endpoint is None:
            return True
        world = Identity.WORLD_V4 if peer.version == 4 else Identity.WORLD_V6
        known = lookup(peer)
        identity = known.identity if known else world
        cidr_identity = known.cidr_identity if known else world
        action, _ = evaluate_rules(state, Flow(endpoint.policy_id, direction, peer, identity,
                                               cidr_identity, flow.protocol,
                                               flow.destination_port))
        return action is Action.ALLOW

    return [flow for flow in flows
            if not (allowed(flow.source, Direction.EGRESS, flow.destination, flow)
                    and allowed(flow.destination, Direction.INGRESS, flow.source, flow))]
