"""Making the lab's namespaces and wiring them to the underlay bridge.

    sl-<lab>-underlay   bridge br0; one port per node and one for external
    sl-<lab>-node<i>    eth0 (to br0) with the node's InternalIPs; forwarding on; the
                        service and load balancer ranges routed out of eth0
    sl-<lab>-external   eth0 (to br0); routes to every node's pod CIDRs via that node,
                        and to the load balancer pools via node1

Everything happens inside those namespaces (`sluice.netns.entered`, `sluice.netlink`);
nothing here touches the namespace the command runs in.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from sluice import netlink, netns
from sluice.lab.interrupts import held_back
from sluice.lab.plan import UNDERLAY_MTU, UPLINK, EndpointPlan, LabPlan, NodePlan, underlay_prefix

BRIDGE = "br0"
EXTERNAL_PORT = "external"

# Set before any link exists, so every link the namespace gets inherits them.
_NO_DAD = (
    # IPv6 neighbour solicitations on the underlay are sent from link-local addresses,
    # which must be usable at once rather than tentative for a second.
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)
_ROUTER = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.forwarding", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
)


def create_netns(name: str) -> None:
    """Create namespace NAME; interrupts wait until it exists (pyroute2 forks)."""
    with held_back():
        netns.create(name)


def _sysctls(ns: str, settings: tuple[tuple[str, str], ...]) -> None:
    for name, value in settings:
        netlink.set_sysctl(ns, name, value)


def create_underlay(plan: LabPlan) -> None:
    create_netns(plan.underlay_netns)
    with netns.entered(plan.underlay_netns), IPRoute() as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge", br_mcast_snooping=0, br_stp_state=0)
        index = ipr.link_lookup(ifname=BRIDGE)[0]
        ipr.link("set", index=index, mtu=UNDERLAY_MTU, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _attach_to_underlay(plan: LabPlan, ns: str, port: str) -> None:
    """A veth from NS (named eth0 there) to a new port PORT of the underlay bridge."""
    netlink.create_veth(ns, UPLINK, plan.underlay_netns, port)
    with netns.entered(plan.underlay_netns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=port)[0]
        ipr.link("set", index=index, master=ipr.link_lookup(ifname=BRIDGE)[0],
                 mtu=UNDERLAY_MTU, state="up")


def _cidrs(addresses: tuple[str, ...]) -> list[str]:
    return [f"{address}/{underlay_prefix(6 if ':' in address else 4)}" for address in addresses]


def create_node(plan: LabPlan, node: NodePlan) -> None:
    create_netns(node.netns)
    _sysctls(node.netns, _NO_DAD + _ROUTER)
    _attach_to_underlay(plan, node.netns, node.name)
    netlink.configure(node.netns, UPLINK, _cidrs(node.addresses), mtu=UNDERLAY_MTU)
    for cidr in node.uplink_routes:
        netlink.add_route(node.netns, cidr, dev=UPLINK)


def create_external(plan: LabPlan, external: EndpointPlan) -> None:
    create_netns(external.netns)
    _sysctls(external.netns, _NO_DAD)
    _attach_to_underlay(plan, external.netns, EXTERNAL_PORT)
    netlink.configure(external.netns, UPLINK, _cidrs(external.addresses), mtu=UNDERLAY_MTU)
    for node in plan.nodes:
        for cidr, via in zip(node.pod_cidrs, node.addresses, strict=True):
            netlink.add_route(external.netns, cidr, via=via)
    for cidr, via in external.routes:
        netlink.add_route(external.netns, cidr, via=via)
