"""iptables mode services applied for real: sync_service_rules and remove_service_rules
against iptables in test namespaces (what is there afterwards, read with iptables-save),
real TCP through a node that DNATs a ClusterIP and a NodePort, and the agent wiring."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import pytest

from sluice import netlink, netns
from sluice.agent import reconcile
from sluice.agent.config import AgentConfig
from sluice.agent.reconcile import Reconciler
from sluice.apply import servicerules, xtables
from sluice.apply.diff import ChangeLog, Changes
from sluice.apply.errors import ApplyError
from sluice.apply.servicerules import remove_service_rules, sync_service_rules
from sluice.compile.iptables_services import service_rules
from sluice.compile.services import ServiceTable, service_table
from sluice.compile.topology import Dataplane
from sluice.datastore import ClusterState, Datastore
from sluice.model import parse_text
from tests.agent.harness import MiniCluster, wait_for
from tests.compile.helpers import node
from tests.compile.test_iptables_services import EMPTY
from tests.compile.test_services import PODS, SLICES, WEB, state
from tests.conftest import unique

pytestmark = pytest.mark.root

BUILTIN = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
           "filter": ("INPUT", "FORWARD", "OUTPUT")}
WANTED_JUMPS = {("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"),
                ("filter", "INPUT"), ("filter", "FORWARD"), ("filter", "OUTPUT")}


def full_table() -> ServiceTable:
    return service_table(state(PODS, WEB, SLICES, EMPTY), "n1")


# --- reading what is there, independently of the code under test -------------------------


def run_in(ns: str, *argv: str) -> str:
    with netns.entered(ns):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def ipt(ns: str, version: int, *args: str) -> str:
    return run_in(ns, "iptables" if version == 4 else "ip6tables", *args)


def saved(ns: str, version: int) -> dict[str, dict[str, list[str]]]:
    """{table: {chain: rules}} as iptables-save prints them (tables that exist only)."""
    out = run_in(ns, "iptables-save" if version == 4 else "ip6tables-save")
    tables: dict[str, dict[str, list[str]]] = {}
    chains: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return tables


def ours(ns: str, version: int) -> dict[tuple[str, str], list[str]]:
    """Every SLUICE-* chain of the nat and filter tables, with its rules."""
    return {(table, chain): rules for table, chains in saved(ns, version).items()
            for chain, rules in chains.items() if chain.startswith("SLUICE-")}


def jumps(ns: str, version: int) -> dict[tuple[str, str], list[str]]:
    """Rules of built-in chains that lead into a SLUICE-* chain."""
    found: dict[tuple[str, str], list[str]] = {}
    for table, chains in saved(ns, version).items():
        for chain in BUILTIN.get(table, ()):
            rules = [r for r in chains.get(chain, []) if " -j SLUICE-" in r]
            if rules:
                found[(table, chain)] = rules
    return found


def generated_chains(table: ServiceTable, version: int) -> set[tuple[str, str]]:
    found = set()
    current = ""
    for line in service_rules(table, version).text.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif line.startswith(":"):
            found.add((current, line[1:].split()[0]))
    return found


def changed_keys(before: dict[tuple[str, str], list[str]],
                 after: dict[tuple[str, str], list[str]]) -> dict[str, set[tuple[str, str]]]:
    return {"added": after.keys() - before.keys(), "removed": before.keys() - after.keys(),
            "changed": {k for k in before.keys() & after.keys() if before[k] != after[k]}}


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = unique("sl-tsrn")
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def sync(ns: str, table: ServiceTable) -> Changes:
    with netns.entered(ns):
        return sync_service_rules(table)


def remove(ns: str) -> int:
    with netns.entered(ns):
        return remove_service_rules()


# --- applying -----------------------------------------------------------------------------


def test_apply_creates_every_chain_and_one_jump_per_builtin_chain(node_ns: str) -> None:
    table = full_table()
    changes = sync(node_ns, table)
    total = 0
    for version in (4, 6):
        live = ours(node_ns, version)
        assert set(live) == generated_chains(table, version)
        assert {k: len(v) for k, v in jumps(node_ns, version).items()} == \
            dict.fromkeys(WANTED_JUMPS, 1)
        total += len(live) + len(WANTED_JUMPS)
    assert (changes.added, changes.changed, changes.removed) == (total, 0, 0)
    nat4 = ours(node_ns, 4)
    assert any("--to-destination 198.18.17.2:9090" in r for rules in nat4.values() for r in rules)
    assert any("--to-destination [fd00:10:2::2]:9090" in r
               for rules in ours(node_ns, 6).values() for r in rules)
    assert any("198.19.0.30/32" in r and "REJECT" in r for r in nat4[("filter", "SLUICE-SERVICES")])


def test_reapply_runs_no_restore_and_changes_nothing(node_ns: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    table = full_table()
    sync(node_ns, table)
    before = {v: (ours(node_ns, v), jumps(node_ns, v)) for v in (4, 6)}

    def no_restore(version: int, text: str) -> None:
        raise AssertionError(f"a steady-state resync ran ip{version}tables-restore")

    monkeypatch.setattr(servicerules, "restore", no_restore)
    again = sync(node_ns, table)
    assert not again.any and again.unchanged == sum(len(o) + len(j) for o, j in before.values())
    monkeypatch.undo()
    assert {v: (ours(node_ns, v), jumps(node_ns, v)) for v in (4, 6)} == before


def test_a_restarted_agent_rewrites_but_counts_no_change(node_ns: str) -> None:
    table = full_table()
    sync(node_ns, table)
    before = {v: (ours(node_ns, v), jumps(node_ns, v)) for v in (4, 6)}
    servicerules.APPLIED.clear()  # what a new process knows
    changes = sync(node_ns, table)
    assert not changes.any, changes
    assert {v: (ours(node_ns, v), jumps(node_ns, v)) for v in (4, 6)} == before


@pytest.mark.parametrize("version", [4, 6])
def test_tampered_chains_and_jumps_are_repaired(node_ns: str, version: int) -> None:
    table = full_table()
    sync(node_ns, table)
    good = (ours(node_ns, version), jumps(node_ns, version))
    svc = next(chain for (tbl, chain), rules in good[0].items()
               if chain.startswith("SLUICE-SVC-") and rules)
    portals = ["-m", "comment", "--comment", "sluice service portals", "-j", "SLUICE-SERVICES"]
    ipt(node_ns, version, "-t", "nat", "-F", svc)
    ipt(node_ns, version, "-t", "nat", "-A", "PREROUTING", *portals)  # a duplicate
    ipt(node_ns, version, "-t", "filter", "-D", "FORWARD", "-m", "conntrack", "--ctstate",
        "NEW", *portals)
    changes = sync(node_ns, table)
    assert (changes.added, changes.changed, changes.removed) == (1, 2, 0), changes
    assert (ours(node_ns, version), jumps(node_ns, version)) == good


def test_jumps_go_first_and_others_rules_stay(node_ns: str) -> None:
    ipt(node_ns, 4, "-t", "nat", "-A", "PREROUTING", "-d", "198.18.99.1/32", "-j", "ACCEPT")
    ipt(node_ns, 4, "-t", "filter", "-N", "OTHER")
    ipt(node_ns, 4, "-t", "filter", "-A", "OTHER", "-j", "RETURN")
    ipt(node_ns, 4, "-t", "filter", "-A", "FORWARD", "-s", "198.18.99.0/24", "-j", "OTHER")
    # A SLUICE-* chain that is not a service chain (another part of Sluice, a newer
    # version): sync leaves it, remove_service_rules (uninstall) takes it.
    ipt(node_ns, 4, "-t", "nat", "-N", "SLUICE-ELSE")
    ipt(node_ns, 4, "-t", "nat", "-A", "SLUICE-ELSE", "-j", "RETURN")
    changes = sync(node_ns, full_table())
    assert changes.added == len(generated_chains(full_table(), 4)) + len(WANTED_JUMPS) + \
        len(generated_chains(full_table(), 6)) + len(WANTED_JUMPS)
    live = saved(node_ns, 4)
    assert "-j SLUICE-SERVICES" in live["nat"]["PREROUTING"][0]
    assert "-A PREROUTING -d 198.18.99.1/32 -j ACCEPT" in live["nat"]["PREROUTING"]
    assert "-j SLUICE-SERVICES" in live["filter"]["FORWARD"][0]
    assert "-A FORWARD -s 198.18.99.0/24 -j OTHER" in live["filter"]["FORWARD"]
    assert live["nat"]["SLUICE-ELSE"] == ["-A SLUICE-ELSE -j RETURN"]

    assert remove(node_ns) > 0
    assert ours(node_ns, 4) == {}
    live = saved(node_ns, 4)
    assert live["nat"]["PREROUTING"] == ["-A PREROUTING -d 198.18.99.1/32 -j ACCEPT"]
    assert live["filter"]["FORWARD"] == ["-A FORWARD -s 198.18.99.0/24 -j OTHER"]
    assert live["filter"]["OTHER"] == ["-A OTHER -j RETURN"]


def test_removing_a_service_removes_its_chains_and_only_those(node_ns: str) -> None:
    with_api = full_table()
    without_api = service_table(state(PODS, WEB, EMPTY), "n1")
    sync(node_ns, with_api)
    before = ours(node_ns, 4)
    changes = sync(node_ns, without_api)
    after = ours(node_ns, 4)
    diff = changed_keys(before, after)
    gone = generated_chains(with_api, 4) - generated_chains(without_api, 4)
    assert gone and diff["removed"] == gone
    assert all(chain.startswith(("SLUICE-SVC-", "SLUICE-SEP-", "SLUICE-EXT-", "SLUICE-FW-"))
               for _, chain in gone)
    assert {chain for _, chain in gone if chain.startswith("SLUICE-FW-")}, "the LB's firewall"
    assert not diff["added"]
    assert diff["changed"] == {("nat", "SLUICE-SERVICES"), ("nat", "SLUICE-NODEPORTS")}
    assert not any("shop/api" in r for rules in after.values() for r in rules)
    assert (changes.added, changes.changed, changes.removed) == (0, 2, len(gone))
    assert jumps(node_ns, 4).keys() == WANTED_JUMPS


def test_changing_one_endpoint_changes_only_that_services_chains(node_ns: str) -> None:
    sync(node_ns, full_table())
    before = {v: ours(node_ns, v) for v in (4, 6)}
    moved = service_table(state(PODS.replace("198.18.17.2", "198.18.17.7"), WEB, SLICES, EMPTY),
                          "n1")
    changes = sync(node_ns, moved)
    assert ours(node_ns, 6) == before[6], "the IPv6 endpoints did not change"
    diff = changed_keys(before[4], ours(node_ns, 4))
    assert [c for _, c in diff["added"]] == [c for _, c in diff["added"]
                                             if c.startswith("SLUICE-SEP-")]
    assert len(diff["added"]) == 1 and len(diff["removed"]) == 1
    assert {c for _, c in diff["removed"]} <= {c for _, c in before[4] if
                                               c.startswith("SLUICE-SEP-")}
    # The web:http port's service chains: its ClusterIP and its NodePort.
    assert len(diff["changed"]) == 2
    assert all(c.startswith("SLUICE-SVC-") for _, c in diff["changed"])
    web_http = {r.rsplit("-j ", 1)[1] for rules in before[4].values() for r in rules
                if '"shop/web:http ' in r}
    web_http |= {r.rsplit("-j ", 1)[1] for (_, c), rules in before[4].items()
                 if c in web_http for r in rules}
    assert {c for _, c in diff["changed"]} <= web_http
    assert (changes.added, changes.changed, changes.removed) == (1, 2, 1)


def test_remove_leaves_no_chain_and_no_jump_and_is_then_a_no_op(node_ns: str) -> None:
    assert remove(node_ns) == 0, "nothing there yet"
    sync(node_ns, full_table())
    expected = sum(len(ours(node_ns, v)) + len(jumps(node_ns, v)) for v in (4, 6))
    assert remove(node_ns) == expected
    for version in (4, 6):
        assert ours(node_ns, version) == {} and jumps(node_ns, version) == {}
    assert remove(node_ns) == 0
    # And sync after a removal starts over rather than trusting what it applied before.
    sync(node_ns, full_table())
    assert ours(node_ns, 4)


def test_without_ipv6_support(node_ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which

    def which(name: str) -> str | None:
        return None if name.startswith("ip6tables") else real_which(name)

    sync(node_ns, full_table())
    v6 = len(ours(node_ns, 6))
    monkeypatch.setattr(shutil, "which", which)
    with pytest.raises(ApplyError, match="IPv6 service frontends"):
        sync(node_ns, full_table())
    v4_only = service_table(state(SLICES), "n1")
    assert all(p.frontend.address.version == 4 for p in v4_only.plans)
    sync(node_ns, v4_only)
    assert remove(node_ns) > 0
    assert ours(node_ns, 4) == {}
    assert len(ours(node_ns, 6)) == v6, "without ip6tables nothing of IPv6 is touched"
    assert remove(node_ns) == 0
    monkeypatch.undo()
    assert remove(node_ns) > 0 and ours(node_ns, 6) == {}


def test_restore_errors_name_the_tool_and_the_line(node_ns: str) -> None:
    text = "*nat\n:SLUICE-TEST - [0:0]\n-A SLUICE-TEST -j SLUICE-NO-SUCH-CHAIN\nCOMMIT\n"
    with netns.entered(node_ns), pytest.raises(ApplyError) as raised:
        servicerules.restore(4, text)
    message = str(raised.value)
    assert "iptables-restore" in message and "SLUICE-NO-SUCH-CHAIN" in message
    assert "line 3: -A SLUICE-TEST -j SLUICE-NO-SUCH-CHAIN" in message
    assert ours(node_ns, 4) == {}, "a failed restore changes nothing"


# --- real traffic through a node that holds the rules ----------------------------------


@dataclass(frozen=True)
class Net:
    client: str
    node: str
    backend: str


CLIENT = ("198.18.40.2", "fd00:40::2")
NODE_CLIENT_SIDE = ("198.18.40.1", "fd00:40::1")  # also the node's InternalIP
NODE_BACKEND_SIDE = ("198.18.41.1", "fd00:41::1")
BACKEND = ("198.18.41.2", "fd00:41::2")  # a pod "on another node"
CLUSTER_IP = ("198.19.0.10", "fd00:96::10")
EMPTY_IP = ("198.19.0.30", "fd00:96::30")
NODE_PORT = 30080
BACKEND_PORT = 8080

TRAFFIC_OBJECTS = f"""
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: t, labels: {{app: web}}}}
spec:
  nodeName: n2
  containers: [{{name: c, ports: [{{name: http, containerPort: {BACKEND_PORT}}}]}}]
status:
  podIPs: [{{ip: {BACKEND[0]}}}, {{ip: "{BACKEND[1]}"}}]
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: t}}
spec:
  type: NodePort
  selector: {{app: web}}
  clusterIPs: [{CLUSTER_IP[0]}, "{CLUSTER_IP[1]}"]
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{{name: http, port: 80, targetPort: http, nodePort: {NODE_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: t}}
spec:
  selector: {{app: nobody}}
  clusterIPs: [{EMPTY_IP[0]}, "{EMPTY_IP[1]}"]
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{{port: 80}}]
"""


def traffic_table() -> ServiceTable:
    nodes = [node("n1", NODE_CLIENT_SIDE, ("198.18.40.0/24", "fd00:40::/64")),
             node("n2", ("198.18.0.12", "fd00:ff::12"), ("198.18.41.0/24", "fd00:41::/64"))]
    resources = parse_text(TRAFFIC_OBJECTS, "traffic.yaml").resources
    return service_table(ClusterState([*nodes, *resources]), "n1")


@pytest.fixture
def net() -> Iterator[Net]:
    """client -- node -- backend, each its own namespace; the node forwards."""
    made = Net(unique("sl-tsrc"), unique("sl-tsrn"), unique("sl-tsrb"))
    names = (made.client, made.node, made.backend)
    try:
        for name in names:
            netns.create(name)
            for key in ("net.ipv6.conf.default.accept_dad", "net.ipv6.conf.all.accept_dad"):
                netlink.set_sysctl(name, key, "0")
        netlink.set_sysctl(made.node, "net.ipv4.conf.all.forwarding", "1")
        netlink.set_sysctl(made.node, "net.ipv6.conf.all.forwarding", "1")
        netlink.create_veth(made.client, "eth0", made.node, "to-client")
        netlink.create_veth(made.backend, "eth0", made.node, "to-backend")
        netlink.configure(made.client, "eth0", [f"{CLIENT[0]}/24", f"{CLIENT[1]}/64"])
        netlink.configure(made.node, "to-client",
                          [f"{NODE_CLIENT_SIDE[0]}/24", f"{NODE_CLIENT_SIDE[1]}/64"])
        netlink.configure(made.node, "to-backend",
                          [f"{NODE_BACKEND_SIDE[0]}/24", f"{NODE_BACKEND_SIDE[1]}/64"])
        netlink.configure(made.backend, "eth0", [f"{BACKEND[0]}/24", f"{BACKEND[1]}/64"])
        for family in (0, 1):
            default = "0.0.0.0/0" if family == 0 else "::/0"
            netlink.add_route(made.client, default, via=NODE_CLIENT_SIDE[family])
            netlink.add_route(made.backend, default, via=NODE_BACKEND_SIDE[family])
            # Where the node sends what it does not NAT: toward the backend, which drops
            # it (not its address); so only the REJECT rule can refuse a connection.
            netlink.add_route(made.node, default, via=BACKEND[family])
        yield made
    finally:
        for name in names:
            netns.remove(name)


def connect(net: Net, family: int, address: str, port: int) -> str:
    """TCP from the client to ADDRESS:PORT, answered by a listener in the backend; the
    result (connected: the source the backend saw; refused; timeout; unreachable)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    index = 0 if family == 4 else 1
    with netns.entered(net.backend):
        listener = socket.socket(af, socket.SOCK_STREAM)
    with netns.entered(net.client):
        client = socket.socket(af, socket.SOCK_STREAM)
    with listener, client:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((BACKEND[index], BACKEND_PORT))
        listener.listen(4)
        listener.settimeout(3.0)
        client.settimeout(1.5)
        try:
            client.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as err:
            return f"unreachable ({err})"
        accepted, peer = listener.accept()
        with accepted:
            client.sendall(b"ping")
            accepted.settimeout(3.0)
            assert accepted.recv(4) == b"ping"
        return f"from {peer[0]}"


@pytest.mark.parametrize("family", [4, 6])
def test_cluster_ip_and_node_port_are_dnated_to_the_backend(net: Net, family: int) -> None:
    i = 0 if family == 4 else 1
    assert connect(net, family, CLUSTER_IP[i], 80) == "timeout", "no rules, no service"
    assert connect(net, family, BACKEND[i], BACKEND_PORT) == f"from {CLIENT[i]}", \
        "the path to the backend itself works"

    sync(net.node, traffic_table())
    # Pod-to-service keeps the client's address; the backend replies via the node.
    assert connect(net, family, CLUSTER_IP[i], 80) == f"from {CLIENT[i]}"
    # A node port with traffic policy Cluster is masqueraded: the backend (on another
    # node) must answer through this one, so it sees this node's address toward it.
    assert connect(net, family, NODE_CLIENT_SIDE[i], NODE_PORT) == f"from {NODE_BACKEND_SIDE[i]}"
    # A frontend without backends is refused at once (filter table), not left to time out.
    assert connect(net, family, EMPTY_IP[i], 80) == "refused"

    assert remove(net.node) > 0
    assert connect(net, family, CLUSTER_IP[i], 80) == "timeout"
    assert connect(net, family, NODE_CLIENT_SIDE[i], NODE_PORT) == "refused", \
        "no one listens on the node port itself"


# --- the agent ----------------------------------------------------------------------------

AGENT_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  type: NodePort
  selector: {app: web}
  clusterIPs: [198.19.0.10, "fd00:96::10"]
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80, nodePort: 30080}]
"""


def test_agent_programs_services_in_iptables_mode_and_removes_them(single: MiniCluster) -> None:
    n1 = single.nodes[0]
    single.publish()
    single.write("service.web.yaml", AGENT_SERVICE)

    def programmed() -> bool:
        live = saved(n1.ns, 4)
        return any('"t/web ClusterIP"' in r for r in live.get("nat", {}).get("SLUICE-SERVICES",
                                                                              []))

    agent = single.start_agent(n1, dataplane="iptables")
    wait_for(programmed, what="the service's rules")
    assert len(jumps(n1.ns, 4)) == len(WANTED_JUMPS) and len(jumps(n1.ns, 6)) == len(WANTED_JUMPS)
    time.sleep(4.5)  # two resyncs: the steady state writes nothing
    logged = [line for line in agent.log_text().splitlines()
              if "reconciled revision" in line and "services" in line]
    assert len(logged) == 1 and "services +" in logged[0], agent.log_text()[-3000:]
    assert agent.stop() == 0

    # `sluice agent --uninstall` removes them.
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "agent", "--node", n1.name, "--netns", n1.ns,
         "--pin-dir", n1.pin_dir, "--cni-state-dir", str(n1.state_dir), "--uninstall"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "service rules:" in result.stdout and "service rules: 0" not in result.stdout
    for version in (4, 6):
        assert ours(n1.ns, version) == {} and jumps(n1.ns, version) == {}

    # So does a bpf-mode agent started on a node an iptables-mode agent left.
    single.start_agent(n1, dataplane="iptables")
    wait_for(programmed, what="the service's rules again")
    assert single.agents[-1].stop() == 0
    bpf = single.start_agent(n1, dataplane="bpf")
    wait_for(lambda: not ours(n1.ns, 4) and not ours(n1.ns, 6), what="the rules to go")
    assert not jumps(n1.ns, 4) and not jumps(n1.ns, 6)
    assert bpf.stop() == 0


def test_reconciler_services_step_in_each_dataplane(node_ns: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    no_cluster_ip = EMPTY.replace("clusterIP: 198.19.0.30", "externalIPs: [198.18.0.99]")
    cluster = state(PODS, WEB, SLICES, no_cluster_ip)
    datastore = cast(Datastore, None)  # the step reads only the snapshot it is given
    iptables = Reconciler(AgentConfig("n1", "", dataplane=Dataplane.IPTABLES), datastore)
    changes = ChangeLog()
    with netns.entered(node_ns):
        problems = iptables._services(cluster, changes)
    assert changes["services"].added == sum(len(ours(node_ns, v)) + len(jumps(node_ns, v))
                                            for v in (4, 6)) > 0
    assert any("shop/empty has no clusterIP" in p for p in problems), problems

    bpf = Reconciler(AgentConfig("n1", "", dataplane=Dataplane.BPF), datastore)
    changes = ChangeLog()
    with netns.entered(node_ns):
        assert bpf._services(cluster, changes) == []
    assert changes["iptables services"].removed > 0
    assert ours(node_ns, 4) == {} and jumps(node_ns, 6) == {}

    def once_only() -> int:
        raise AssertionError("removed again: once per agent is enough")

    monkeypatch.setattr(reconcile, "remove_service_rules", once_only)
    with netns.entered(node_ns):
        assert bpf._services(cluster, ChangeLog()) == []


def saved_with(ns: str, command: str) -> str:
    return run_in(ns, command, "-t", "nat")


def test_agent_writes_with_the_backend_it_is_given(single: MiniCluster) -> None:
    n1 = single.nodes[0]
    single.publish()
    single.write("service.web.yaml", AGENT_SERVICE)
    agent = single.start_agent(n1, dataplane="iptables", extra=("--iptables-backend", "legacy"))
    wait_for(lambda: '"t/web ClusterIP"' in saved_with(n1.ns, "iptables-legacy-save"),
             what="the service's rules in the legacy tables")
    assert "t/web" in saved_with(n1.ns, "ip6tables-legacy-save")
    assert "SLUICE-" not in saved_with(n1.ns, "iptables-nft-save"), \
        "nothing is written through the other backend"
    assert agent.stop() == 0

    def uninstall(backend: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "sluice", "agent", "--node", n1.name, "--netns", n1.ns,
             "--pin-dir", n1.pin_dir, "--cni-state-dir", str(n1.state_dir), "--uninstall",
             "--iptables-backend", backend], capture_output=True, text=True, timeout=60,
            check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    uninstall("nft")
    assert "SLUICE-" in saved_with(n1.ns, "iptables-legacy-save"), \
        "the nft backend neither sees nor removes legacy rules"
    uninstall("legacy")
    assert "SLUICE-" not in saved_with(n1.ns, "iptables-legacy-save")
    assert "SLUICE-" not in saved_with(n1.ns, "ip6tables-legacy-save")


def test_backend_commands() -> None:
    assert xtables.command(xtables.Backend.SYSTEM, 4, "restore") == "iptables-restore"
    assert xtables.command(xtables.Backend.LEGACY, 6, "save") == "ip6tables-legacy-save"
    assert xtables.command(xtables.Backend.NFT, 4) == "iptables-nft"


def test_agent_refuses_an_unknown_backend() -> None:
    result = subprocess.run([sys.executable, "-m", "sluice", "agent", "--iptables-backend",
                             "ebtables", "--node", "x"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and "--iptables-backend" in result.stderr
