"""GlobalNetworkPolicy, HostEndpoint and PrefilterDenyList (sluice.io/v1)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
import yaml
from manifest_helpers import MANIFESTS, parse_ok, problems_of

from sluice.datastore import ClusterState
from sluice.model import (
    DEFAULT_ORDER,
    KINDS,
    GlobalNetworkPolicy,
    GlobalNetworkPolicySpec,
    GlobalPeer,
    HostEndpoint,
    LabelSelector,
    NetworkPolicyPort,
    PrefilterDenyList,
    Resource,
    interface_name_problem,
    load_manifests,
    parse_file,
    parse_text,
)

EXAMPLES = Path(__file__).parents[2] / "examples" / "policy.yaml"
GOOD = MANIFESTS / "good" / "07-global-policy.yaml"
API = "apiVersion: sluice.io/v1\n"


def _gnp(spec: str, name: str = "deny-ssh") -> str:
    return f"{API}kind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"


def _pods(spec: str) -> str:
    """A policy for all pods with `spec` appended."""
    return _gnp("  podSelector: {}\n" + spec)


def _ingress_peer(peer: str) -> str:
    return _pods(f"  ingress:\n    - action: Allow\n      from:\n        - {peer}\n")


HOST = "  hostEndpointSelector: {matchLabels: {role: edge}}\n"
FORWARD = "  applyOnForward: true\n"


def _prednat(spec: str) -> str:
    return _gnp(HOST + "  preDNAT: true\n" + spec)


def _untracked(spec: str) -> str:
    return _gnp(HOST + "  doNotTrack: true\n" + spec)


def _host_endpoint(spec: str) -> str:
    return f"{API}kind: HostEndpoint\nmetadata: {{name: node-a-eth0}}\nspec:\n{spec}"


def _deny_list(spec: str) -> str:
    return f"{API}kind: PrefilterDenyList\nmetadata: {{name: bad}}\nspec:\n{spec}"


def _only(resources: list[Resource]) -> Resource:
    [resource] = resources
    return resource


# --- parsing -------------------------------------------------------------------------------


def test_kinds_are_registered_cluster_scoped() -> None:
    for cls in (GlobalNetworkPolicy, HostEndpoint, PrefilterDenyList):
        assert KINDS[("sluice.io/v1", cls.KIND)] is cls
        assert cls.NAMESPACED is False


def test_good_manifest_global_policy_for_pods() -> None:
    result = parse_file(GOOD)
    assert result.ok, "\n".join(map(str, result.problems))
    guard, prednat, untracked, host, deny = result.resources
    assert isinstance(guard, GlobalNetworkPolicy)
    assert guard.ref == "GlobalNetworkPolicy tenant-guard"
    assert guard.namespace == ""
    spec = guard.spec
    assert spec.order == 100
    assert guard.evaluation_key == (100, "tenant-guard")
    assert spec.pod_selector == LabelSelector(match_labels={"app": "web"})
    assert spec.namespace_selector is not None
    assert spec.namespace_selector.match_expressions[0].values == ("prod",)
    assert spec.host_endpoint_selector is None
    assert spec.effective_types == ("Ingress", "Egress")
    assert spec.selects_pods and not spec.selects_host_endpoints
    assert spec.flavour is None

    deny_nets, log, allow, pass_ = spec.ingress
    assert [rule.action for rule in spec.ingress] == ["Deny", "Log", "Allow", "Pass"]
    [nets_peer] = deny_nets.from_
    assert nets_peer.nets == (IPv4Network("198.18.66.0/24"), IPv6Network("fd00:66::/64"))
    assert nets_peer.is_address_peer
    assert log.from_[0].pod_selector == LabelSelector(match_labels={"role": "scanner"})
    both, namespaces, block = allow.from_
    assert not both.is_address_peer and not namespaces.is_address_peer
    assert block.is_address_peer and block.ip_block is not None
    assert block.ip_block.except_ == (IPv4Network("198.18.66.0/24"),)
    named, ranged = allow.ports
    assert (named.protocol, named.port) == ("TCP", "http")
    assert ranged.port_range == (8000, 8100)
    assert pass_.from_ == () and pass_.to == () and pass_.ports == ()

    dns, deny_rest = spec.egress
    assert dns.action == "Allow" and dns.from_ == ()
    assert dns.to[0].pod_selector is not None and dns.to[0].pod_selector.is_empty
    assert dns.ports == (NetworkPolicyPort(protocol="UDP", port=53),)
    assert deny_rest.action == "Deny" and deny_rest.to == ()

    assert isinstance(prednat, GlobalNetworkPolicy)
    assert prednat.spec.flavour == "preDNAT"
    assert prednat.spec.pre_dnat and prednat.spec.apply_on_forward
    assert prednat.spec.effective_types == ("Ingress",)
    assert prednat.spec.selects_host_endpoints and not prednat.spec.selects_pods
    assert prednat.spec.ingress[1].ports[0].port_range == (30000, 32767)

    assert isinstance(untracked, GlobalNetworkPolicy)
    assert untracked.spec.flavour == "doNotTrack"
    assert untracked.spec.order == DEFAULT_ORDER
    assert untracked.spec.ingress[1].ports[0].port is None

    assert isinstance(host, HostEndpoint)
    assert host.ref == "HostEndpoint node-a-eth0"
    assert (host.node, host.interface_name) == ("node-a", "eth0")
    assert host.expected_ips == (IPv4Address("198.18.0.1"), IPv6Address("fd00:18::1"))
    assert host.labels == {"role": "edge"}

    assert isinstance(deny, PrefilterDenyList)
    assert deny.cidrs == (IPv4Network("198.18.66.0/24"), IPv6Network("fd00:66::/64"))
    assert deny.spec.applies_to_node({"topology.kubernetes.io/zone": "zone-1"})
    assert not deny.spec.applies_to_node({"topology.kubernetes.io/zone": "zone-2"})


def test_global_policy_defaults() -> None:
    policy = _only(parse_ok(_gnp("  namespaceSelector: {}\n", name="minimal")))
    assert isinstance(policy, GlobalNetworkPolicy)
    spec = policy.spec
    assert spec.order == DEFAULT_ORDER == 1000
    assert spec.pod_selector is None and spec.host_endpoint_selector is None
    assert spec.types == () and spec.effective_types == ("Ingress",)
    assert spec.isolates_ingress and not spec.isolates_egress
    assert (spec.pre_dnat, spec.apply_on_forward, spec.do_not_track) == (False, False, False)
    assert spec.ingress == () and spec.egress == ()
    assert spec.selects_pods


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", ("Ingress",)),
        ("  egress: [{action: Deny}]\n", ("Ingress", "Egress")),
        ("  egress: []\n", ("Ingress",)),
        ("  types: [Egress]\n", ("Egress",)),
        ("  types: [Egress, Ingress]\n  ingress: [{action: Allow}]\n", ("Egress", "Ingress")),
    ],
)
def test_effective_types(extra: str, expected: tuple[str, ...]) -> None:
    policy = _only(parse_ok(_pods(extra)))
    assert isinstance(policy, GlobalNetworkPolicy)
    assert policy.spec.effective_types == expected
    assert policy.spec.isolates_ingress == ("Ingress" in expected)
    assert policy.spec.isolates_egress == ("Egress" in expected)


def test_rule_defaults_and_ports_reuse_network_policy_port() -> None:
    policy = _only(parse_ok(_pods("  ingress:\n    - action: Allow\n      ports: [{port: 80}]\n")))
    assert isinstance(policy, GlobalNetworkPolicy)
    [rule] = policy.spec.ingress
    assert rule.from_ == () and rule.to == ()
    assert rule.ports == (NetworkPolicyPort(protocol="TCP", port=80),)


PROD = {"env": "prod"}
DEV = {"env": "dev"}
WEB = {"app": "web"}
DB = {"app": "db"}
WEB_PODS = {"podSelector": {"matchLabels": WEB}}
PROD_NAMESPACES = {"namespaceSelector": {"matchLabels": PROD}}


@pytest.mark.parametrize(
    ("selectors", "pod", "namespace", "expected"),
    [
        (WEB_PODS, WEB, DEV, True),
        (WEB_PODS, DB, PROD, False),
        (PROD_NAMESPACES, DB, PROD, True),
        (PROD_NAMESPACES, WEB, DEV, False),
        ({**WEB_PODS, "namespaceSelector": {}}, WEB, DEV, True),
        ({**WEB_PODS, **PROD_NAMESPACES}, WEB, DEV, False),
        ({**WEB_PODS, **PROD_NAMESPACES}, DB, PROD, False),
        ({**WEB_PODS, **PROD_NAMESPACES}, WEB, PROD, True),
        ({"podSelector": {}}, DB, DEV, True),
    ],
)
def test_pod_selection_is_cluster_wide(
    selectors: dict[str, object], pod: dict[str, str], namespace: dict[str, str], expected: bool
) -> None:
    assert GlobalPeer.model_validate(selectors).matches_pod(pod, namespace) is expected
    spec = GlobalNetworkPolicySpec.model_validate(selectors)
    assert spec.matches_pod(pod, namespace) is expected


def test_address_peers_match_no_pods() -> None:
    peer = GlobalPeer.model_validate({"nets": ["198.18.0.0/16"]})
    assert peer.is_address_peer
    assert not peer.matches_pod(WEB, PROD)
    block = GlobalPeer.model_validate({"ipBlock": {"cidr": "198.18.0.0/16"}})
    assert block.is_address_peer and not block.matches_pod(WEB, PROD)


def test_host_endpoint_selection() -> None:
    host_only = _only(parse_ok(_gnp(HOST)))
    assert isinstance(host_only, GlobalNetworkPolicy)
    assert host_only.spec.matches_host_endpoint({"role": "edge"})
    assert not host_only.spec.matches_host_endpoint({"role": "core"})
    assert not host_only.spec.matches_pod({"role": "edge"}, {})
    pods_only = _only(parse_ok(_pods("")))
    assert isinstance(pods_only, GlobalNetworkPolicy)
    assert not pods_only.spec.matches_host_endpoint({"role": "edge"})
    assert pods_only.spec.matches_pod({}, {})


def test_evaluation_order_is_order_then_name() -> None:
    text = "\n---\n".join(
        [
            _gnp("  order: 5\n" + HOST, name="b"),
            _gnp("  order: 5\n" + HOST, name="a"),
            _gnp(HOST, name="first-by-name"),
            _gnp("  order: 0\n" + HOST, name="z"),
        ]
    )
    policies = [p for p in parse_ok(text) if isinstance(p, GlobalNetworkPolicy)]
    ordered = sorted(policies, key=lambda policy: policy.evaluation_key)
    assert [policy.name for policy in ordered] == ["z", "a", "b", "first-by-name"]


def test_host_endpoint_defaults() -> None:
    host = _only(parse_ok(_host_endpoint("  node: node-a\n  interfaceName: ens1f0.100\n")))
    assert isinstance(host, HostEndpoint)
    assert host.interface_name == "ens1f0.100"
    assert host.expected_ips == ()


def test_deny_list_without_node_selector_applies_everywhere() -> None:
    deny = _only(parse_ok(_deny_list("  cidrs: [0.0.0.0/0]\n")))
    assert isinstance(deny, PrefilterDenyList)
    assert deny.spec.node_selector is None
    assert deny.spec.applies_to_node({})


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("eth0", None),
        ("a", None),
        ("x" * 15, None),
        ("vlan.100@eth0", None),
        ("", "must not be empty"),
        ("x" * 16, "must be at most 15 bytes long"),
        ("é" * 8, "must be at most 15 bytes long"),
        (".", 'must not be "." or ".."'),
        ("..", 'must not be "." or ".."'),
        ("eth/0", "must not contain '/', ':' or whitespace"),
        ("eth0:1", "must not contain '/', ':' or whitespace"),
        ("eth 0", "must not contain '/', ':' or whitespace"),
        ("eth\t0", "must not contain '/', ':' or whitespace"),
    ],
)
def test_interface_name_rules(name: str, problem: str | None) -> None:
    assert interface_name_problem(name) == problem


def test_cluster_state_accessors() -> None:
    state = ClusterState(load_manifests([GOOD, EXAMPLES]))
    assert [p.name for p in state.global_network_policies()] == [
        "drop-udp-floods",
        "edge-no-telnet-anywhere",
        "edge-prednat",
        "edge-untracked",
        "node-ssh-from-admin-only",
        "nodeports-from-partners-only",
        "prod-web-guard",
        "quarantine",
        "tenant-guard",
    ]
    assert all(isinstance(p, GlobalNetworkPolicy) for p in state.global_network_policies())
    assert [h.name for h in state.host_endpoints()] == ["node-a-eth0", "node1-eth0", "node2-eth0"]
    assert [d.name for d in state.prefilter_deny_lists()] == [
        "known-bad",
        "known-bad-sources",
        "zone-1-extra",
    ]


# --- the example file ----------------------------------------------------------------------


def test_examples_parse_and_round_trip_through_the_loader() -> None:
    resources = load_manifests([EXAMPLES])
    assert {type(resource) for resource in resources} == {
        GlobalNetworkPolicy,
        HostEndpoint,
        PrefilterDenyList,
    }
    dumped = "---\n".join(
        yaml.safe_dump(
            resource.model_dump(
                mode="json", by_alias=True, exclude_defaults=True, exclude_none=True
            ),
            sort_keys=False,
        )
        for resource in resources
    )
    again = parse_text(dumped, "round-trip.yaml")
    assert again.problems == ()
    assert list(again.resources) == resources


def test_examples_show_every_flavour() -> None:
    policies = [r for r in load_manifests([EXAMPLES]) if isinstance(r, GlobalNetworkPolicy)]
    assert {policy.spec.flavour for policy in policies} == {None, "preDNAT", "doNotTrack"}
    actions = {rule.action for policy in policies for rule in policy.spec.ingress}
    assert actions == {"Allow", "Deny", "Log", "Pass"}
    assert any(p.spec.apply_on_forward and p.spec.flavour is None for p in policies)
    assert any(peer.nets for p in policies for rule in p.spec.ingress for peer in rule.from_)


# --- validation ----------------------------------------------------------------------------

CASES = [
    # GlobalNetworkPolicy: spec
    pytest.param(
        f"{API}kind: GlobalNetworkPolicy\nmetadata: {{name: p}}\n",
        "spec",
        "required field is missing",
        id="gnp-without-spec",
    ),
    pytest.param(
        _gnp("  order: 10\n  ingress: [{action: Deny}]\n"),
        "spec",
        "selects nothing: set podSelector, namespaceSelector or hostEndpointSelector",
        id="selects-nothing",
    ),
    pytest.param(
        _pods("  order: -1\n"), "spec.order", "order -1 must not be negative", id="order-neg"
    ),
    pytest.param(
        _pods("  order: 1.5\n"), "spec.order", "expected an integer, got 1.5", id="order-float"
    ),
    pytest.param(
        _pods("  order: '10'\n"), "spec.order", 'expected an integer, got "10"', id="order-string"
    ),
    pytest.param(
        _pods("  types: [Ingress, Ingress]\n"),
        "spec.types[1]",
        'duplicate type "Ingress"',
        id="types-duplicate",
    ),
    pytest.param(
        _pods("  types: [Both]\n"),
        "spec.types[0]",
        'invalid value "Both": expected one of "Ingress", "Egress"',
        id="types-bad-value",
    ),
    pytest.param(
        _pods("  preDNAT: yes please\n"),
        "spec.preDNAT",
        'expected true or false, got "yes please"',
        id="prednat-not-bool",
    ),
    pytest.param(
        _pods("  prednat: true\n"),
        "spec.prednat",
        'unknown field "prednat" (did you mean "preDNAT"?)',
        id="unknown-spec-field",
    ),
    pytest.param(
        _gnp("  podSelector: {matchLabels: {app: web}}\n" + FORWARD),
        "spec.applyOnForward",
        "applies to host endpoints only; set hostEndpointSelector",
        id="apply-on-forward-without-host-endpoints",
    ),
    pytest.param(
        _gnp("  podSelector: {}\n", name="p").replace("{name: p}", "{name: p, namespace: shop}"),
        "metadata.namespace",
        "GlobalNetworkPolicy is cluster-scoped; namespace must not be set",
        id="gnp-namespaced",
    ),
    pytest.param(
        _gnp("  podSelector: {}\n").replace("sluice.io/v1", "projectcalico.org/v3"),
        "apiVersion",
        'kind GlobalNetworkPolicy needs apiVersion "sluice.io/v1", got "projectcalico.org/v3"',
        id="gnp-wrong-api-version",
    ),
    # GlobalNetworkPolicy: rules
    pytest.param(
        _pods("  ingress:\n    - from: [{podSelector: {}}]\n"),
        "spec.ingress[0].action",
        "required field is missing",
        id="rule-without-action",
    ),
    pytest.param(
        _pods("  egress:\n    - action: Reject\n"),
        "spec.egress[0].action",
        'invalid value "Reject": expected one of "Allow", "Deny", "Log", "Pass"',
        id="rule-bad-action",
    ),
    pytest.param(
        _pods("  ingress:\n    - {action: Allow, acton: Deny}\n"),
        "spec.ingress[0].acton",
        'unknown field "acton" (did you mean "action"?)',
        id="rule-unknown-field",
    ),
    pytest.param(
        _pods("  egress:\n    - action: Allow\n      from: [{podSelector: {}}]\n"),
        "spec.egress[0].from",
        'an egress rule names its peers in "to", not "from"',
        id="egress-rule-with-from",
    ),
    pytest.param(
        _pods("  egress:\n    - action: Allow\n      from: []\n"),
        "spec.egress[0].from",
        'an egress rule names its peers in "to", not "from"',
        id="egress-rule-with-empty-from",
    ),
    pytest.param(
        _pods("  ingress:\n    - action: Allow\n      to: [{podSelector: {}}]\n"),
        "spec.ingress[0].to",
        'an ingress rule names its peers in "from", not "to"',
        id="ingress-rule-with-to",
    ),
    pytest.param(
        _pods("  ingress:\n    - action: Allow\n      ports: [{port: 90, endPort: 80}]\n"),
        "spec.ingress[0].ports[0].endPort",
        "endPort 80 must not be less than port 90",
        id="rule-port-range-backwards",
    ),
    pytest.param(
        _pods("  ingress:\n    - action: Allow\n      ports: [{protocol: ICMP}]\n"),
        "spec.ingress[0].ports[0].protocol",
        'invalid value "ICMP": expected one of "TCP", "UDP", "SCTP"',
        id="rule-port-bad-protocol",
    ),
    # GlobalNetworkPolicy: peers
    pytest.param(
        _ingress_peer("{}"),
        "spec.ingress[0].from[0]",
        "a peer needs podSelector, namespaceSelector, ipBlock or nets",
        id="peer-empty",
    ),
    pytest.param(
        _ingress_peer("{nets: []}"),
        "spec.ingress[0].from[0].nets",
        "must list at least one CIDR when given",
        id="peer-nets-empty",
    ),
    pytest.param(
        _ingress_peer("{nets: [198.18.0.0/16, 198.18.0.1/24]}"),
        "spec.ingress[0].from[0].nets[1]",
        '"198.18.0.1/24" is not a valid CIDR: host bits set (did you mean "198.18.0.0/24"?)',
        id="peer-nets-host-bits",
    ),
    pytest.param(
        _ingress_peer("{nets: 198.18.0.0/16}"),
        "spec.ingress[0].from[0].nets",
        'expected a list, got "198.18.0.0/16"',
        id="peer-nets-not-a-list",
    ),
    pytest.param(
        _ingress_peer("{nets: [198.18.0.0/16], podSelector: {}}"),
        "spec.ingress[0].from[0].nets",
        "nets cannot be combined with podSelector, namespaceSelector or ipBlock in one peer",
        id="peer-nets-with-selector",
    ),
    pytest.param(
        _ingress_peer("{nets: [198.18.0.0/16], ipBlock: {cidr: 198.19.0.0/16}}"),
        "spec.ingress[0].from[0].nets",
        "nets cannot be combined with podSelector, namespaceSelector or ipBlock in one peer",
        id="peer-nets-with-ipblock",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 198.18.0.0/16}, namespaceSelector: {}}"),
        "spec.ingress[0].from[0].ipBlock",
        "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        id="peer-ipblock-with-selector",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 198.18.0.0/16, except: [198.19.0.0/24]}}"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        '"198.19.0.0/24" must be a strict subnet of cidr "198.18.0.0/16"',
        id="peer-ipblock-except-outside",
    ),
    pytest.param(
        _ingress_peer("{hostEndpointSelector: {}}"),
        "spec.ingress[0].from[0].hostEndpointSelector",
        'unknown field "hostEndpointSelector"',
        id="peer-unknown-field",
    ),
    # preDNAT
    pytest.param(
        _prednat(FORWARD + "  egress: [{action: Deny}]\n"),
        "spec.egress",
        "must be empty: preDNAT policies apply to ingress only",
        id="prednat-egress-rules",
    ),
    pytest.param(
        _prednat(FORWARD + "  types: [Ingress, Egress]\n"),
        "spec.types[1]",
        '"Egress" is not allowed: preDNAT policies apply to ingress only',
        id="prednat-egress-type",
    ),
    pytest.param(
        _prednat(FORWARD + "  podSelector: {}\n"),
        "spec.podSelector",
        "must not be set when preDNAT is true: preDNAT policies apply to host endpoints only",
        id="prednat-pod-selector",
    ),
    pytest.param(
        _prednat(FORWARD + "  namespaceSelector: {}\n"),
        "spec.namespaceSelector",
        "must not be set when preDNAT is true",
        id="prednat-namespace-selector",
    ),
    pytest.param(
        _gnp("  preDNAT: true\n" + FORWARD),
        "spec.hostEndpointSelector",
        "required when preDNAT is true: preDNAT policies apply to host endpoints only",
        id="prednat-without-host-endpoints",
    ),
    pytest.param(
        _prednat(""),
        "spec.applyOnForward",
        "must be true when preDNAT is true",
        id="prednat-without-apply-on-forward",
    ),
    pytest.param(
        _prednat("  applyOnForward: false\n"),
        "spec.applyOnForward",
        "must be true when preDNAT is true",
        id="prednat-apply-on-forward-false",
    ),
    pytest.param(
        _prednat(FORWARD + "  doNotTrack: true\n"),
        "spec.doNotTrack",
        "cannot be combined with preDNAT",
        id="prednat-and-donottrack",
    ),
    pytest.param(
        _prednat(FORWARD + "  ingress: [{action: Allow}, {action: Pass}]\n"),
        "spec.ingress[1].action",
        '"Pass" is not allowed in a preDNAT policy: use Allow, Deny or Log',
        id="prednat-pass",
    ),
    # doNotTrack
    pytest.param(
        _untracked(FORWARD + "  ingress: [{action: Log}]\n"),
        "spec.ingress[0].action",
        '"Log" is not allowed in a doNotTrack policy: use Allow or Deny',
        id="donottrack-log",
    ),
    pytest.param(
        _untracked(FORWARD + "  ingress: [{action: Pass}]\n"),
        "spec.ingress[0].action",
        '"Pass" is not allowed in a doNotTrack policy: use Allow or Deny',
        id="donottrack-pass",
    ),
    pytest.param(
        _untracked(FORWARD + "  egress: [{action: Allow}]\n"),
        "spec.egress",
        "must be empty: doNotTrack policies apply to ingress only",
        id="donottrack-egress-rules",
    ),
    pytest.param(
        _untracked(FORWARD + "  types: [Egress]\n"),
        "spec.types[0]",
        '"Egress" is not allowed: doNotTrack policies apply to ingress only',
        id="donottrack-egress-type",
    ),
    pytest.param(
        _untracked(""),
        "spec.applyOnForward",
        "must be true when doNotTrack is true",
        id="donottrack-without-apply-on-forward",
    ),
    pytest.param(
        _untracked(FORWARD + "  podSelector: {matchLabels: {app: web}}\n"),
        "spec.podSelector",
        "must not be set when doNotTrack is true: doNotTrack policies apply to host endpoints",
        id="donottrack-pod-selector",
    ),
    pytest.param(
        _gnp("  doNotTrack: true\n" + FORWARD),
        "spec.hostEndpointSelector",
        "required when doNotTrack is true",
        id="donottrack-without-host-endpoints",
    ),
    # HostEndpoint
    pytest.param(
        _host_endpoint("  interfaceName: eth0\n"),
        "spec.node",
        "required field is missing",
        id="hep-without-node",
    ),
    pytest.param(
        _host_endpoint("  node: Node_A\n  interfaceName: eth0\n"),
        "spec.node",
        'invalid name "Node_A": must be a DNS-1123 subdomain',
        id="hep-bad-node",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n"),
        "spec.interfaceName",
        "required field is missing",
        id="hep-without-interface",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: averyverylongname0\n"),
        "spec.interfaceName",
        'invalid interface name "averyverylongname0": must be at most 15 bytes long',
        id="hep-interface-too-long",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: eth/0\n"),
        "spec.interfaceName",
        "invalid interface name \"eth/0\": must not contain '/', ':' or whitespace",
        id="hep-interface-slash",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: 'eth 0'\n"),
        "spec.interfaceName",
        "must not contain '/', ':' or whitespace",
        id="hep-interface-space",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: ''\n"),
        "spec.interfaceName",
        'invalid interface name "": must not be empty',
        id="hep-interface-empty",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: 0\n"),
        "spec.interfaceName",
        "expected a string, got 0",
        id="hep-interface-not-string",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: eth0\n  expectedIPs: [198.18.0.1, x]\n"),
        "spec.expectedIPs[1]",
        '"x" is not a valid IP address',
        id="hep-bad-expected-ip",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: eth0\n  expectedIps: []\n"),
        "spec.expectedIps",
        'unknown field "expectedIps" (did you mean "expectedIPs"?)',
        id="hep-unknown-field",
    ),
    pytest.param(
        _host_endpoint("  node: node-a\n  interfaceName: eth0\n").replace(
            "{name: node-a-eth0}", "{name: node-a-eth0, namespace: default}"
        ),
        "metadata.namespace",
        "HostEndpoint is cluster-scoped; namespace must not be set",
        id="hep-namespaced",
    ),
    # PrefilterDenyList
    pytest.param(
        _deny_list("  nodeSelector: {}\n"),
        "spec.cidrs",
        "required field is missing",
        id="deny-without-cidrs",
    ),
    pytest.param(
        _deny_list("  cidrs: []\n"),
        "spec.cidrs",
        "at least one CIDR is required",
        id="deny-empty-cidrs",
    ),
    pytest.param(
        _deny_list("  cidrs: [198.18.66.0/24, 'fd00:66::1/64']\n"),
        "spec.cidrs[1]",
        '"fd00:66::1/64" is not a valid CIDR: host bits set (did you mean "fd00:66::/64"?)',
        id="deny-host-bits",
    ),
    pytest.param(
        _deny_list("  cidrs: [198.18.66.7]\n"),
        "spec.cidrs[0]",
        "missing prefix length",
        id="deny-address-not-cidr",
    ),
    pytest.param(
        _deny_list(
            "  cidrs: [198.18.66.0/24]\n  nodeSelector:\n    matchExpressions:\n"
            "      - {key: zone, operator: In}\n"
        ),
        "spec.nodeSelector.matchExpressions[0].values",
        "operator In needs at least one value",
        id="deny-bad-node-selector",
    ),
    pytest.param(
        _deny_list("  cidrs: [198.18.66.0/24]\n").replace("sluice.io/v1", "v1"),
        "apiVersion",
        'kind PrefilterDenyList needs apiVersion "sluice.io/v1", got "v1"',
        id="deny-wrong-api-version",
    ),
]


@pytest.mark.parametrize(("text", "field", "message"), CASES)
def test_single_problem(text: str, field: str, message: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, "\n".join(map(str, problems))
    [problem] = problems
    assert problem.field == field
    assert message in problem.message


def test_problem_names_object_and_field() -> None:
    [problem] = problems_of(_pods("  ingress:\n    - action: Reject\n"), "policy.yaml")
    assert problem.object == "GlobalNetworkPolicy deny-ssh"
    assert str(problem) == (
        "policy.yaml: document 1: GlobalNetworkPolicy deny-ssh: spec.ingress[0].action: "
        'invalid value "Reject": expected one of "Allow", "Deny", "Log", "Pass" (line 7)'
    )
    [problem] = problems_of(_host_endpoint("  node: node-a\n  interfaceName: eth0:1\n"))
    assert problem.object == "HostEndpoint node-a-eth0"
    [problem] = problems_of(_deny_list("  cidrs: []\n"))
    assert problem.object == "PrefilterDenyList bad"


def test_every_problem_of_a_broken_prednat_policy_is_reported() -> None:
    text = _gnp(
        "  preDNAT: true\n  doNotTrack: true\n  podSelector: {}\n"
        "  types: [Egress]\n  ingress: [{action: Pass}]\n  egress: [{action: Allow}]\n"
    )
    assert sorted(problem.field for problem in problems_of(text)) == [
        "spec.applyOnForward",
        "spec.doNotTrack",
        "spec.egress",
        "spec.hostEndpointSelector",
        "spec.ingress[0].action",
        "spec.podSelector",
        "spec.types[0]",
    ]


def test_plain_policies_admit_every_action() -> None:
    rules = "".join(f"    - action: {action}\n" for action in ("Allow", "Deny", "Log", "Pass"))
    host = _gnp(HOST + FORWARD + "  ingress:\n" + rules + "  egress:\n" + rules)
    policy = _only(parse_ok(host))
    assert isinstance(policy, GlobalNetworkPolicy)
    assert policy.spec.effective_types == ("Ingress", "Egress")
    assert policy.spec.apply_on_forward


def test_prednat_admits_log_and_donottrack_a_deny() -> None:
    prednat = _prednat(FORWARD + "  ingress: [{action: Log}, {action: Deny}, {action: Allow}]\n")
    untracked = _untracked(FORWARD + "  types: [Ingress]\n  ingress: [{action: Deny}]\n")
    assert len(parse_ok(prednat + "---\n" + untracked)) == 2
