"""Random sequences of cluster changes for the incremental-compile tests: Services of
every type (some Maglev, some Local, some selecting pods), their EndpointSlices, Pods and
this node, changed, added and deleted at random."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

from sluice.datastore import Change, ChangeKind, ClusterState, ResourceKey
from sluice.model import Resource, parse_text
from tests.compile.helpers import N2

NODE = "n1"
NAMESPACES = ("a", "b")
SERVICES = 8
POOL = [f"198.18.{16 + i % 2}.{10 + i}" for i in range(12)] + \
    [f"fd00:10:{1 + i % 2}::{10 + i:x}" for i in range(6)]


def resource(doc: dict[str, Any]) -> Resource:
    parsed = parse_text(json.dumps(doc), "scenario.json", json_format=True)
    assert not parsed.problems, parsed.problems
    (found,) = parsed.resources
    return found


def node(rng: random.Random) -> Resource:
    addresses = [{"type": "InternalIP", "address": "198.18.0.11"},
                 {"type": "InternalIP", "address": "fd00:ff::11"}]
    if rng.random() < 0.5:
        addresses.append({"type": "ExternalIP", "address": "198.18.100.11"})
    return resource({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
                     "spec": {"podCIDRs": ["198.18.16.0/24", "fd00:10:1::/64"]},
                     "status": {"addresses": addresses}})


def service(rng: random.Random, namespace: str, index: int) -> Resource:
    kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
    spec: dict[str, Any] = {
        "type": kind,
        "clusterIPs": [f"198.19.{index}.{10 + NAMESPACES.index(namespace)}",
                       f"fd00:96::{index}:{10 + NAMESPACES.index(namespace)}"],
        "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"],
        "ports": [{"name": "http", "port": 80 + rng.randrange(2), "targetPort": 8080}]}
    if rng.random() < 0.3:
        spec["ports"].append({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53})
    if rng.random() < 0.3:
        spec["selector"] = {"app": f"app{index % 3}"}
    if kind != "ClusterIP" and rng.random() < 0.5:
        spec["externalTrafficPolicy"] = "Local"
    if rng.random() < 0.2:
        spec["sessionAffinity"] = "ClientIP"
    if kind == "LoadBalancer" and rng.random() < 0.5:
        spec["loadBalancerSourceRanges"] = ["198.18.0.0/24"]
    if rng.random() < 0.1:
        spec["clusterIPs"] = [spec["clusterIPs"][1 - rng.randrange(2)]]
        spec["ipFamilyPolicy"] = "SingleStack"
        spec["ipFamilies"] = ["IPv4" if "." in spec["clusterIPs"][0] else "IPv6"]
    annotations = {}
    if rng.random() < 0.3:
        annotations["sluice.io/lb-algorithm"] = "maglev"
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"s{index}", "namespace": namespace, "annotations": annotations},
        "spec": spec}
    if kind == "LoadBalancer":
        doc["status"] = {"loadBalancer": {"ingress": [{"ip": f"198.18.200.{index + 1}"}]}}
    return resource(doc)


def endpoint_slice(rng: random.Random, namespace: str, index: int, part: str) -> Resource:
    family = rng.choice(["IPv4", "IPv4", "IPv6"])
    pool = [a for a in POOL if ("." in a) == (family == "IPv4")]
    addresses = rng.sample(pool, rng.randrange(0, 5))
    return resource({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"s{index}-{part}", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": f"s{index}"}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [{"addresses": [a], "nodeName": rng.choice([NODE, "n2"]),
                       "conditions": {"ready": rng.random() < 0.8,
                                      "terminating": rng.random() < 0.1}}
                      for a in addresses]})


def pod(rng: random.Random, namespace: str, index: int) -> Resource:
    address = POOL[index % 12]
    return resource({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"p{index}", "namespace": namespace,
                     "labels": {"app": f"app{rng.randrange(3)}"}},
        "spec": {"nodeName": rng.choice([NODE, "n2"]), "containers": [{"name": "c"}]},
        "status": {"podIPs": [{"ip": address}],
                   "conditions": [{"type": "Ready",
                                   "status": "True" if rng.random() < 0.8 else "False"}]}})


def _random_object(rng: random.Random) -> Resource:
    namespace = rng.choice(NAMESPACES)
    index = rng.randrange(SERVICES)
    roll = rng.random()
    if roll < 0.05:
        return node(rng)
    if roll < 0.3:
        return service(rng, namespace, index)
    if roll < 0.8:
        return endpoint_slice(rng, namespace, index, rng.choice("xy"))
    return pod(rng, namespace, rng.randrange(6))


def initial(rng: random.Random) -> ClusterState:
    objects: dict[ResourceKey, Resource] = {}
    for found in [node(rng), N2] + [_random_object(rng) for _ in range(40)]:
        objects[ResourceKey.of(found)] = found
    return ClusterState(objects.values(), 1)


def changes(rng: random.Random, state: ClusterState) -> Iterator[list[Change]]:
    """Batches of 1-3 changes, forever (each made against the state before it)."""
    revision = state.revision
    while True:
        batch = []
        for _ in range(rng.randrange(1, 4)):
            revision += 1
            found = _random_object(rng)
            key = ResourceKey.of(found)
            if key in state and rng.random() < 0.25 and key.kind != "Node":
                batch.append(Change(ChangeKind.DELETED, key, None, revision))
            else:
                kind = ChangeKind.MODIFIED if key in state else ChangeKind.ADDED
                batch.append(Change(kind, key, found, revision))
        state = state.with_changes(batch)
        yield batch


def fresh(state: ClusterState) -> ClusterState:
    """The same objects in a state with no history: compiled from scratch."""
    return ClusterState(list(state), state.revision)
