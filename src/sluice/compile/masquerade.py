"""Masquerade: what leaves the cluster from a local pod carries the node's address.

Destinations that keep the pod's address (ip-masq-agent's nonMasqueradeCIDRs): every
node's pod CIDRs and InternalIPs, always, plus an extra list, by default link-local
(169.254.0.0/16, fe80::/10). `--non-masquerade-cidrs` replaces the extra list. Unlike
ip-masq-agent's default, the RFC 1918 and other reserved ranges are not in it: a lab's or
a data centre's "outside" lives in them too.

bpf mode: the node's addresses, the port range and the CIDRs become masq.h's maps
(`masquerade_state` -> `config_entry`, `nonmasq_networks`); the datapath allocates node
ports from the range, which must be disjoint from the host's ephemeral ports
(ip_local_port_range) and from the NodePort range. iptables mode: the same CIDRs as a
SLUICE-MASQ chain (`sluice.compile.iptables_masq`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sluice.compile.services import NODE_PORT_RANGE
from sluice.compile.topology import NodeView
from sluice.datapath.masq import MasqConfig
from sluice.model.addresses import AddressError, IPAddress, IPNetwork, parse_cidr

LINK_LOCAL: tuple[IPNetwork, ...] = (ipaddress.ip_network("169.254.0.0/16"),
                                     ipaddress.ip_network("fe80::/10"))
DEFAULT_NON_MASQUERADE = "169.254.0.0/16,fe80::/10"
DEFAULT_PORTS = (61000, 65535)
DEFAULT_PORTS_TEXT = "61000-65535"


@dataclass(frozen=True)
class MasqueradeOptions:
    enabled: bool = True
    extra_nonmasq: tuple[IPNetwork, ...] = LINK_LOCAL  # besides the cluster's own addresses
    ports: tuple[int, int] = DEFAULT_PORTS  # node ports for masqueraded flows (bpf mode)


@dataclass(frozen=True)
class MasqueradeState:
    enabled: bool
    addr4: IPAddress | None  # what IPv4 pod traffic leaving the cluster becomes
    addr6: IPAddress | None
    ports: tuple[int, int]
    nonmasq: tuple[IPNetwork, ...]  # sorted, collapsed per family
    pod_cidrs: tuple[IPNetwork, ...]  # this node's: the sources masqueraded (iptables mode)

    def config_entry(self) -> MasqConfig:
        return MasqConfig.of(enabled=self.enabled, addr4=self.addr4, addr6=self.addr6,
                             ports=self.ports)

    def nonmasq_of(self, version: int) -> tuple[IPNetwork, ...]:
        return tuple(n for n in self.nonmasq if n.version == version)


def masquerade_state(view: NodeView, options: MasqueradeOptions) -> MasqueradeState:
    cluster: list[IPNetwork] = []
    for node in (view.local, *view.peers):
        cluster += node.pod_cidrs
        cluster += [ipaddress.ip_network(ip) for ip in node.internal_ips]
    return MasqueradeState(options.enabled, view.local.internal_ip(4),
                           view.local.internal_ip(6), options.ports,
                           collapse([*cluster, *options.extra_nonmasq]),
                           tuple(view.local.pod_cidrs))


def collapse(networks: list[IPNetwork]) -> tuple[IPNetwork, ...]:
    """NETWORKS without duplicates or networks inside others, IPv4 first."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def parse_nonmasq_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """`CIDR,CIDR,...` or `none` -> networks; ValueError naming the option and the entry."""
    if text.strip() == "none":
        return ()
    found: list[IPNetwork] = []
    for word in (w.strip() for w in text.split(",")):
        try:
            found.append(parse_cidr(word))
        except AddressError as err:
            raise ValueError(f"--non-masquerade-cidrs {text!r}: {err}") from None
    return tuple(dict.fromkeys(found))


def parse_port_range(text: str, option: str = "--masquerade-ports") -> tuple[int, int]:
    """`LO-HI` -> (LO, HI); ValueError naming OPTION when it is not a range of ports."""
    low, sep, high = text.partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()):
        raise ValueError(f"{option} {text!r}: expected LO-HI, e.g. {DEFAULT_PORTS_TEXT}")
    lo, hi = int(low), int(high)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"{option} {text!r}: ports must satisfy 1024 <= LO <= HI <= 65535")
    return lo, hi


def port_range_problem(ports: tuple[int, int], local_ports: tuple[int, int],
                       option: str = "--masquerade-ports") -> str | None:
    """Why PORTS cannot be masquerade's: they overlap the host's ephemeral ports
    (net.ipv4.ip_local_port_range, LOCAL_PORTS) or the NodePort range; None when fine."""
    text = f"{option} {ports[0]}-{ports[1]}"
    if ports[0] <= local_ports[1] and local_ports[0] <= ports[1]:
        return (f"{text} overlaps the node's ephemeral ports (net.ipv4.ip_local_port_range "
                f"{local_ports[0]}-{local_ports[1]}): masqueraded flows would collide with "
                "the host's own connections; choose a disjoint range, or narrow "
                "ip_local_port_range")
    first, last = NODE_PORT_RANGE.start, NODE_PORT_RANGE.stop - 1
    if ports[0] <= last and first <= ports[1]:
        return (f"{text} overlaps the NodePort range {first}-{last}: replies to "
                "masqueraded flows would be taken for node port traffic")
    return None
