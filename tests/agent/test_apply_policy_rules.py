"""iptables mode policy applied for real: sync_policy_rules and remove_policy_rules in a
scratch node namespace with three pod namespaces on veths, judged by real TCP connections;
what is left in the kernel read back with iptables-save and ipset."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

import pytest

from sluice import netlink, netns
from sluice.apply import policyrules
from sluice.apply.diff import Changes
from sluice.apply.errors import ApplyError
from sluice.apply.policyrules import remove_policy_rules, sync_policy_rules
from sluice.compile.iptables_services import chain_name
from sluice.compile.policytypes import (
    Action,
    AddressBlock,
    CompiledRule,
    Direction,
    DirectionPolicy,
    EndpointPolicy,
    FailsafePort,
    PeerSet,
    PolicyState,
    PortRange,
)
from sluice.model.addresses import IPAddress
from tests.conftest import unique

pytestmark = pytest.mark.root

TCP = 6
PORTS = (80, 81)
NODE_PORTS = (2222, 8080)  # the node listens on these itself
FAMILIES = (4, 6)
CONNTRACK_KEEPER = ("-t", "mangle", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW",
                    "-m", "comment", "--comment", "keeps conntrack on")


@dataclass(frozen=True)
class Pod:
    name: str  # endpoint name, "t/<letter>"
    ns: str
    veth: str  # the node's side
    index: int  # 60 + index: its subnets

    def ip(self, family: int) -> IPAddress:
        return ip_address(f"198.18.{60 + self.index}.2" if family == 4
                          else f"fd00:{60 + self.index}::2")

    def gateway(self, family: int) -> IPAddress:
        return ip_address(f"198.18.{60 + self.index}.1" if family == 4
                          else f"fd00:{60 + self.index}::1")

    def endpoint(self, host_endpoint: bool = False, **directions: DirectionPolicy
                 ) -> EndpointPolicy:
        name = f"hostendpoint/{self.veth}" if host_endpoint else self.name
        addresses = ((self.gateway(4), self.gateway(6)) if host_endpoint
                     else (self.ip(4), self.ip(6)))
        return EndpointPolicy(name, 100 + self.index, 1 if host_endpoint else 300 + self.index,
                              addresses, self.veth,
                              {Direction[d.upper()]: p for d, p in directions.items()},
                              host_endpoint=host_endpoint)


@dataclass
class Node:
    ns: str
    a: Pod
    b: Pod
    c: Pod
    listeners: list[socket.socket] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> str:
        with netns.entered(self.ns):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert not check or done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def sync(self, state: PolicyState) -> Changes:
        with netns.entered(self.ns):
            return sync_policy_rules(state)

    def remove(self) -> int:
        with netns.entered(self.ns):
            return remove_policy_rules()

    def ours(self, version: int) -> dict[str, list[str]]:
        """Every SLUICE-* chain with its rules, and the rules elsewhere naming one."""
        out = self.run("iptables-save" if version == 4 else "ip6tables-save")
        found: dict[str, list[str]] = {}
        for line in out.splitlines():
            if line.startswith(":SLUICE-"):
                found.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A ") and "SLUICE-" in line:
                found.setdefault(line.split()[1], []).append(line)
        return found

    def sets(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for line in self.run("ipset", "save").splitlines():
            words = line.split(maxsplit=2)
            if words[0] == "create":
                found[words[1]] = set()
            elif words[0] == "add":
                found[words[1]].add(words[2])
        return found


def listen(ns: str, family: int, address: str, port: int) -> socket.socket:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns.entered(ns):
        server = socket.socket(af, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.bind((address, port))
    server.listen(256)
    return server


@pytest.fixture(scope="module")
def topology() -> Iterator[Node]:
    """A node namespace that forwards between three pod namespaces (a, b, c), each on a
    veth of its own; every pod listens on PORTS, the node on NODE_PORTS."""
    tag = unique("sl-tpr")
    pods = [Pod(f"t/{letter}", f"{tag}-{letter}", f"v{letter}", i)
            for i, letter in enumerate("abc")]
    node = Node(f"{tag}-n", *pods)
    names = [node.ns, *(p.ns for p in pods)]
    try:
        for name in names:
            netns.create(name)
        netlink.set_sysctl(node.ns, "net.ipv4.conf.all.forwarding", "1")
        netlink.set_sysctl(node.ns, "net.ipv6.conf.all.forwarding", "1")
        for pod in pods:
            netlink.create_veth(node.ns, pod.veth, pod.ns, "eth0")
            netlink.configure(node.ns, pod.veth, [f"{pod.gateway(4)}/24", f"{pod.gateway(6)}/64"])
            netlink.configure(pod.ns, "eth0", [f"{pod.ip(4)}/24", f"{pod.ip(6)}/64"])
            for family in FAMILIES:
                netlink.add_route(pod.ns, "0.0.0.0/0" if family == 4 else "::/0",
                                  via=str(pod.gateway(family)))
                node.listeners += [listen(pod.ns, family, str(pod.ip(family)), port)
                                   for port in PORTS]
        for family in FAMILIES:
            node.listeners += [listen(node.ns, family, "0.0.0.0" if family == 4 else "::", port)
                               for port in NODE_PORTS]
            # A node's other rules (kube-proxy's) keep conntrack on in its namespace; without
            # them the kernel tracks nothing while no rule needs it.
            node.run("iptables" if family == 4 else "ip6tables", *CONNTRACK_KEEPER)
        yield node
    finally:
        for server in node.listeners:
            server.close()
        for name in names:
            netns.remove(name)


@pytest.fixture
def node(topology: Node) -> Iterator[Node]:
    """The topology, with no policy and no conntrack entries before and after."""
    try:
        yield topology
    finally:
        topology.remove()
        topology.run("conntrack", "-F", check=False)
        for version in FAMILIES:
            assert topology.ours(version) == {}
        assert topology.sets() == {}


def connects(src_ns: str, address: IPAddress, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP handshake from SRC_NS to ADDRESS:PORT completes (a DROP times out)."""
    af = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with netns.entered(src_ns):
        client = socket.socket(af, socket.SOCK_STREAM)
    with client:
        client.settimeout(timeout)
        try:
            client.connect((str(address), port))
        except TimeoutError:
            return False
        return True


def rule(rule_id: int, action: Action = Action.ALLOW, peers: PeerSet | None = None,
         port: int | None = None) -> CompiledRule:
    return CompiledRule(rule_id, action, peers, TCP if port else None,
                        (PortRange(port, port),) if port else (), origin=f"test rule {rule_id}")


def addresses(*pods: Pod) -> PeerSet:
    return PeerSet(pod_addresses=frozenset(p.ip(f) for p in pods for f in FAMILIES))


def isolated(*allows: CompiledRule) -> DirectionPolicy:
    return DirectionPolicy(kubernetes_rules=allows, kubernetes_isolated=True)


def b_ingress(policy: DirectionPolicy, node: Node, *more: EndpointPolicy,
              **state: object) -> PolicyState:
    return PolicyState(endpoints=(node.b.endpoint(ingress=policy), *more),
                       **state)  # type: ignore[arg-type]


# --- allowed and denied -------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_ingress_allows_by_peer_and_port_and_drops_the_rest(node: Node, family: int) -> None:
    a, b, c = node.a, node.b, node.c
    assert connects(a.ns, b.ip(family), 80) and connects(c.ns, b.ip(family), 81)
    changes = node.sync(b_ingress(isolated(rule(1, peers=addresses(a), port=80),
                                           rule(2, peers=PeerSet(host=True))), node))
    assert changes.added > 0 and not changes.removed
    assert connects(a.ns, b.ip(family), 80)
    assert not connects(a.ns, b.ip(family), 81), "another port"
    assert not connects(c.ns, b.ip(family), 80), "another peer"
    assert connects(node.ns, b.ip(family), 81), "the node itself (host peer)"
    assert connects(b.ns, a.ip(family), 80) and connects(b.ns, c.ip(family), 81), \
        "egress is not enforced, and replies pass"
    assert connects(c.ns, a.ip(family), 81), "other pods are untouched"


@pytest.mark.parametrize("family", FAMILIES)
def test_egress_and_ingress_both_judge_pod_to_pod(node: Node, family: int) -> None:
    a, b, c = node.a, node.b, node.c
    state = PolicyState(endpoints=(
        a.endpoint(egress=isolated(rule(1, peers=addresses(b, c), port=80))),
        b.endpoint(ingress=isolated(rule(2, peers=addresses(a), port=81))),
    ))
    node.sync(state)
    assert connects(a.ns, c.ip(family), 80)
    assert not connects(a.ns, b.ip(family), 80), "a's egress allows it, b's ingress does not"
    assert not connects(a.ns, b.ip(family), 81), "b's ingress allows it, a's egress does not"
    assert not connects(a.ns, node.a.gateway(family), 8080), "a's egress to the node"
    node.sync(PolicyState(endpoints=(
        a.endpoint(egress=isolated(rule(1, peers=addresses(b), port=81))),
        b.endpoint(ingress=isolated(rule(2, peers=addresses(a), port=81))),
    )))
    assert connects(a.ns, b.ip(family), 81)


def test_blocks_with_excepts_and_the_global_tier(node: Node) -> None:
    a, b, c = node.a, node.b, node.c
    everyone_but_a = PeerSet(blocks=(
        AddressBlock(ip_network("198.18.0.0/16"), (ip_network(f"{a.ip(4)}/32"),)),
        AddressBlock(ip_network("fd00::/8"), (ip_network(f"{a.ip(6)}/128"),))))
    node.sync(b_ingress(isolated(rule(1, peers=everyone_but_a)), node))
    for family in FAMILIES:
        assert connects(c.ns, b.ip(family), 80)
        assert not connects(a.ns, b.ip(family), 80), "the except"
    # Global tier: log everything, deny c on 81, pass a to the Kubernetes tier (which
    # allows a on 80), allow c; anything else is denied by the global default.
    policy = DirectionPolicy(
        global_rules=(rule(1, Action.LOG), rule(2, Action.DENY, addresses(c), 81),
                      rule(3, Action.PASS, addresses(a)), rule(4, Action.ALLOW, addresses(c))),
        global_selected=True, kubernetes_rules=(rule(5, peers=addresses(a), port=80),),
        kubernetes_isolated=True)
    node.sync(b_ingress(policy, node))
    assert connects(a.ns, b.ip(4), 80) and connects(c.ns, b.ip(4), 80)
    assert not connects(a.ns, b.ip(4), 81), "passed, and the Kubernetes tier denies it"
    assert not connects(c.ns, b.ip(4), 81), "the global deny comes first"
    assert not connects(node.ns, b.ip(4), 80), "the global default"
    logged = [line for line in node.run("iptables-save", "-c").splitlines() if "NFLOG" in line]
    assert len(logged) == 1 and not logged[0].startswith("[0:"), logged


# --- host endpoints -------------------------------------------------------------------------


def test_host_endpoint_ingress_egress_and_failsafe_ports(node: Node) -> None:
    a, c = node.a, node.c
    # c plays the outside world on the node's interface vc, a host endpoint.
    closed = DirectionPolicy(global_selected=True)
    state = PolicyState(
        endpoints=(c.endpoint(host_endpoint=True, ingress=closed, egress=closed),),
        failsafe=(FailsafePort(True, TCP, 2222), FailsafePort(False, TCP, 81)))
    node.sync(state)
    for family in FAMILIES:
        assert connects(c.ns, c.gateway(family), 2222), "inbound failsafe"
        assert not connects(c.ns, c.gateway(family), 8080)
        assert connects(a.ns, a.gateway(family), 8080), "not through the host endpoint"
        assert connects(node.ns, c.ip(family), 81), "outbound failsafe"
        assert not connects(node.ns, c.ip(family), 80)
        assert connects(node.ns, a.ip(family), 80)
        assert connects(c.ns, a.ip(family), 80), "forwarded traffic: no forward policy"


def test_host_endpoint_forward_prednat_untracked_and_prefilter(node: Node) -> None:
    a, b, c = node.a, node.b, node.c
    forward = DirectionPolicy(global_rules=(rule(1, port=81),), global_selected=True)
    node.sync(PolicyState(endpoints=(c.endpoint(host_endpoint=True, forward_ingress=forward),)))
    assert connects(c.ns, b.ip(4), 81) and not connects(c.ns, b.ip(4), 80)
    assert connects(c.ns, c.gateway(4), 8080), "to the node itself: not forwarded"

    prednat = DirectionPolicy(global_rules=(rule(1, Action.DENY, port=80),))
    node.sync(PolicyState(endpoints=(c.endpoint(host_endpoint=True, prednat=prednat),)))
    assert not connects(c.ns, b.ip(6), 80) and connects(c.ns, b.ip(6), 81)

    untracked = DirectionPolicy(global_rules=(rule(1, peers=addresses(c), port=8080),),
                                global_selected=True)
    node.sync(PolicyState(endpoints=(c.endpoint(host_endpoint=True, untracked=untracked),)))
    node.run("conntrack", "-F")
    assert connects(c.ns, c.gateway(4), 8080)
    assert not connects(c.ns, c.gateway(4), 2222)
    entries = node.run("conntrack", "-L", "-p", "tcp", "--orig-src", str(c.ip(4)), check=False)
    assert "dport=8080" not in entries, f"the allowed flow was not tracked: {entries}"

    node.sync(PolicyState(prefilter_deny=(ip_network(f"{c.ip(4)}/32"),
                                          ip_network(f"{c.ip(6)}/128"))))
    for family in FAMILIES:
        assert not connects(c.ns, b.ip(family), 80) and not connects(c.ns, c.gateway(family), 2222)
        assert connects(a.ns, b.ip(family), 80)


# --- updates, steady state, removal -------------------------------------------------------------


def test_an_update_replaces_rules_and_sets_and_leaves_nothing_old(node: Node) -> None:
    a, b, c = node.a, node.b, node.c
    first = b_ingress(isolated(rule(1, peers=addresses(a), port=80)), node,
                      a.endpoint(egress=isolated(rule(2, port=80))))
    node.sync(first)
    sets_first = node.sets()
    chains_first = set(node.ours(4))
    assert len(sets_first) == 2 and all(n.startswith("sluice-") for n in sets_first)
    assert set(next(m for m in sets_first.values() if str(a.ip(4)) in m)) == {str(a.ip(4))}

    second = b_ingress(isolated(rule(1, peers=addresses(c), port=80)), node)
    changes = node.sync(second)
    sets_second = node.sets()
    assert len(sets_second) == 2 and not set(sets_first) & set(sets_second)
    assert {m for members in sets_second.values() for m in members} == {str(c.ip(4)),
                                                                        str(c.ip(6))}
    chains_second = set(node.ours(4))
    a_egress = {chain_name("SLUICE-PO", "t/a"), chain_name("SLUICE-KO", "t/a")}
    assert a_egress <= chains_first
    assert chains_first - chains_second == {*a_egress, "SLUICE-POLICY-IN", "INPUT"}, \
        "a's chains, the INPUT dispatch (no pod egress is left) and the jump to it"
    # Sets: 2 new, 2 gone; per family: the FORWARD dispatch and b's Kubernetes tier changed,
    # three chains and the INPUT jump gone.
    assert (changes.added, changes.changed, changes.removed) == (2, 4, 2 + 2 * 4)
    assert connects(c.ns, b.ip(4), 80) and not connects(a.ns, b.ip(4), 80)
    for version in FAMILIES:
        jumps = [r for chain in ("INPUT", "FORWARD", "OUTPUT")
                 for r in node.ours(version).get(chain, [])]
        assert sorted(jumps) == sorted([
            '-A FORWARD -m comment --comment "sluice policy" -j SLUICE-POLICY-FWD',
            '-A OUTPUT -m comment --comment "sluice policy" -j SLUICE-POLICY-OUT'])


def test_set_members_changed_behind_our_back_are_swapped_back(node: Node) -> None:
    state = PolicyState(prefilter_deny=(ip_network(f"{node.c.ip(4)}/32"),))
    node.sync(state)
    node.run("ipset", "flush", "sluice-4-prefilter")
    node.run("ipset", "add", "sluice-4-prefilter", "198.18.99.0/24")
    changes = node.sync(state)
    assert (changes.changed, changes.added, changes.removed) == (1, 0, 0)
    assert node.sets() == {"sluice-4-prefilter": {str(node.c.ip(4))}}


def test_a_resync_of_the_same_state_writes_nothing(node: Node,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = b_ingress(isolated(rule(1, peers=addresses(node.a), port=80)), node,
                      prefilter_deny=(ip_network("192.0.2.0/24"),))
    node.sync(state)
    before = ({v: node.ours(v) for v in FAMILIES}, node.sets())

    def refuse(*args: object) -> None:
        raise AssertionError(f"a steady-state resync wrote something: {args}")

    monkeypatch.setattr(policyrules, "restore", refuse)
    monkeypatch.setattr(policyrules, "cut_flows", refuse)
    again = node.sync(state)
    assert not again.any and again.unchanged > 0
    policyrules.APPLIED.clear()  # what a restarted agent knows: rewrites, cuts nothing
    monkeypatch.undo()
    monkeypatch.setattr(policyrules, "cut_flows", refuse)
    assert not node.sync(state).any
    assert ({v: node.ours(v) for v in FAMILIES}, node.sets()) == before


def test_jumps_are_repaired_and_others_rules_stay(node: Node) -> None:
    others = [("-A", "FORWARD", "-s", "198.18.99.0/24", "-j", "ACCEPT"),
              ("-N", "SLUICE-SERVICES"),  # another part of Sluice
              ("-A", "SLUICE-SERVICES", "-j", "RETURN")]
    try:
        for command in others:
            node.run("iptables", *command)
        node.run("ipset", "create", "other", "hash:ip")
        state = b_ingress(isolated(), node)
        node.sync(state)
        jump = ["-m", "comment", "--comment", "sluice policy", "-j"]
        node.run("iptables", "-A", "FORWARD", *jump, "SLUICE-POLICY-FWD")  # a second one
        node.run("iptables", "-D", "OUTPUT", *jump, "SLUICE-POLICY-OUT")
        changes = node.sync(state)
        assert (changes.added, changes.changed, changes.removed) == (1, 1, 0), changes
        live = node.ours(4)
        assert live["FORWARD"] == ['-A FORWARD -m comment --comment "sluice policy" '
                                   "-j SLUICE-POLICY-FWD"]
        assert len(live["OUTPUT"]) == 1
        assert node.run("iptables-save").count("-A FORWARD") == 2
        assert node.remove() > 0
        assert node.ours(4) == {"SLUICE-SERVICES": ["-A SLUICE-SERVICES -j RETURN"]}
        assert "-A FORWARD -s 198.18.99.0/24 -j ACCEPT" in node.run("iptables-save")
        assert node.run("ipset", "list", "-n").split() == ["other"]
    finally:
        node.run("iptables", "-D", *others[0][1:], check=False)
        node.run("iptables", "-F", "SLUICE-SERVICES", check=False)
        node.run("iptables", "-X", "SLUICE-SERVICES", check=False)
        node.run("ipset", "destroy", "other", check=False)


def test_removal_leaves_nothing_and_then_is_a_no_op(node: Node) -> None:
    assert node.remove() == 0, "nothing there yet"
    node.sync(b_ingress(isolated(rule(1, peers=addresses(node.a), port=80)), node,
                        node.c.endpoint(host_endpoint=True, untracked=isolated(),
                                        prednat=isolated()),
                        prefilter_deny=(ip_network("192.0.2.0/24"),
                                        ip_network("2001:db8::/32"))))
    assert not connects(node.c.ns, node.b.ip(4), 80)
    assert node.remove() > 0
    for version in FAMILIES:
        saved = node.run("iptables-save" if version == 4 else "ip6tables-save")
        assert "SLUICE" not in saved and "sluice" not in saved
    assert "sluice" not in node.run("ipset", "list")
    assert node.remove() == 0
    assert connects(node.c.ns, node.b.ip(4), 80)


def test_bad_input_is_an_apply_error_naming_the_endpoint(node: Node) -> None:
    bad = b_ingress(isolated(CompiledRule(9, Action.ALLOW, None, None, (PortRange(80, 80),),
                                          "NetworkPolicy t/x ingress[0]")), node)
    with pytest.raises(ApplyError, match=r"endpoint t/b ingress: rule 9 \(NetworkPolicy "
                                         r"t/x ingress\[0\]\) has ports but no protocol"):
        node.sync(bad)
    assert node.ours(4) == {} and node.sets() == {}


# --- cutting established flows ------------------------------------------------------------------


@dataclass
class Flow:
    """An established TCP connection from a pod to another pod's listener."""

    client: socket.socket
    server: socket.socket

    def passes(self, timeout: float = 1.5) -> bool:
        """Whether a few bytes from the client still reach the server."""
        self.client.sendall(b"ping")
        self.server.settimeout(timeout)
        try:
            return self.server.recv(4) == b"ping"
        except TimeoutError:
            return False

    def close(self) -> None:
        self.client.close()
        self.server.close()


def open_flow(node: Node, src: Pod, dst: Pod, port: int, family: int = 4) -> Flow:
    listener = next(s for s in node.listeners
                    if s.getsockname()[:2] == (str(dst.ip(family)), port))
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns.entered(src.ns):
        client = socket.socket(af, socket.SOCK_STREAM)
    client.settimeout(2.0)
    client.connect((str(dst.ip(family)), port))
    listener.settimeout(2.0)
    while True:
        server, peer = listener.accept()
        if peer[1] == client.getsockname()[1]:
            break
        server.close()  # an earlier probe's connection
    flow = Flow(client, server)
    assert flow.passes()
    return flow


@pytest.mark.parametrize("family", FAMILIES)
def test_a_policy_that_forbids_an_established_flow_cuts_it(node: Node, family: int,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    a, b, c = node.a, node.b, node.c
    forbid = b_ingress(isolated(rule(1, peers=addresses(c), port=80)), node)

    # Without cutting, conntrack would let the established flow go on: what the cut is for.
    flow = open_flow(node, a, b, 80, family)
    monkeypatch.setattr(policyrules, "cut_flows", lambda state, addresses: 0)
    node.sync(forbid)
    assert flow.passes(), "established flows are accepted before any policy chain"
    flow.close()
    monkeypatch.undo()
    node.remove()

    allowed = open_flow(node, a, b, 80, family)
    forbidden = open_flow(node, c, b, 81, family)
    elsewhere = open_flow(node, c, a, 81, family)
    node.sync(b_ingress(isolated(rule(1, peers=addresses(a), port=80)), node))
    assert allowed.passes(), "allowed under the new policy: left alone"
    assert not forbidden.passes(), "forbidden now: its conntrack entry is marked cut"
    assert elsewhere.passes()
    for flow in (allowed, forbidden, elsewhere):
        flow.close()
