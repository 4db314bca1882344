"""iptables mode: the services of a ServiceTable as NAT rules, structured the way
kube-proxy's iptables mode structures them, for iptables-restore / ip6tables-restore.

    PREROUTING, OUTPUT  -> SLUICE-SERVICES
    SLUICE-SERVICES     per frontend: -d IP -p PROTO --dport PORT -> SLUICE-SVC-<hash>
                        (external frontends -> SLUICE-EXT-<hash>; node ports through
                        SLUICE-NODEPORTS for destinations of type LOCAL)
    SLUICE-FW-<hash>    loadBalancerSourceRanges: allowed -> EXT, others marked for DROP
    SLUICE-EXT-<hash>   mark for masquerade unless the traffic policy is Local -> SVC
    SLUICE-SVC-<hash>   one rule per backend: random with probability 1/(n-i) -> SEP
    SLUICE-SEP-<hash>   mark hairpin traffic for masquerade, DNAT to the backend
    POSTROUTING         -> SLUICE-POSTROUTING: MASQUERADE what was marked

A frontend without backends is REJECTed in the filter table, so clients fail at once.
Differences from bpf mode: every packet of a flow is NATed by conntrack (not once per
socket), and hairpin traffic is masqueraded, so the pod sees the node's address.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from sluice.compile.services import FrontendScope, ServicePlan, ServiceTable

MASQ_MARK = "0x4000/0x4000"
DROP_MARK = "0x8000/0x8000"
SERVICES = "SLUICE-SERVICES"
NODEPORTS = "SLUICE-NODEPORTS"
POSTROUTING = "SLUICE-POSTROUTING"
MARK_MASQ = "SLUICE-MARK-MASQ"
FILTER_SERVICES = "SLUICE-SERVICES"  # the filter table's chain of the same name


@dataclass(frozen=True)
class ServiceRules:
    """iptables-restore input for one address family."""

    version: int
    text: str


def chain_name(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return f"{prefix}-{base64.b32encode(digest).decode()[:16]}"


def _match(plan: ServicePlan) -> str:
    proto = plan.frontend.protocol.lower()
    return f"-p {proto} -m {proto} --dport {plan.frontend.port}"


def _comment(plan: ServicePlan) -> str:
    port = f":{plan.port_name}" if plan.port_name else ""
    return f'-m comment --comment "{plan.service}{port} {plan.scope.value}"'


def _host(address: object, version: int) -> str:
    return f"{address}/{32 if version == 4 else 128}"


def service_rules(table: ServiceTable, version: int) -> ServiceRules:
    plans = [p for p in table.plans if p.frontend.address.version == version]
    nat_chains = [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ]
    nat: list[str] = [
        f"-A {MARK_MASQ} -j MARK --set-xmark {MASQ_MARK}",
        f"-A {POSTROUTING} -m mark ! --mark {MASQ_MARK} -j RETURN",
        f"-A {POSTROUTING} -j MARK --set-xmark 0x4000/0x0",
        f"-A {POSTROUTING} -j MASQUERADE --random-fully",
    ]
    # Sources outside loadBalancerSourceRanges were marked in nat; drop them here.
    filter_rules = [f"-A {FILTER_SERVICES} -m mark --mark {DROP_MARK} -j DROP"]
    node_port_rules: list[str] = []
    emitted_seps: set[str] = set()  # frontends of one service port share their SEP chains
    for plan in plans:
        svc_chain = chain_name("SLUICE-SVC", plan.service, plan.port_name, plan.scope.value,
                               plan.frontend)
        target = svc_chain
        nat_chains.append(svc_chain)
        if plan.scope.is_external:
            target, external = _external_chains(plan, svc_chain, nat_chains)
            nat.extend(external)
        frontend = f"{_comment(plan)} {_match(plan)} -j {target}"
        if plan.scope is FrontendScope.NODE_PORT:
            node_port_rules.append(f"-A {NODEPORTS} -d {_host(plan.frontend.address, version)} "
                                   f"{frontend}")
        else:
            nat.append(f"-A {SERVICES} -d {_host(plan.frontend.address, version)} {frontend}")
        if not plan.backends:
            # A reset for TCP: a connecting IPv6 socket ignores a first port unreachable.
            reject = ("tcp-reset" if plan.frontend.protocol == "TCP"
                      else "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable")
            filter_rules.append(f"-A {FILTER_SERVICES} -d {_host(plan.frontend.address, version)} "
                                f"{_comment(plan)} {_match(plan)} -j REJECT --reject-with {reject}")
            continue
        nat.extend(_service_chain(plan, svc_chain, emitted_seps, nat_chains))
    nat.extend(node_port_rules)
    nat.append(f"-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODEPORTS}")
    text = "\n".join([
        "*nat",
        *(f":{chain} - [0:0]" for chain in dict.fromkeys(nat_chains)),
        *nat,
        "COMMIT",
        "*filter",
        f":{FILTER_SERVICES} - [0:0]",
        *filter_rules,
        "COMMIT",
        "",
    ])
    return ServiceRules(version, text)


def _external_chains(plan: ServicePlan, svc_chain: str,
                     nat_chains: list[str]) -> tuple[str, list[str]]:
    """The chain an external frontend jumps to, and the rules of its chains."""
    ext = chain_name("SLUICE-EXT", plan.service, plan.port_name, plan.frontend)
    nat_chains.append(ext)
    rules = []
    if not plan.local_only:
        # Cluster policy: the backend may be on another node, whose reply must come back here.
        rules.append(f"-A {ext} -j {MARK_MASQ}")
    rules.append(f"-A {ext} -j {svc_chain}")
    if not plan.source_ranges:
        return ext, rules
    firewall = chain_name("SLUICE-FW", plan.service, plan.port_name, plan.frontend)
    nat_chains.append(firewall)
    rules += [f"-A {firewall} -s {cidr} -j {ext}" for cidr in plan.source_ranges]
    rules.append(f"-A {firewall} -j MARK --set-xmark {DROP_MARK}")
    return firewall, rules


def _service_chain(plan: ServicePlan, chain: str, emitted_seps: set[str],
                   nat_chains: list[str]) -> list[str]:
    rules: list[str] = []
    count = len(plan.backends)
    affinity = plan.affinity_timeout
    sep_chains = []
    for backend in plan.backends:
        endpoint = (f"[{backend.address}]:{backend.port}" if backend.address.version == 6
                    else f"{backend.address}:{backend.port}")
        sep = chain_name("SLUICE-SEP", plan.service, plan.port_name, endpoint)
        sep_chains.append((sep, backend, endpoint))
    if affinity is not None:
        rules += [f"-A {chain} -m recent --name {sep} --rcheck --seconds {affinity} --reap "
                  f"-j {sep}" for sep, _, _ in sep_chains]
    for index, (sep, _, _) in enumerate(sep_chains):
        remaining = count - index
        if remaining > 1:
            rules.append(f"-A {chain} -m statistic --mode random --probability "
                         f"{1 / remaining:.11f} -j {sep}")
        else:
            rules.append(f"-A {chain} -j {sep}")
    proto = plan.frontend.protocol.lower()
    for sep, backend, endpoint in sep_chains:
        if sep in emitted_seps:
            continue
        emitted_seps.add(sep)
        nat_chains.append(sep)
        version = backend.address.version
        rules.append(f"-A {sep} -s {_host(backend.address, version)} -j {MARK_MASQ}")
        recent = f"-m recent --name {sep} --set " if affinity is not None else ""
        rules.append(f"-A {sep} -p {proto} {recent}-m {proto} -j DNAT "
                     f"--to-destination {endpoint}")
    return rules
