"""Switching a node between dataplanes: what the first reconcile in the new mode does
before and after it changes the kernel, so that established flows survive.

iptables -> bpf: the programs are loaded and their maps filled first, the kernel's
conntrack is carried into the BPF conntrack and policy flows (`carry_into_bpf`), then the
programs attach and the iptables rules go (agent/reconcile.py). bpf -> iptables: the
rules go in and the BPF flows into nf_conntrack first (`prepare_iptables`), then the
kernel state changes and the programs detach at once (`detach_bpf`). In iptables mode the
tunnel accepts frames from bpf peers (`bind_tunnel_rx`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from sluice.agent.config import AgentConfig
from sluice.apply.attachments import links_dir, sync_links
from sluice.apply.cgrouplinks import sync_cgroup_links
from sluice.apply.ctcarry import (
    Carried,
    export_from_pins,
    import_into_bpf,
    iptables_dataplane_present,
)
from sluice.apply.errors import ApplyError
from sluice.apply.nodeobject import NodeObject
from sluice.apply.policyrules import sync_policy_rules
from sluice.apply.servicerules import sync_service_rules
from sluice.apply.tunnelrx import install_tunnel_rx, remove_tunnel_rx
from sluice.compile.endpoints import LocalEndpoints
from sluice.compile.policy import policy_state
from sluice.compile.services import service_table
from sluice.compile.topology import Dataplane
from sluice.datastore import ClusterState

log = logging.getLogger("sluice.agent")


@dataclass
class Handover:
    """What a switch between dataplanes needs across one agent's reconciles."""

    config: AgentConfig
    flows_carried: bool = False  # the first reconcile carried flows (or found none to)
    tunnel_rx_bound: int | None = -1  # the tunnel ifindex bound; None: removed; -1: not yet

    def leaving_bpf(self) -> bool:
        """iptables mode, the first reconcile after a bpf-mode agent: its links are pinned."""
        if self.config.dataplane is Dataplane.BPF or self.flows_carried:
            return False
        self.flows_carried = True
        path = links_dir(self.config.pins)
        return os.path.isdir(path) and bool(os.listdir(path))

    def prepare_iptables(self, state: ClusterState, endpoints: LocalEndpoints,
                         devices: dict[str, int]) -> None:
        """bpf -> iptables, before the kernel state changes: the service and policy rules
        in place for new flows, then the BPF flows into nf_conntrack, so established ones
        keep their translation and are not judged as new."""
        def carry() -> Carried | None:
            sync_service_rules(service_table(state, self.config.node))
            sync_policy_rules(policy_state(state, self.config.node, endpoints.endpoints,
                                           self.config.failsafe, interface_ifindexes=devices))
            return export_from_pins(self.config.pins)

        _carry_flows("from bpf into iptables", carry)

    def detach_bpf(self, ifindexes: dict[str, int]) -> None:
        links = sync_links(self.config.pins, {}, frozenset(), ifindexes).changes
        hooks = sync_cgroup_links(self.config.pins, {}, None)
        log.info("detached the bpf dataplane: links -%d, socket hooks -%d", links.removed,
                 hooks.removed)

    def carry_into_bpf(self, node_object: NodeObject, endpoints: LocalEndpoints) -> None:
        """iptables -> bpf, once, before the programs are attached: the established flows
        of the kernel's conntrack into the BPF conntrack and policy flows, so service
        flows keep the backend iptables chose and no flow is judged as new."""
        if self.flows_carried:
            return
        self.flows_carried = True

        def carry() -> Carried | None:
            if not iptables_dataplane_present():
                return None
            local = frozenset(a for e in endpoints.endpoints for a in e.addresses)
            return import_into_bpf(node_object, local)

        _carry_flows("from iptables into bpf", carry)

    def bind_tunnel_rx(self, tunnel: int | None) -> list[str]:
        """iptables mode: frames from bpf-mode peers accepted on the tunnel (see
        apply/tunnelrx.py), bound again whenever the device was made again."""
        wanted = tunnel if self.config.dataplane is not Dataplane.BPF else None
        if wanted == self.tunnel_rx_bound:
            return []
        try:
            if wanted is None:
                remove_tunnel_rx()
            else:
                install_tunnel_rx()
        except ApplyError as err:
            return [str(err)]
        self.tunnel_rx_bound = wanted
        return []


def _carry_flows(direction: str, carry: Callable[[], Carried | None]) -> None:
    """Run CARRY (None: nothing to carry) and log what it carried and what it could not;
    a failure is logged, not raised: the switch goes on, the flows start anew."""
    try:
        carried = carry()
    except (ApplyError, OSError) as err:
        log.warning("carrying flows %s failed: %s", direction, err)
        return
    if carried is None:
        return
    log.info("carried flows %s: %s", direction, carried.summary())
    for flow in carried.not_carried:
        log.warning("flow not carried %s: %s", direction, flow)
