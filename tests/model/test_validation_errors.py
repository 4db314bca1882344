from __future__ import annotations

import pytest
from manifest_helpers import MANIFESTS, problems_of

from sluice.model import ManifestError, ManifestProblem, load_manifests, parse_text


def _service(spec: str, name: str = "web") -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}"


def _policy(spec: str) -> str:
    return (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: np, namespace: shop}}\nspec:\n  podSelector: {{}}\n{spec}"
    )


def _ingress_peer(peer: str) -> str:
    return _policy(f"  ingress:\n    - from:\n        - {peer}\n")


def _ingress_port(port: str) -> str:
    return _policy(f"  ingress:\n    - ports:\n        - {port}\n")


def _pod(spec: str, metadata: str = "{name: p}") -> str:
    return f"apiVersion: v1\nkind: Pod\nmetadata: {metadata}\nspec:\n{spec}"


def _slice(body: str) -> str:
    return f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s}}\n{body}"


PORTS = "  ports:\n    - {port: 80}\n"

CASES = [
    pytest.param(
        _service(PORTS) + "spc: {}\n",
        "spc",
        'unknown field "spc" (did you mean "spec"?)',
        id="unknown-field-top-level",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labelz: {}}\n",
        "metadata.labelz",
        'unknown field "labelz" (did you mean "labels"?)',
        id="unknown-field-metadata",
    ),
    pytest.param(
        _service("  ports:\n    - {port: 80, targetport: 8080}\n"),
        "spec.ports[0].targetport",
        'unknown field "targetport" (did you mean "targetPort"?)',
        id="unknown-field-service-port",
    ),
    pytest.param(
        _ingress_port("{prot: TCP, port: 80}"),
        "spec.ingress[0].ports[0].prot",
        'unknown field "prot" (did you mean "protocol"?)',
        id="unknown-field-deep",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.0/8, exclude: []}}"),
        "spec.ingress[0].from[0].ipBlock.exclude",
        'unknown field "exclude"',
        id="unknown-field-ipblock",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.0/33}}"),
        "spec.ingress[0].from[0].ipBlock.cidr",
        '"10.0.0.0/33" is not a valid CIDR: prefix length must be 0-32',
        id="cidr-prefix-too-long",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.300/8}}"),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "is not a valid CIDR",
        id="cidr-bad-address",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.0}}"),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "missing prefix length",
        id="cidr-without-prefix",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.1/24}}"),
        "spec.ingress[0].from[0].ipBlock.cidr",
        '"10.0.0.1/24" is not a valid CIDR: host bits set',
        id="cidr-host-bits",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.1/16]}}"),
        "spec.ingress[0].from[0].ipBlock.except[1]",
        "host bits set",
        id="except-host-bits",
    ),
    pytest.param(
        _policy(
            "  egress:\n    - to:\n        - {podSelector: {}}\n"
            "        - {ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}}\n"
        ),
        "spec.egress[0].to[1].ipBlock.except[1]",
        '"10.1.0.0/24" must be a strict subnet of cidr "10.0.0.0/16"',
        id="except-outside-cidr",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "must be a strict subnet",
        id="except-equals-cidr",
    ),
    pytest.param(
        _ingress_peer('{ipBlock: {cidr: 10.0.0.0/8, except: ["fd00::/64"]}}'),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        '"fd00::/64" is IPv6 but cidr "10.0.0.0/8" is IPv4',
        id="except-other-family",
    ),
    pytest.param(
        _ingress_port("{port: 0}"),
        "spec.ingress[0].ports[0].port",
        "port 0 out of range 1-65535",
        id="policy-port-zero",
    ),
    pytest.param(
        _service("  ports:\n    - {name: a, port: 80}\n    - {name: b, port: 65536}\n"),
        "spec.ports[1].port",
        "port 65536 out of range 1-65535",
        id="service-port-too-big",
    ),
    pytest.param(
        _service('  ports:\n    - {port: "80"}\n'),
        "spec.ports[0].port",
        'expected an integer, got "80"',
        id="service-port-string",
    ),
    pytest.param(
        _ingress_port("{port: 8000, endPort: 7999}"),
        "spec.ingress[0].ports[0].endPort",
        "endPort 7999 must not be less than port 8000",
        id="endport-below-port",
    ),
    pytest.param(
        _ingress_port("{port: http, endPort: 90}"),
        "spec.ingress[0].ports[0].endPort",
        'requires a numeric port, not the named port "http"',
        id="endport-with-named-port",
    ),
    pytest.param(
        _ingress_port("{endPort: 90}"),
        "spec.ingress[0].ports[0].endPort",
        "requires port to be set",
        id="endport-without-port",
    ),
    pytest.param(
        _ingress_port("{endPort: 70000, port: 80}"),
        "spec.ingress[0].ports[0].endPort",
        "port 70000 out of range 1-65535",
        id="endport-out-of-range",
    ),
    pytest.param(
        _ingress_port("{protocol: ICMP, port: 80}"),
        "spec.ingress[0].ports[0].protocol",
        'invalid value "ICMP": expected one of "TCP", "UDP", "SCTP"',
        id="bad-protocol",
    ),
    pytest.param(
        _service("  ports:\n    - {port: 80, protocol: tcp}\n"),
        "spec.ports[0].protocol",
        'invalid value "tcp"',
        id="lowercase-protocol",
    ),
    pytest.param(
        _ingress_port("{port: averyverylongname}"),
        "spec.ingress[0].ports[0].port",
        'invalid port name "averyverylongname": must be no more than 15 characters',
        id="named-port-too-long",
    ),
    pytest.param(
        _service("  ports:\n    - {port: 80, targetPort: HTTP}\n"),
        "spec.ports[0].targetPort",
        'invalid port name "HTTP": must contain only lowercase letters',
        id="named-port-uppercase",
    ),
    pytest.param(
        _service('  ports:\n    - {port: 80, targetPort: "8080"}\n'),
        "spec.ports[0].targetPort",
        "must contain at least one letter",
        id="named-port-digits-only",
    ),
    pytest.param(
        _pod(
            "  containers:\n    - name: app\n      ports: [{name: my--port, containerPort: 80}]\n"
        ),
        "spec.containers[0].ports[0].name",
        "must not contain '--'",
        id="container-port-name-double-dash",
    ),
    pytest.param(
        _pod("  containers:\n    - name: app\n      ports: [{name: -http, containerPort: 80}]\n"),
        "spec.containers[0].ports[0].name",
        "must not begin or end with '-'",
        id="container-port-name-leading-dash",
    ),
    pytest.param(
        _ingress_peer("{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}"),
        "spec.ingress[0].from[0].ipBlock",
        "ipBlock cannot be combined with podSelector or namespaceSelector",
        id="ipblock-with-selector",
    ),
    pytest.param(
        _policy("  egress:\n    - to:\n        - {}\n"),
        "spec.egress[0].to[0]",
        "a peer needs podSelector, namespaceSelector or ipBlock",
        id="empty-peer",
    ),
    pytest.param(
        _policy(
            "  ingress:\n    - from:\n        - namespaceSelector:\n"
            "            matchExpressions: [{key: env, operator: In}]\n"
        ),
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        "operator In needs at least one value",
        id="in-without-values",
    ),
    pytest.param(
        _policy(
            "  ingress:\n    - from:\n        - podSelector:\n"
            "            matchExpressions: [{key: env, operator: NotIn, values: []}]\n"
        ),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "operator NotIn needs at least one value",
        id="notin-with-empty-values",
    ),
    pytest.param(
        _policy(
            "  egress:\n    - to:\n        - podSelector:\n"
            "            matchExpressions: [{key: env, operator: Exists, values: [x]}]\n"
        ),
        "spec.egress[0].to[0].podSelector.matchExpressions[0].values",
        "must be empty when operator is Exists",
        id="exists-with-values",
    ),
    pytest.param(
        _policy(
            "  egress:\n    - to:\n        - podSelector:\n"
            "            matchExpressions: [{key: env, operator: Equals, values: [x]}]\n"
        ),
        "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
        'invalid value "Equals": expected one of "In", "NotIn", "Exists", "DoesNotExist"',
        id="bad-operator",
    ),
    pytest.param(
        _policy(
            "  egress:\n    - to:\n        - podSelector:\n"
            "            matchExpressions: [{key: Bad/Key, operator: Exists}]\n"
        ),
        "spec.egress[0].to[0].podSelector.matchExpressions[0].key",
        'invalid label key "Bad/Key": prefix "Bad"',
        id="bad-expression-key",
    ),
    pytest.param(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n"
        "spec:\n  podSelector:\n    matchLabels: {-app: web}\n",
        "spec.podSelector.matchLabels",
        'invalid label key "-app"',
        id="bad-label-key",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n"
        "  labels: {example.com/tier: " + "x" * 64 + "}\n",
        "metadata.labels",
        'for label "example.com/tier": must be no more than 63 characters',
        id="label-value-too-long",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {version: 2}\n",
        "metadata.labels",
        'value of "version" must be a string, got 2',
        id="label-value-not-string",
    ),
    pytest.param(
        _service(PORTS).replace("{name: web}", "{namespace: shop}"),
        "metadata.name",
        "required field is missing",
        id="missing-name",
    ),
    pytest.param(
        _pod("  containers: [{name: app}]\n", metadata="{name: Web_1}"),
        "metadata.name",
        'invalid name "Web_1": must be a DNS-1123 subdomain',
        id="bad-name",
    ),
    pytest.param(
        _service(PORTS, name="1web"),
        "metadata.name",
        'invalid name "1web": must be a DNS-1035 label',
        id="service-name-not-dns1035",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
        "metadata.name",
        "must be a DNS-1123 label",
        id="namespace-name-with-dot",
    ),
    pytest.param(
        "apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {podSelector: {}}\n",
        "apiVersion",
        'kind NetworkPolicy needs apiVersion "networking.k8s.io/v1", got "v1"',
        id="wrong-api-version",
    ),
    pytest.param(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        "kind",
        'unknown kind "Deployment": expected one of EndpointSlice, GlobalNetworkPolicy, '
        "HostEndpoint, Namespace, NetworkPolicy",
        id="unknown-kind",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Namepsace\nmetadata: {name: d}\n",
        "kind",
        'unknown kind "Namepsace" (did you mean "Namespace"?)',
        id="misspelt-kind",
    ),
    pytest.param(
        "apiVersion: v1\nmetadata: {name: d}\n",
        "kind",
        "expected a kind such as Pod, got null",
        id="missing-kind",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n, namespace: shop}\n",
        "metadata.namespace",
        "Node is cluster-scoped; namespace must not be set",
        id="namespace-on-cluster-scoped",
    ),
    pytest.param(
        _service("  type: ClusterIP\n  ports:\n    - {port: 80, nodePort: 30080}\n"),
        "spec.ports[0].nodePort",
        "may only be set when type is NodePort or LoadBalancer, not ClusterIP",
        id="nodeport-on-clusterip",
    ),
    pytest.param(
        _service("  ports:\n    - {name: http, port: 80}\n    - {name: http, port: 81}\n"),
        "spec.ports[1].name",
        'duplicate port name "http" (also ports[0])',
        id="duplicate-port-names",
    ),
    pytest.param(
        _service("  ports:\n    - {name: http, port: 80}\n    - {port: 81}\n"),
        "spec.ports[1].name",
        "required when the service has more than one port",
        id="multi-port-without-name",
    ),
    pytest.param(
        _service("  ports:\n    - {name: a, port: 80}\n    - {name: b, port: 80}\n"),
        "spec.ports[1].port",
        "duplicate port 80/TCP (also ports[0])",
        id="duplicate-port-protocol",
    ),
    pytest.param(
        _service("  clusterIP: 10.96.0.256\n" + PORTS),
        "spec.clusterIP",
        '"10.96.0.256" is not a valid IP address',
        id="bad-cluster-ip",
    ),
    pytest.param(
        _service(
            "  clusterIPs: [10.96.0.1, 10.96.0.2]\n  ipFamilyPolicy: PreferDualStack\n" + PORTS
        ),
        "spec.clusterIPs[1]",
        '"10.96.0.2" is a second IPv4 address',
        id="cluster-ips-same-family",
    ),
    pytest.param(
        _service("  ipFamilies: [IPv4, IPv5]\n" + PORTS),
        "spec.ipFamilies[1]",
        'invalid value "IPv5": expected one of "IPv4", "IPv6"',
        id="bad-ip-family",
    ),
    pytest.param(
        _service("  ipFamilies: [IPv6, IPv6]\n  ipFamilyPolicy: PreferDualStack\n" + PORTS),
        "spec.ipFamilies[1]",
        'duplicate family "IPv6"',
        id="duplicate-ip-family",
    ),
    pytest.param(
        _service("  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: SingleStack\n" + PORTS),
        "spec.ipFamilies",
        "2 families need ipFamilyPolicy PreferDualStack or RequireDualStack",
        id="two-families-single-stack",
    ),
    pytest.param(
        _service("  type: NodePort\n  clusterIP: None\n" + PORTS),
        "spec.clusterIP",
        '"None" (headless) is not allowed when type is NodePort',
        id="headless-nodeport",
    ),
    pytest.param(
        _service("  type: ExternalName\n"),
        "spec.externalName",
        "required when type is ExternalName",
        id="externalname-missing",
    ),
    pytest.param(
        _service("  externalTrafficPolicy: Local\n" + PORTS),
        "spec.externalTrafficPolicy",
        "may only be set when type is NodePort or LoadBalancer",
        id="etp-on-clusterip",
    ),
    pytest.param(
        _service("  type: NodePort\n  externalTrafficPolicy: Global\n" + PORTS),
        "spec.externalTrafficPolicy",
        'invalid value "Global": expected one of "Cluster", "Local"',
        id="etp-bad-value",
    ),
    pytest.param(
        _service(
            "  sessionAffinity: ClientIP\n"
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n" + PORTS
        ),
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "timeoutSeconds 86401 out of range 1-86400",
        id="affinity-timeout-too-long",
    ),
    pytest.param(
        _service(
            "  sessionAffinity: ClientIP\n"
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n" + PORTS
        ),
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "timeoutSeconds 0 out of range 1-86400",
        id="affinity-timeout-zero",
    ),
    pytest.param(
        _service("  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n" + PORTS),
        "spec.sessionAffinityConfig",
        "must not be set when sessionAffinity is None",
        id="affinity-config-without-affinity",
    ),
    pytest.param(
        _service("  loadBalancerSourceRanges: [192.0.2.1/24]\n  type: LoadBalancer\n" + PORTS),
        "spec.loadBalancerSourceRanges[0]",
        "host bits set",
        id="source-range-host-bits",
    ),
    pytest.param(
        _service("  ports: []\n"),
        "spec.ports",
        "at least one port is required",
        id="service-without-ports",
    ),
    pytest.param(
        _slice("addressType: IPv4\nendpoints:\n  - addresses: [10.0.0.1, 'fd00::1']\n"),
        "endpoints[0].addresses[1]",
        '"fd00::1" is not an IPv4 address (addressType is IPv4)',
        id="endpoint-address-family",
    ),
    pytest.param(
        _slice("addressType: IPv6\nendpoints:\n  - addresses: [nonsense]\n"),
        "endpoints[0].addresses[0]",
        '"nonsense" is not a valid IP address',
        id="endpoint-address-not-ip",
    ),
    pytest.param(
        _slice("addressType: IPv5\n"),
        "addressType",
        'expected one of "IPv4", "IPv6", "FQDN"',
        id="bad-address-type",
    ),
    pytest.param(
        _slice(
            "addressType: IPv4\nendpoints:\n  - addresses: [10.0.0.1]\n"
            "    conditions: {ready: yes please}\n"
        ),
        "endpoints[0].conditions.ready",
        'expected true or false, got "yes please"',
        id="endpoint-condition-not-bool",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n"
        "spec:\n  podCIDRs: [10.1.0.0/24, 10.2.0.0/24]\n",
        "spec.podCIDRs[1]",
        '"10.2.0.0/24" is a second IPv4 entry; at most one per family',
        id="node-two-ipv4-cidrs",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n"
        "status:\n  addresses: [{type: InternalIP, address: node-a}]\n",
        "status.addresses[0].address",
        '"node-a" is not a valid IP address',
        id="node-internal-ip-not-ip",
    ),
    pytest.param(
        _pod("  containers:\n    - name: app\n      ports: [{containerPort: 0}]\n"),
        "spec.containers[0].ports[0].containerPort",
        "port 0 out of range 1-65535",
        id="container-port-zero",
    ),
    pytest.param(
        _pod("  nodeName: a\n"),
        "spec.containers",
        "required field is missing",
        id="pod-without-containers",
    ),
    pytest.param(
        _pod("  hostNetwork: 'yes'\n  containers: [{name: app}]\n"),
        "spec.hostNetwork",
        'expected true or false, got "yes"',
        id="host-network-not-bool",
    ),
    pytest.param(
        _pod("  containers: [{name: app}]\nstatus:\n  podIP: 10.0.0.1/32\n"),
        "status.podIP",
        '"10.0.0.1/32" is not a valid IP address',
        id="pod-ip-is-cidr",
    ),
    pytest.param(
        _pod("  containers: [{name: app}]\nstatus:\n  conditions: [{type: Ready, status: true}]\n"),
        "status.conditions[0].status",
        'invalid value true: expected one of "True", "False", "Unknown"',
        id="condition-status-unquoted",
    ),
    pytest.param(
        _policy("  policyTypes: [Both]\n"),
        "spec.policyTypes[0]",
        'invalid value "Both": expected one of "Ingress", "Egress"',
        id="bad-policy-type",
    ),
    pytest.param(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n"
        "spec:\n  ingress: []\n",
        "spec.podSelector",
        "required field is missing",
        id="policy-without-pod-selector",
    ),
    pytest.param(
        _policy("  ingress:\n    from: []\n"),
        "spec.ingress",
        "expected a list, got a mapping",
        id="rules-not-a-list",
    ),
    pytest.param(
        "- apiVersion: v1\n- kind: Pod\n",
        "",
        "expected a mapping with apiVersion, kind and metadata, got a list",
        id="document-not-a-mapping",
    ),
    pytest.param(
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
        "  - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {ports: [{port: 0}]}}\n",
        "items[1].spec.ports[0].port",
        "port 0 out of range",
        id="list-item-problem",
    ),
]


@pytest.mark.parametrize(("text", "field", "message"), CASES)
def test_single_problem(text: str, field: str, message: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, "\n".join(map(str, problems))
    [problem] = problems
    assert problem.file == "test.yaml"
    assert problem.document == 1
    assert problem.field == field
    assert message in problem.message


def test_problem_names_the_object() -> None:
    [problem] = problems_of(
        _service("  ports:\n    - {port: 0}\n").replace("web}", "web, namespace: shop}")
    )
    assert problem.object == "Service shop/web"
    [problem] = problems_of("apiVersion: v1\nkind: Node\nmetadata: {name: n, namespace: x}\n")
    assert problem.object == "Node n"
    [problem] = problems_of(
        "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: [{name: a}]}\n"
    )
    assert problem.object == "Pod <unnamed>"
    [problem] = problems_of("[1, 2]\n")
    assert problem.object == "<unnamed>"


def test_problem_string_format() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n" + _service(
        "  ports:\n    - {port: 80, targetPort: HTTP}\n"
    )
    [problem] = problems_of(text, "dir/svc.yaml")
    assert str(problem) == (
        "dir/svc.yaml: document 2: Service default/web: spec.ports[0].targetPort: invalid port "
        "name \"HTTP\": must contain only lowercase letters, digits and '-' (line 10)"
    )


def test_problem_string_without_line() -> None:
    problem = ManifestProblem("f.yaml", 3, "Pod a/b", "spec", "broken")
    assert str(problem) == "f.yaml: document 3: Pod a/b: spec: broken"


def test_yaml_syntax_error_reports_line() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: a: b\n"
    [problem] = problems_of(text)
    assert problem.document == 2
    assert problem.line == 6
    assert problem.message.startswith("invalid YAML: mapping values are not allowed here")
    assert "(line 6, column" in str(problem)


def test_json_syntax_error_reports_line() -> None:
    result = parse_text('{\n  "apiVersion": "v1",\n  "kind": Namespace\n}\n', "ns.json")
    [problem] = result.problems
    assert problem.line == 3
    assert problem.message.startswith("invalid JSON")


def test_json_problems_have_paths_and_lines() -> None:
    text = (
        '{"apiVersion": "v1", "kind": "Service",\n "metadata": {"name": "s"},\n'
        ' "spec": {"ports": [{"port": 0}]}}\n'
    )
    [problem] = parse_text(text, "svc.json").problems
    assert problem.field == "spec.ports[0].port"
    assert problem.line == 3


def test_lines_point_at_the_field() -> None:
    text = _service("  ports:\n    - name: a\n      port: 80\n      prot: TCP\n")
    [problem] = problems_of(text)
    assert problem.line == 8


def test_all_problems_of_a_file_are_reported() -> None:
    text = "\n---\n".join(
        [
            _service("  ports:\n    - {port: 0, protocol: ICMP}\n"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n",
            _ingress_peer("{ipBlock: {cidr: 10.0.0.1/8}}"),
            "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",
            "kind: Pod\nmetadata: [\n",
        ]
    )
    problems = problems_of(text)
    assert [(p.document, p.field) for p in problems] == [
        (1, "spec.ports[0].protocol"),
        (1, "spec.ports[0].port"),
        (3, "spec.ingress[0].from[0].ipBlock.cidr"),
        (4, "kind"),
        (5, ""),
    ]
    result = parse_text(text, "test.yaml")
    assert [resource.name for resource in result.resources] == ["ok"]


def test_cross_field_problems_are_all_reported() -> None:
    text = _service(
        "  ports:\n    - {port: 80, nodePort: 30080}\n    - {port: 80, nodePort: 30081}\n"
    )
    fields = sorted(problem.field for problem in problems_of(text))
    assert fields == [
        "spec.ports[0].name",
        "spec.ports[0].nodePort",
        "spec.ports[1].name",
        "spec.ports[1].nodePort",
        "spec.ports[1].port",
    ]


def test_load_manifests_raises_for_first_bad_file() -> None:
    bad = MANIFESTS / "bad"
    with pytest.raises(ManifestError) as caught:
        load_manifests(
            [MANIFESTS / "good" / "02-node.yaml", bad / "service.yaml", bad / "pod.yaml"]
        )
    problems = caught.value.problems
    assert {problem.file for problem in problems} == {str(bad / "service.yaml")}
    assert [problem.field for problem in problems] == [
        "spec.ports[0].port",
        "spec.ingress[0].from[0].ipBlock.cidr",
    ]
    assert "spec.ports[0].port: port 70000 out of range 1-65535" in str(caught.value)


def test_load_manifests_reports_missing_file() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests([MANIFESTS / "missing.yaml"])
    [problem] = caught.value.problems
    assert problem.document is None
    assert str(problem) == f"{MANIFESTS / 'missing.yaml'}: cannot read: No such file or directory"


def test_duplicate_keys_are_reported() -> None:
    text = _service("  ports:\n    - port: 80\n      port: 81\n  ports: []\n")
    problems = problems_of(text)
    assert [(p.object, p.field, p.line) for p in problems] == [
        ("Service default/web", "spec.ports[0].port", 7),
        ("Service default/web", "spec.ports", 8),
        ("Service default/web", "spec.ports", 8),
    ]
    assert problems[0].message == 'duplicate key "port"; only the last value would count'
    assert problems[2].message == "at least one port is required"


def test_bad_namespace_is_named_as_such() -> None:
    [problem] = problems_of(_service(PORTS).replace("{name: web}", "{name: web, namespace: Shop}"))
    assert problem.field == "metadata.namespace"
    assert problem.message.startswith('invalid namespace "Shop": must be a DNS-1123 label')
