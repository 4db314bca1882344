"""The netfilter monitor and blocker on a live bpf lab node.

node1's agent is restarted with the --netfilter-* flags (as `sluice lab up` would start it
with them): the monitor reports a rule added in the node's namespace and its removal; the
blocker refuses `iptables -A` (iptables-nft) and iptables-legacy there, lets the same
commands through in a pod's namespace and in another namespace whose process is in the
node's cgroup, counts what it refused, and is gone once the agent runs without the flag.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import cgroups, netns
from sluice.agent.nfblocker import blocker_dir
from sluice.datapath import nfguard as nf
from sluice.lab import agents, procs
from sluice.lab.plan import NodePlan
from sluice.lab.state import load, locked, save
from sluice.loader import Map
from tests.conftest import unique
from tests.lab.labfixture import Lab, ok, pod, running_lab, write_manifest

pytestmark = pytest.mark.root

NODE = "node1"
RULE = ("-s", "198.18.99.1/32", "-j", "DROP")
DESCRIBED = "iptables-nft ipv4 table filter: -A INPUT -s 198.18.99.1/32 -j DROP"
WAIT = 15.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifest = write_manifest(tmp_path_factory.mktemp("nfguard") / "pods.yaml",
                              [pod("p1", node=NODE)])
    with running_lab("nfg") as running:
        running.up("--dataplane", "bpf", "--nodes", "1", "--ip-family", "ipv4",
                   files=[manifest])
        yield running


def node_plan(lab: Lab) -> NodePlan:
    return next(n for n in lab.state().plan.nodes if n.name == NODE)


def restart_agent(lab: Lab, *flags: str) -> Path:
    """node1's agent, stopped and started again with FLAGS; returns its log."""
    with locked(lab.name):
        state = load(lab.name)
        node = next(n for n in state.plan.nodes if n.name == NODE)
        assert procs.stop([state.agents[NODE]]) == []
        record = procs.spawn([*agents.agent_argv(state, node), *flags], role=f"agent {NODE}",
                             log=state.paths.agent_log(NODE),
                             cgroup_path=cgroups.create(node.cgroup))
        state.agents[NODE] = record
        save(state)
    agents.wait_ready([(node, record)], lambda _node, _seconds: None)
    return Path(record.log)


def wait_for_line(log: Path, text: str, after: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace")[after:]:
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[after:][-3000:]
    raise AssertionError(f"{log} has no line with {text!r} after {WAIT}s:\n{tail}")


def exec_in(lab: Lab, place: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return lab.run("exec", place, "--", *argv)


def node_rules(lab: Lab) -> str:
    """iptables-nft-save of node1, read from this test's cgroup (not the node's)."""
    return lab.nsexec(node_plan(lab).netns, "iptables-nft-save").stdout


def refused(lab: Lab) -> dict[nf.Operation, int]:
    path = os.path.join(blocker_dir(node_plan(lab).pin_dir), nf.COUNTS_MAP)
    counts = Map.from_pin(path, ctypes.c_uint32, nf.NfguardCounter)
    try:
        return {op: sum(c.refused for c in counts.lookup_percpu(ctypes.c_uint32(op)) or [])
                for op in nf.Operation}
    finally:
        counts.close()


def test_monitor_reports_a_foreign_rule_and_its_removal(lab: Lab) -> None:
    log = restart_agent(lab, "--netfilter-monitor", "--netfilter-monitor-interval", "0.5")
    mark = len(log.read_text(errors="replace"))
    ok(exec_in(lab, f"node/{NODE}", "iptables", "-A", "INPUT", *RULE))
    wait_for_line(log, f"foreign netfilter rule appeared: {DESCRIBED}", mark)
    assert metric(lab, 'sluice_netfilter_foreign_rules{family="ipv4",backend="iptables-nft"}') == 1
    ok(exec_in(lab, f"node/{NODE}", "iptables", "-D", "INPUT", *RULE))
    wait_for_line(log, f"foreign netfilter rule gone: {DESCRIBED}", mark)
    assert metric(lab, 'sluice_netfilter_foreign_rules{family="ipv4",backend="iptables-nft"}') == 0


def metric(lab: Lab, series: str) -> float:
    """One series of the node agent's /metrics (it must be there)."""
    answer = agents.http_get(node_plan(lab), "/metrics")
    assert answer is not None and answer[0] == 200
    lines = [line for line in answer[1].decode().splitlines() if line.startswith(series + " ")]
    assert lines, f"{series} not in /metrics"
    return float(lines[0].rsplit(" ", 1)[1])


def test_blocker_refuses_in_the_node_and_allows_elsewhere(lab: Lab) -> None:
    log = restart_agent(lab, "--netfilter-monitor", "--netfilter-monitor-interval", "0.5",
                        "--netfilter-blocker")
    mark = len(log.read_text(errors="replace"))
    before = refused(lab)
    # The node's namespace, from the node's cgroup: iptables-nft is killed at its netlink
    # socket, iptables-legacy's table write fails with EPERM.
    assert exec_in(lab, f"node/{NODE}", "iptables", "-A", "INPUT", *RULE).returncode != 0
    legacy = exec_in(lab, f"node/{NODE}", "iptables-legacy", "-A", "INPUT", *RULE)
    assert legacy.returncode != 0 and "not permitted" in legacy.stderr, legacy
    assert "198.18.99.1" not in node_rules(lab)
    after = refused(lab)
    assert after[nf.Operation.NETLINK_SOCKET] == before[nf.Operation.NETLINK_SOCKET] + 1
    assert after[nf.Operation.SETSOCKOPT] == before[nf.Operation.SETSOCKOPT] + 1
    assert metric(lab, 'sluice_netfilter_blocked_total{operation="setsockopt"}') >= 1
    wait_for_line(log, "netfilter blocker: refused a netfilter netlink socket", mark)
    wait_for_line(log, "netfilter blocker: refused setsockopt IPT_SO_SET_REPLACE", mark)

    # A pod's namespace: its process is in the node's cgroup too.
    ok(exec_in(lab, "default/p1", "iptables", "-A", "INPUT", *RULE))
    ok(exec_in(lab, "default/p1", "iptables-legacy", "-A", "INPUT", *RULE))
    # Another namespace, a process of the node's host cgroup.
    other = unique("sl-tnfl")
    netns.create(other)
    try:
        host_cgroup = os.path.join(cgroups.create(node_plan(lab).cgroup), "host")
        done = subprocess.run(
            procs.in_cgroup(host_cgroup, ["nsenter", f"--net={netns.netns_path(other)}", "--",
                                          "iptables", "-A", "INPUT", *RULE]),
            capture_output=True, text=True, timeout=20, check=False)
        assert done.returncode == 0, done
    finally:
        netns.remove(other)
    assert refused(lab) == after

    # The agent's own reads pass the blocker: a rule added from outside the node's cgroup
    # is still seen.
    lab.nsexec(node_plan(lab).netns, "iptables", "-A", "INPUT", *RULE)
    wait_for_line(log, f"foreign netfilter rule appeared: {DESCRIBED}", mark)
    lab.nsexec(node_plan(lab).netns, "iptables", "-D", "INPUT", *RULE)


def test_blocker_is_removed_when_the_flag_is_off(lab: Lab) -> None:
    restart_agent(lab, "--netfilter-blocker")
    assert os.path.isdir(blocker_dir(node_plan(lab).pin_dir))
    restart_agent(lab)
    assert not os.path.exists(blocker_dir(node_plan(lab).pin_dir))
    ok(exec_in(lab, f"node/{NODE}", "iptables", "-A", "INPUT", *RULE))
    ok(exec_in(lab, f"node/{NODE}", "iptables", "-D", "INPUT", *RULE))
