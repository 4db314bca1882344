"""Numeric identities of policy peers, and the ipcache that maps addresses to them.

An identity is derived from content, not handed out in arrival order: a hash of a
canonical key (a pod's namespace and labels, or a CIDR), so every node and every restart
computes the same number from the same cluster without coordinating. A hash collision is
resolved by rehashing with a counter, keys taken in sorted order; with 2**31 values that
is rare, and then only the colliding key's number depends on which other keys exist.

Pods with equal namespace and labels share one identity: policy selects by exactly those
(plus the namespace's labels, which are equal for equal namespaces), so one identity is
always selected as a whole. A label change moves a pod to another identity.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sluice.compile.policytypes import FIRST_ALLOCATED_IDENTITY, Identity, IpcacheEntry
from sluice.model.addresses import IPAddress, IPNetwork

IDENTITY_SPACE = 2**31 - FIRST_ALLOCATED_IDENTITY
WORLD_V4_NETWORK = ipaddress.IPv4Network("0.0.0.0/0")
WORLD_V6_NETWORK = ipaddress.IPv6Network("::/0")


def pod_identity_key(namespace: str, labels: Mapping[str, str]) -> str:
    """The canonical key of a pod identity: unambiguous whatever the label text holds."""
    return "pod:" + json.dumps([namespace, sorted(labels.items())], separators=(",", ":"))


def cidr_identity_key(network: IPNetwork) -> str:
    return f"cidr:{network}"


RESERVED_KEYS: Mapping[str, int] = {
    cidr_identity_key(WORLD_V4_NETWORK): Identity.WORLD_V4,
    cidr_identity_key(WORLD_V6_NETWORK): Identity.WORLD_V6,
}


def hashed_ids(keys: Iterable[str], first: int, space: int) -> dict[str, int]:
    """A number in [first, first + space) per key, from the key's sha256; collisions rehash
    with a counter, keys resolved in sorted order."""
    taken: set[int] = set()
    ids: dict[str, int] = {}
    for key in sorted(set(keys)):
        counter = 0
        while True:
            text = key if counter == 0 else f"{key}#{counter}"
            digest = hashlib.sha256(text.encode()).digest()
            number = first + int.from_bytes(digest[:4], "big") % space
            if number not in taken:
                break
            counter += 1
        taken.add(number)
        ids[key] = number
    return ids


def allocate(keys: Iterable[str]) -> dict[str, int]:
    """Identity per key; the world CIDRs get their reserved identities."""
    wanted = set(keys)
    ids = {key: int(RESERVED_KEYS[key]) for key in wanted if key in RESERVED_KEYS}
    ids.update(hashed_ids(wanted - ids.keys(), FIRST_ALLOCATED_IDENTITY, IDENTITY_SPACE))
    return ids


def host_network(address: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(address)


class CidrIndex:
    """The most specific of a set of networks holding an address or network."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        tables: dict[int, dict[int, dict[int, IPNetwork]]] = {4: {}, 6: {}}
        for network in networks:
            by_prefix = tables[network.version].setdefault(network.prefixlen, {})
            by_prefix[int(network.network_address)] = network
        self._tables = {
            version: sorted(by_prefix.items(), reverse=True)
            for version, by_prefix in tables.items()
        }

    def most_specific(self, value: IPAddress | IPNetwork) -> IPNetwork | None:
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            value = host_network(value)
        bits = value.max_prefixlen
        start = int(value.network_address)
        for prefixlen, networks in self._tables[value.version]:
            if prefixlen > value.prefixlen:
                continue
            mask = ((1 << prefixlen) - 1) << (bits - prefixlen)
            found = networks.get(start & mask)
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class PodAddresses:
    identity_key: str  # pod_identity_key(...)
    addresses: tuple[IPAddress, ...]


def ipcache_entries(pods: Iterable[PodAddresses], local_node_ips: Iterable[IPAddress],
                    remote_node_ips: Iterable[IPAddress], policy_cidrs: Iterable[IPNetwork],
                    identity_of: Mapping[str, int]) -> dict[IPNetwork, IpcacheEntry]:
    """Every address policy can name -> (its identity, the most specific policy CIDR's).

    Pod addresses (/32, /128) carry the pod's identity; this node's addresses HOST, other
    nodes' REMOTE_NODE; every policy CIDR its own identity twice; 0.0.0.0/0 and ::/0 are
    WORLD. A pod or node address also names the most specific policy CIDR holding it
    (WORLD when none does), so an ipBlock selects it by address like any other IP. An
    address claimed twice goes to the first pod (in the given order); a node's address
    wins over a pod's, this node over another.
    """
    cidrs = {WORLD_V4_NETWORK, WORLD_V6_NETWORK, *policy_cidrs}
    index = CidrIndex(cidrs)
    identity_of = {**RESERVED_KEYS, **identity_of}

    def cidr_identity(address: IPAddress) -> int:
        network = index.most_specific(address)
        assert network is not None  # the world networks hold every address
        return identity_of[cidr_identity_key(network)]

    entries: dict[IPNetwork, IpcacheEntry] = {}
    for network in cidrs:
        identity = identity_of[cidr_identity_key(network)]
        entries[network] = IpcacheEntry(identity, identity)
    claimed: set[IPNetwork] = set()
    for pod in pods:
        identity = identity_of[pod.identity_key]
        for address in pod.addresses:
            network = host_network(address)
            if network not in claimed:
                claimed.add(network)
                entries[network] = IpcacheEntry(identity, cidr_identity(address))
    for identity, addresses in ((Identity.REMOTE_NODE, remote_node_ips),
                                (Identity.HOST, local_node_ips)):
        for address in addresses:
            entries[host_network(address)] = IpcacheEntry(identity, cidr_identity(address))
    return entries


class IpcacheLookup:
    """What the datapath's LPM lookup of an address in the ipcache finds."""

    def __init__(self, ipcache: Mapping[IPNetwork, IpcacheEntry]) -> None:
        self._ipcache = ipcache
        self._index = CidrIndex(ipcache)

    def __call__(self, address: IPAddress) -> IpcacheEntry | None:
        network = self._index.most_specific(address)
        return None if network is None else self._ipcache[network]
