"""Reading the node's network devices (netlink, this thread's namespace)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.model.addresses import IPAddress

IFF_UP = 0x1


@dataclass(frozen=True)
class LinkFacts:
    index: int
    name: str
    kind: str  # "" for devices without a kind (physical, loopback)
    mac: str
    up: bool
    info: Mapping[str, Any] = field(default_factory=dict)  # IFLA_INFO_DATA attributes


def _facts(msg: Any) -> LinkFacts:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind, data = "", {}
    if linkinfo is not None:
        kind = str(linkinfo.get_attr("IFLA_INFO_KIND") or "")
        info_data = linkinfo.get_attr("IFLA_INFO_DATA")
        if info_data is not None and hasattr(info_data, "get"):
            data = {name: value for name, value in info_data.get("attrs", [])}
    return LinkFacts(int(msg["index"]), str(msg.get_attr("IFLA_IFNAME")), kind,
                     str(msg.get_attr("IFLA_ADDRESS") or "").lower(),
                     bool(msg["flags"] & IFF_UP), data)


def read_links(ipr: Any) -> dict[str, LinkFacts]:
    """Every device of the namespace, by name."""
    return {facts.name: facts for facts in map(_facts, ipr.get_links())}


def ifindexes(links: Mapping[str, LinkFacts]) -> dict[str, int]:
    return {name: facts.index for name, facts in links.items()}


def device_holding(ipr: Any, addresses: Iterable[IPAddress]) -> str | None:
    """The name of the device that holds one of ADDRESSES (the first found, in order)."""
    wanted = list(addresses)
    holders: dict[IPAddress, int] = {}
    for msg in ipr.get_addr():
        text = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
        if text:
            holders.setdefault(ipaddress.ip_address(text), int(msg["index"]))
    names = {facts.index: name for name, facts in read_links(ipr).items()}
    for address in wanted:
        if address in holders:
            return names.get(holders[address])
    return None
