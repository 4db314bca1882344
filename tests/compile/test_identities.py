"""Identities derived from content, and the ipcache that maps addresses to them."""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network

from sluice.compile.identities import (
    IDENTITY_SPACE,
    CidrIndex,
    IpcacheLookup,
    PodAddresses,
    allocate,
    cidr_identity_key,
    hashed_ids,
    ipcache_entries,
    pod_identity_key,
)
from sluice.compile.policytypes import FIRST_ALLOCATED_IDENTITY, Identity, IpcacheEntry

NET = ip_network
IP = ip_address


def test_pod_key_is_canonical_and_names_namespace_and_labels() -> None:
    key = pod_identity_key("x", {"a": "1", "b": "2"})
    assert key == pod_identity_key("x", {"b": "2", "a": "1"})
    assert pod_identity_key("x", {"a": "1"}) != pod_identity_key("y", {"a": "1"})
    assert pod_identity_key("x", {"a": "1,b=2"}) != pod_identity_key("x", {"a": "1", "b": "2"})
    assert pod_identity_key("x", {}) != pod_identity_key("x", {"": ""})


def test_allocation_is_deterministic_whatever_the_order_and_company() -> None:
    keys = [pod_identity_key("x", {"pod": str(i)}) for i in range(200)]
    alone = allocate(keys)
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    assert allocate(shuffled) == alone
    with_more = allocate([*keys, *(cidr_identity_key(NET(f"10.{i}.0.0/16")) for i in range(50))])
    assert {key: with_more[key] for key in keys} == alone, "others do not move an identity"
    assert all(FIRST_ALLOCATED_IDENTITY <= v < FIRST_ALLOCATED_IDENTITY + IDENTITY_SPACE
               for v in alone.values())
    assert len(set(alone.values())) == len(keys)


def test_world_cidrs_have_reserved_identities() -> None:
    ids = allocate([cidr_identity_key(NET("0.0.0.0/0")), cidr_identity_key(NET("::/0")),
                    cidr_identity_key(NET("10.0.0.0/8"))])
    assert ids["cidr:0.0.0.0/0"] == Identity.WORLD_V4
    assert ids["cidr:::/0"] == Identity.WORLD_V6
    assert ids["cidr:10.0.0.0/8"] >= FIRST_ALLOCATED_IDENTITY


def test_collisions_rehash_in_sorted_order() -> None:
    keys = [f"k{i}" for i in range(8)]
    ids = hashed_ids(keys, first=100, space=8)
    assert sorted(ids.values()) == list(range(100, 108)), "a full space still has no duplicate"
    assert hashed_ids(reversed(keys), first=100, space=8) == ids
    first_key = hashed_ids(["k0"], first=100, space=8)
    assert ids["k0"] == first_key["k0"], "the first key in sorted order keeps its hash"


def test_cidr_index_finds_the_most_specific_network() -> None:
    index = CidrIndex([NET("10.0.0.0/8"), NET("10.1.0.0/16"), NET("10.1.2.3/32"),
                       NET("fd00::/8")])
    assert index.most_specific(IP("10.1.2.3")) == NET("10.1.2.3/32")
    assert index.most_specific(IP("10.1.2.4")) == NET("10.1.0.0/16")
    assert index.most_specific(IP("10.2.0.1")) == NET("10.0.0.0/8")
    assert index.most_specific(NET("10.1.0.0/16")) == NET("10.1.0.0/16")
    assert index.most_specific(NET("10.0.0.0/7")) is None
    assert index.most_specific(IP("11.0.0.1")) is None
    assert index.most_specific(IP("fd00::1")) == NET("fd00::/8")


def test_ipcache_names_pods_nodes_cidrs_and_the_world() -> None:
    cidrs = [NET("198.18.16.0/24"), NET("198.18.16.7/32"), NET("198.18.0.0/24"),
             NET("fd00:10::/32")]
    pod_a = pod_identity_key("x", {"pod": "a"})
    pod_b = pod_identity_key("x", {"pod": "b"})
    ids = allocate([pod_a, pod_b, *(cidr_identity_key(c) for c in cidrs)])
    cidr_id = {c: ids[cidr_identity_key(c)] for c in cidrs}
    pods = [PodAddresses(pod_a, (IP("198.18.16.5"), IP("fd00:10:1::5"))),
            PodAddresses(pod_b, (IP("198.18.16.7"), IP("203.0.113.1")))]
    cache = ipcache_entries(pods, [IP("198.18.0.11")], [IP("198.18.0.12"), IP("fd00:ff::12")],
                            cidrs, ids)
    assert cache[NET("198.18.16.5/32")] == IpcacheEntry(ids[pod_a], cidr_id[NET("198.18.16.0/24")])
    assert cache[NET("fd00:10:1::5/128")] == IpcacheEntry(ids[pod_a], cidr_id[NET("fd00:10::/32")])
    assert cache[NET("198.18.16.7/32")] == IpcacheEntry(ids[pod_b],
                                                         cidr_id[NET("198.18.16.7/32")]), \
        "a pod address that is a policy /32 carries both"
    assert cache[NET("203.0.113.1/32")] == IpcacheEntry(ids[pod_b], Identity.WORLD_V4)
    assert cache[NET("198.18.0.11/32")] == IpcacheEntry(Identity.HOST,
                                                         cidr_id[NET("198.18.0.0/24")])
    assert cache[NET("198.18.0.12/32")] == IpcacheEntry(Identity.REMOTE_NODE,
                                                         cidr_id[NET("198.18.0.0/24")])
    assert cache[NET("fd00:ff::12/128")] == IpcacheEntry(Identity.REMOTE_NODE, Identity.WORLD_V6)
    assert cache[NET("198.18.16.0/24")] == IpcacheEntry(cidr_id[NET("198.18.16.0/24")],
                                                         cidr_id[NET("198.18.16.0/24")])
    assert cache[NET("0.0.0.0/0")] == IpcacheEntry(Identity.WORLD_V4, Identity.WORLD_V4)
    assert cache[NET("::/0")] == IpcacheEntry(Identity.WORLD_V6, Identity.WORLD_V6)
    assert len(cache) == 4 + 2 + 3 + 3, "cidrs, world, pods (one is a cidr /32), nodes"

    lookup = IpcacheLookup(cache)
    assert lookup(IP("198.18.16.99")) == cache[NET("198.18.16.0/24")]
    assert lookup(IP("8.8.8.8")) == IpcacheEntry(Identity.WORLD_V4, Identity.WORLD_V4)
    assert lookup(IP("2001:db8::1")) == IpcacheEntry(Identity.WORLD_V6, Identity.WORLD_V6)


def test_an_address_claimed_twice_goes_to_the_node_then_the_first_pod() -> None:
    first, second = pod_identity_key("x", {"n": "1"}), pod_identity_key("x", {"n": "2"})
    ids = allocate([first, second])
    pods = [PodAddresses(first, (IP("198.18.16.5"), IP("198.18.0.11"))),
            PodAddresses(second, (IP("198.18.16.5"),))]
    cache = ipcache_entries(pods, [IP("198.18.0.11")], [IP("198.18.0.11")], [], ids)
    assert cache[NET("198.18.16.5/32")].identity == ids[first]
    assert cache[NET("198.18.0.11/32")].identity == Identity.HOST
