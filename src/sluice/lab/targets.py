"""Naming places in a lab on the command line.

Where a command runs (`exec` TARGET, `probe` FROM):
    NS/POD       the pod's namespace (the node's for a hostNetwork pod)
    node/NODE    the node's host namespace
    external     the namespace outside the cluster, on the underlay
    underlay     the underlay bridge's namespace (exec only)

What a probe connects to (`probe` TO):
    NS/POD       the pod's IP of the probe's family
    svc/NS/NAME  the Service's clusterIP of that family, from the datastore
    node/NODE    the node's InternalIP of that family
    an IP        as given
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sluice.datastore import ResourceKey, open_datastore
from sluice.lab import names
from sluice.lab.errors import LabError
from sluice.lab.state import LabState, pod_key
from sluice.model import Service

SOURCE_FORMS = "NS/POD, node/NODE or external"
EXEC_FORMS = "NS/POD, node/NODE, external or underlay"
DESTINATION_FORMS = "NS/POD, svc/NS/NAME, node/NODE or an IP address"


@dataclass(frozen=True)
class Place:
    """A namespace to run in, and the cgroup processes started there belong to."""

    label: str
    netns: str
    cgroup: str


def resolve_place(state: LabState, text: str, *, allow_underlay: bool = False) -> Place:
    lab = state.name
    if text == "external":
        return Place(text, names.external_netns(lab), names.outside_cgroup(lab, "external"))
    if text == "underlay" and allow_underlay:
        return Place(text, names.underlay_netns(lab), names.outside_cgroup(lab, "underlay"))
    kind, sep, rest = text.partition("/")
    if sep and kind == "node" and rest:
        node = state.plan.node(rest)
        return Place(text, node.netns, node.cgroup)
    if sep and rest and "/" not in rest:
        record = state.pods.get(pod_key(kind, rest))
        if record is None:
            raise LabError(f"no pod {text} in lab {lab} (see: sluice lab get --name {lab} pods)")
        return Place(text, record.netns, record.cgroup)
    forms = EXEC_FORMS if allow_underlay else SOURCE_FORMS
    raise LabError(f"{text!r} is not a place in the lab: expected {forms}")


@dataclass(frozen=True)
class Destination:
    label: str
    address: str
    family: int


def _pick(label: str, candidates: list[str], family: int | None) -> Destination:
    for address in candidates:
        version = ipaddress.ip_address(address).version
        if family is None or version == family:
            return Destination(label, address, version)
    have = ", ".join(candidates) or "none"
    raise LabError(f"{label} has no IPv{family} address (it has: {have})")


def resolve_destination(state: LabState, text: str, family: int | None) -> Destination:
    """Where TEXT points, in FAMILY (default: the family of the literal, else the target's
    first address: the lab's first family for pods and nodes, a Service's primary one)."""
    try:
        literal = ipaddress.ip_address(text)
    except ValueError:
        literal = None
    if literal is not None:
        if family is not None and literal.version != family:
            raise LabError(f"{text} is IPv{literal.version}, not IPv{family}")
        return Destination(text, str(literal), literal.version)
    parts = text.split("/")
    if len(parts) == 3 and parts[0] == "svc" and all(parts[1:]):
        return _pick(text, _service_ips(state, parts[1], parts[2]), family)
    if len(parts) == 2 and parts[0] == "node" and parts[1]:
        return _pick(text, list(state.plan.node(parts[1]).addresses), family)
    if len(parts) == 2 and all(parts):
        record = state.pods.get(pod_key(parts[0], parts[1]))
        if record is None:
            raise LabError(f"no pod {text} in lab {state.name} "
                           f"(see: sluice lab get --name {state.name} pods)")
        return _pick(text, record.ips, family)
    raise LabError(f"{text!r} is not a destination: expected {DESTINATION_FORMS}")


def _service_ips(state: LabState, namespace: str, name: str) -> list[str]:
    with open_datastore(state.paths.datastore_url) as datastore:
        service = datastore.snapshot().get(ResourceKey("Service", namespace, name))
    if not isinstance(service, Service):
        raise LabError(f"no Service {namespace}/{name} in lab {state.name} "
                       f"(see: sluice lab get --name {state.name} services)")
    return [str(ip) for ip in service.spec.cluster_ip_addresses]
