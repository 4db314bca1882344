"""The NetworkPolicy conformance cases, as data: policies and the matrices they must give
on the topology of examples/lab-netpol.yaml (namespaces x, y, z labelled ns=<name>; pods
a, b, c labelled pod=<name>; a and c on node1, b on node2; TCP and UDP on 80 and 81; the
Service x/s-a over x/a).

Every expected matrix is written by hand from the documented semantics (the Kubernetes
NetworkPolicy documentation and the upstream netpol e2e tests named in each case's
source), never computed by Sluice code. Self pairs are always allowed (loopback).
"""

from __future__ import annotations

from typing import Any

from tests.lab.netpol_matrix import (
    Case,
    Check,
    Manifest,
    Peer,
    PodCIDR,
    Reachability,
    Relabel,
    Step,
    all_allowed,
)

UPSTREAM = "upstream netpol e2e"
DOCS = "kubernetes.io NetworkPolicy docs"
SERVICE = {"x/a": "svc/x/s-a"}
ALL: dict[str, Any] = {}
"""The empty label selector: every pod (or namespace)."""


def policy(name: str, namespace: str, pod_selector: dict[str, Any], *,
           ingress: list[dict[str, Any]] | None = None,
           egress: list[dict[str, Any]] | None = None,
           types: list[str] | None = None) -> Manifest:
    spec: dict[str, Any] = {"podSelector": pod_selector}
    if types is not None:
        spec["policyTypes"] = types
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def labels(**wanted: str) -> dict[str, Any]:
    return {"matchLabels": wanted}


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    requirement: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        requirement["values"] = list(values)
    return {"matchExpressions": [requirement]}


POD_A = labels(pod="a")


def deny_ingress(namespace: str) -> Manifest:
    return policy("deny-ingress", namespace, ALL, types=["Ingress"])


def deny_egress(namespace: str) -> Manifest:
    return policy("deny-egress", namespace, ALL, types=["Egress"])


def case(name: str, source: str, policies: list[Manifest], *checks: Check) -> Case:
    return Case(name, source, (Step(tuple(checks), apply=tuple(policies)),))


def tcp(expected: Reachability, port: int = 80, family: int = 4) -> Check:
    return Check(expected, port, "TCP", family)


def udp(expected: Reachability, port: int = 80) -> Check:
    return Check(expected, port, "UDP")


def only_ingress_to_x_a_from(*peers: Peer) -> Reachability:
    matrix = all_allowed().expect_all_ingress("x/a", False)
    for peer in peers:
        matrix = matrix.expect_peer(peer, Peer("x", "a"), True)
    return matrix


def only_egress_from_x_a_to(*peers: Peer) -> Reachability:
    matrix = all_allowed().expect_all_egress("x/a", False)
    for peer in peers:
        matrix = matrix.expect_peer(Peer("x", "a"), peer, True)
    return matrix


DENY_INTO_X = all_allowed().expect_peer(Peer(), Peer("x"), False)
DENY_OUT_OF_X = all_allowed().expect_peer(Peer("x"), Peer(), False)
DENY_INTO_AND_OUT_OF_X = all_allowed().expect_peer(Peer(), Peer("x"), False) \
    .expect_peer(Peer("x"), Peer(), False)
X_A_ONLY_FROM_X_B = only_ingress_to_x_a_from(Peer("x", "b"))
X_A_ONLY_FROM_Y = only_ingress_to_x_a_from(Peer("y"))
X_B_AND_X_C_CLOSED = all_allowed().expect_all_ingress("x/b", False) \
    .expect_all_ingress("x/c", False)
ONLY_X_A_BLOCKED = only_ingress_to_x_a_from()
Y_ONLY_TO_X_A = all_allowed().expect_peer(Peer("y"), Peer(), False) \
    .expect_peer(Peer("y"), Peer("x", "a"), True)
Y_ONLY_TO_X_B = all_allowed().expect_peer(Peer("y"), Peer(), False) \
    .expect_peer(Peer("y"), Peer("x", "b"), True)

CASES: tuple[Case, ...] = (
    case("no-policy-all-allowed", DOCS + ": pods are non-isolated by default", [],
         tcp(all_allowed()), tcp(all_allowed(), 81), udp(all_allowed()),
         udp(all_allowed(), 81), tcp(all_allowed(), family=6)),

    case("default-deny-ingress", UPSTREAM + ": should support a 'default-deny-ingress' policy",
         [deny_ingress("x")],
         tcp(DENY_INTO_X), tcp(DENY_INTO_X, family=6), udp(DENY_INTO_X, 81)),

    case("default-deny-egress", UPSTREAM + ": should deny egress from all pods in a namespace",
         [deny_egress("x")],
         tcp(DENY_OUT_OF_X), tcp(DENY_OUT_OF_X, family=6), udp(DENY_OUT_OF_X)),

    case("default-deny-all", UPSTREAM + ": should support a 'default-deny-all' policy",
         [policy("deny-all", "x", ALL, types=["Ingress", "Egress"])],
         tcp(DENY_INTO_AND_OUT_OF_X), udp(DENY_INTO_AND_OUT_OF_X)),

    case("allow-all-ingress-empty-rule", DOCS + ": allow all ingress traffic (ingress: [{}])",
         [deny_ingress("x"), policy("allow-all-to-a", "x", POD_A, ingress=[{}])],
         tcp(X_B_AND_X_C_CLOSED), udp(X_B_AND_X_C_CLOSED, 81)),

    case("allow-ingress-to-target-any-pod-any-namespace",
         UPSTREAM + ": should enforce policy to allow ingress traffic for a target",
         [deny_ingress("x"),
          policy("allow-all-to-a", "x", POD_A,
                 ingress=[{"from": [{"podSelector": ALL, "namespaceSelector": ALL}]}])],
         tcp(X_B_AND_X_C_CLOSED)),

    case("allow-ingress-from-all-namespaces",
         UPSTREAM + ": should enforce policy to allow ingress traffic from pods in all "
                    "namespaces",
         [deny_ingress("x"),
          policy("allow-from-all-ns", "x", POD_A,
                 ingress=[{"from": [{"namespaceSelector": ALL}]}])],
         tcp(X_B_AND_X_C_CLOSED)),

    case("allow-from-namespace-y",
         UPSTREAM + ": should enforce policy to allow traffic only from a different namespace, "
                    "based on NamespaceSelector",
         [policy("allow-ns-y", "x", POD_A,
                 ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}])],
         tcp(X_A_ONLY_FROM_Y)),

    case("allow-from-pod-b-same-namespace",
         UPSTREAM + ": should enforce policy to allow traffic from pods within server "
                    "namespace based on PodSelector",
         [policy("x-a-allows-x-b", "x", POD_A,
                 ingress=[{"from": [{"podSelector": labels(pod="b")}]}])],
         tcp(X_A_ONLY_FROM_X_B)),

    case("namespace-and-pod-selector-in-one-peer",
         UPSTREAM + ": should enforce policy based on PodSelector and NamespaceSelector",
         [policy("allow-b-outside-x", "x", POD_A, ingress=[{"from": [
             {"namespaceSelector": expression("ns", "NotIn", "x"),
              "podSelector": labels(pod="b")}]}])],
         tcp(only_ingress_to_x_a_from(Peer("y", "b"), Peer("z", "b")))),

    case("namespace-or-pod-selector-two-peers",
         UPSTREAM + ": should enforce policy based on PodSelector or NamespaceSelector",
         [policy("allow-outside-x-or-b", "x", POD_A, ingress=[{"from": [
             {"namespaceSelector": expression("ns", "NotIn", "x")},
             {"podSelector": labels(pod="b")}]}])],
         tcp(all_allowed().expect("x/c", "x/a", False))),

    case("pod-selector-match-expressions-in",
         UPSTREAM + ": should enforce policy based on PodSelector with MatchExpressions",
         [policy("pod-in-b", "x", POD_A,
                 ingress=[{"from": [{"podSelector": expression("pod", "In", "b")}]}])],
         tcp(X_A_ONLY_FROM_X_B)),

    case("namespace-selector-match-expressions-in",
         UPSTREAM + ": should enforce policy based on NamespaceSelector with MatchExpressions",
         [policy("ns-in-y", "x", POD_A,
                 ingress=[{"from": [{"namespaceSelector": expression("ns", "In", "y")}]}])],
         tcp(X_A_ONLY_FROM_Y)),

    case("pod-selector-match-expressions-not-in",
         DOCS + ": label selector operator NotIn",
         [policy("pod-not-in-b", "x", POD_A,
                 ingress=[{"from": [{"podSelector": expression("pod", "NotIn", "b")}]}])],
         tcp(only_ingress_to_x_a_from(Peer("x", "c")))),

    case("namespace-exists-and-pod-in-c",
         DOCS + ": label selector operators Exists and In, both in one peer",
         [policy("any-ns-pod-c", "x", POD_A, ingress=[{"from": [
             {"namespaceSelector": expression("ns", "Exists"),
              "podSelector": expression("pod", "In", "c")}]}])],
         tcp(only_ingress_to_x_a_from(Peer(pod="c")))),

    case("pod-label-does-not-exist-selects-no-peer",
         DOCS + ": label selector operator DoesNotExist (every pod has the key)",
         [policy("pods-without-label", "x", POD_A, ingress=[{"from": [
             {"namespaceSelector": ALL, "podSelector": expression("pod", "DoesNotExist")}]}])],
         tcp(ONLY_X_A_BLOCKED)),

    case("ingress-only-on-port-80",
         UPSTREAM + ": should enforce policy based on Ports",
         [policy("port-80", "x", POD_A, ingress=[{"ports": [{"port": 80}]}])],
         tcp(all_allowed()), tcp(ONLY_X_A_BLOCKED, 81), udp(ONLY_X_A_BLOCKED)),

    case("named-port-ingress",
         UPSTREAM + ": should allow ingress access on one named port",
         [policy("allow-serve-81-tcp", "x", ALL, ingress=[{"ports": [{"port": "serve-81-tcp"}]}])],
         tcp(all_allowed(), 81), tcp(DENY_INTO_X), udp(DENY_INTO_X, 81)),

    case("named-port-ingress-from-namespace",
         UPSTREAM + ": should allow ingress access from namespace on one named port",
         [policy("allow-y-on-serve-80-tcp", "x", ALL, ingress=[{
             "from": [{"namespaceSelector": labels(ns="y")}],
             "ports": [{"port": "serve-80-tcp"}]}])],
         tcp(all_allowed().expect_peer(Peer("x"), Peer("x"), False)
             .expect_peer(Peer("z"), Peer("x"), False)),
         tcp(DENY_INTO_X, 81)),

    case("named-port-egress",
         UPSTREAM + ": should allow egress access on one named port",
         [policy("allow-egress-serve-80-tcp", "x", POD_A, types=["Egress"],
                 egress=[{"ports": [{"port": "serve-80-tcp"}]}])],
         tcp(all_allowed()), tcp(only_egress_from_x_a_to(), 81)),

    case("named-udp-port-ingress",
         DOCS + ": a named port matches with its protocol",
         [policy("allow-serve-80-udp", "x", POD_A,
                 ingress=[{"ports": [{"protocol": "UDP", "port": "serve-80-udp"}]}])],
         udp(all_allowed()), tcp(ONLY_X_A_BLOCKED), udp(ONLY_X_A_BLOCKED, 81)),

    case("end-port-80-81",
         DOCS + ": targeting a range of ports (port 80, endPort 81)",
         [policy("y-on-80-81", "x", POD_A, ingress=[{
             "from": [{"namespaceSelector": labels(ns="y")}],
             "ports": [{"port": 80, "endPort": 81}]}])],
         tcp(X_A_ONLY_FROM_Y), tcp(X_A_ONLY_FROM_Y, 81), udp(ONLY_X_A_BLOCKED)),

    case("end-port-81-85-not-80",
         DOCS + ": targeting a range of ports (port 81, endPort 85)",
         [policy("ports-81-85", "x", POD_A, ingress=[{"ports": [{"port": 81, "endPort": 85}]}])],
         tcp(all_allowed(), 81), tcp(ONLY_X_A_BLOCKED)),

    case("udp-only",
         UPSTREAM + ": should not allow access by TCP when a policy specifies only UDP",
         [policy("udp-80", "x", POD_A, ingress=[{"ports": [{"protocol": "UDP", "port": 80}]}])],
         udp(all_allowed()), tcp(ONLY_X_A_BLOCKED), udp(ONLY_X_A_BLOCKED, 81)),

    case("multiple-policies-add-up",
         UPSTREAM + ": should enforce multiple, stacked policies with overlapping podSelectors",
         [policy("from-x-b", "x", POD_A, ingress=[{"from": [{"podSelector": labels(pod="b")}]}]),
          policy("from-ns-y", "x", POD_A,
                 ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}])],
         tcp(only_ingress_to_x_a_from(Peer("x", "b"), Peer("y")))),

    case("policy-types-ingress-ignores-egress-rules",
         UPSTREAM + ": should enforce policies to check ingress and egress policies can be "
                    "controlled independently",
         [policy("ingress-only", "x", POD_A, types=["Ingress"],
                 ingress=[{"from": [{"podSelector": labels(pod="b")}]}],
                 egress=[{"to": [{"namespaceSelector": labels(ns="z")}]}])],
         tcp(X_A_ONLY_FROM_X_B)),

    case("policy-types-egress-leaves-ingress-open",
         DOCS + ": policyTypes [Egress] leaves ingress unrestricted (its ingress rules "
                "are ignored)",
         [policy("egress-only", "x", POD_A, types=["Egress"],
                 egress=[{"to": [{"podSelector": labels(pod="b")}]}],
                 ingress=[{"from": [{"podSelector": labels(pod="c")}]}])],
         tcp(only_egress_from_x_a_to(Peer("x", "b")))),

    case("default-policy-types-with-egress-rules-isolate-ingress-too",
         DOCS + ": without policyTypes, Ingress is always set and Egress is set when there "
                "are egress rules",
         [policy("egress-rules-only", "x", POD_A,
                 egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}])],
         tcp(only_egress_from_x_a_to(Peer("y")).expect_all_ingress("x/a", False))),

    case("ingress-and-egress-together",
         UPSTREAM + ": should work with Ingress, Egress specified together",
         [policy("both", "x", POD_A, types=["Ingress", "Egress"],
                 ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}],
                 egress=[{"to": [{"namespaceSelector": labels(ns="z")}]}])],
         tcp(only_ingress_to_x_a_from(Peer("y")).expect_all_egress("x/a", False)
             .expect_peer(Peer("x", "a"), Peer("z"), True))),

    case("egress-denied-on-client-even-if-server-allows",
         UPSTREAM + ": should support denying of egress traffic on the client side (even if "
                    "the server explicitly allows this traffic)",
         [policy("y-a-no-egress", "y", POD_A, types=["Egress"]),
          policy("x-a-from-y", "x", POD_A,
                 ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}])],
         tcp(all_allowed().expect_all_ingress("x/a", False)
             .expect_peer(Peer("y"), Peer("x", "a"), True).expect_all_egress("y/a", False))),

    case("egress-ip-block-pod-address",
         UPSTREAM + ": should allow egress access to server in CIDR block",
         [policy("to-x-b-cidr", "x", POD_A, types=["Egress"],
                 egress=[{"to": [{"ipBlock": {"cidr": PodCIDR("x/b")}}]}])],
         tcp(only_egress_from_x_a_to(Peer("x", "b"))),
         tcp(only_egress_from_x_a_to(), family=6)),

    case("egress-ip-block-except",
         UPSTREAM + ": should enforce except clause while egress access to server in CIDR "
                    "block",
         # 198.18.16.0/20 holds both nodes' pod networks (198.18.17.0/24, 198.18.18.0/24)
         [policy("pods-but-x-b", "x", POD_A, types=["Egress"], egress=[{"to": [{"ipBlock": {
             "cidr": PodCIDR("x/b", 20), "except": [PodCIDR("x/b")]}}]}])],
         tcp(all_allowed().expect("x/a", "x/b", False))),

    case("egress-ip-block-except-overlapped-by-another-peer",
         UPSTREAM + ": should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except "
                    "is allowed",
         # the b pods share node2's pod network; x/b is excepted from it, then allowed alone
         [policy("node2-pods", "x", POD_A, types=["Egress"], egress=[{"to": [
             {"ipBlock": {"cidr": PodCIDR("x/b", 24), "except": [PodCIDR("x/b")]}},
             {"ipBlock": {"cidr": PodCIDR("x/b")}}]}])],
         tcp(only_egress_from_x_a_to(Peer(pod="b")))),

    case("egress-to-service-backend-allowed",
         DOCS + ": policies apply to the backend a Service connection reaches",
         [policy("y-to-x-a", "y", ALL, types=["Egress"], egress=[{"to": [
             {"namespaceSelector": labels(ns="x"), "podSelector": POD_A}]}])],
         Check(Y_ONLY_TO_X_A, via_service=SERVICE), tcp(Y_ONLY_TO_X_A)),

    case("egress-to-service-backend-denied",
         DOCS + ": policies apply to the backend a Service connection reaches",
         [policy("y-to-x-b", "y", ALL, types=["Egress"], egress=[{"to": [
             {"namespaceSelector": labels(ns="x"), "podSelector": labels(pod="b")}]}])],
         Check(Y_ONLY_TO_X_B, via_service=SERVICE)),

    case("deny-all-egress-plus-allow-to-namespace",
         DOCS + ": a default deny egress policy plus one allowing egress to a namespace "
                "add up",
         [deny_egress("x"),
          policy("x-to-y", "x", ALL, types=["Egress"],
                 egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}])],
         tcp(all_allowed().expect_peer(Peer("x"), Peer(), False)
             .expect_peer(Peer("x"), Peer("y"), True)),
         udp(all_allowed().expect_peer(Peer("x"), Peer(), False)
             .expect_peer(Peer("x"), Peer("y"), True), 81)),

    Case("policy-update", UPSTREAM + ": should enforce updated policy", (
        Step((tcp(X_A_ONLY_FROM_X_B),), apply=(policy(
            "x-a-ingress", "x", POD_A, ingress=[{"from": [{"podSelector": labels(pod="b")}]}]),),
            says="(from pod b)"),
        Step((tcp(X_A_ONLY_FROM_Y),), apply=(policy(
            "x-a-ingress", "x", POD_A,
            ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}]),),
            says="(changed in place: from namespace y)"),
    )),

    Case("policy-delete", UPSTREAM + ": should stop enforcing policies after they are deleted", (
        Step((tcp(DENY_INTO_AND_OUT_OF_X),),
             apply=(policy("deny-all", "x", ALL, types=["Ingress", "Egress"]),),
             says="(deny all in x)"),
        Step((tcp(all_allowed()), udp(all_allowed(), 81)), delete=("x/deny-all",),
             says="(deleted)"),
    )),

    Case("namespace-label-added", UPSTREAM + ": should allow ingress access from updated "
                                             "namespace", (
        Step((tcp(ONLY_X_A_BLOCKED),), apply=(policy(
            "from-team-blue", "x", POD_A,
            ingress=[{"from": [{"namespaceSelector": labels(team="blue")}]}]),),
            says="(no namespace is team=blue)"),
        Step((tcp(only_ingress_to_x_a_from(Peer("z"))),),
             apply=(Relabel("Namespace", "z", {"ns": "z", "team": "blue"}),),
             says="(namespace z labelled team=blue)"),
    )),

    Case("pod-label-added", UPSTREAM + ": should deny ingress access to updated pod", (
        Step((tcp(all_allowed()),), apply=(policy(
            "isolate-marked", "x", labels(isolated="yes"), types=["Ingress"]),),
            says="(no pod is isolated=yes)"),
        Step((tcp(ONLY_X_A_BLOCKED), tcp(ONLY_X_A_BLOCKED, family=6)),
             apply=(Relabel("Pod", "x/a", {"pod": "a", "isolated": "yes"}),),
             says="(x/a labelled isolated=yes)"),
    )),
)
