"""The netfilter blocker (bpf/nfguard.c) and monitor against the real tools.

The blocker guards one fresh namespace for the processes of one fresh child cgroup.
Commands run as children that join the cgroup and enter a namespace (nsenter --net):
real iptables-legacy, iptables-nft and nft. Reads that check the outcome run from this
process's own cgroup, which the blocker leaves alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from sluice import cgroups, netns
from sluice.agent.config import AgentConfig
from sluice.agent.nfblocker import (
    Blocker,
    blocker_dir,
    current_netns_cookie,
    remove_blocker,
)
from sluice.agent.nfguard import NetfilterGuard
from sluice.agent.nfrules import ForeignRule, read_foreign_rules
from sluice.datapath import nfguard as nf
from sluice.lab import procs
from sluice.loader import BpfObject, RingBuffer
from sluice.loader.attach import attach_type
from sluice.loader.btf import BtfKind
from sluice.loader.layout import verify_layout
from sluice.loader.libbpf import lib
from tests.conftest import unique

pytestmark = pytest.mark.root

KILLED = -9
LAUNCHER = r"""
import socket, subprocess, sys
sys.stdin.readline()  # the test allowlists this process first
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12).close()  # itself
for argv in (["iptables-legacy", "-A", "INPUT", "-s", "198.18.99.2", "-j", "DROP"],  # a child
             ["sh", "-c", "iptables-nft -A INPUT -s 198.18.99.3 -j DROP"]):  # a grandchild
    print(subprocess.run(argv).returncode, flush=True)
"""


def netns_cookie(name: str) -> int:
    with netns.entered(name):
        return current_netns_cookie()


@dataclass
class Guarded:
    guarded: str  # the namespace the blocker guards
    other: str  # a namespace it does not
    cgroup: str
    pin_dir: str
    blocker: Blocker

    def run(self, ns: str, *argv: str, in_cgroup: bool = True
            ) -> subprocess.CompletedProcess[str]:
        command = ["nsenter", f"--net={netns.netns_path(ns)}", "--", *argv]
        return subprocess.run(procs.in_cgroup(self.cgroup if in_cgroup else None, command),
                              capture_output=True, text=True, timeout=20, check=False)

    def outside(self, ns: str, *argv: str) -> str:
        """A read from this process's cgroup: the blocker does not act on it."""
        done = self.run(ns, *argv, in_cgroup=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def refused(self, op: nf.Operation) -> int:
        return int(self.blocker.counters()[op].refused)

    def events(self) -> list[nf.NfguardEvent]:
        found: list[nf.NfguardEvent] = []
        with RingBuffer(self.blocker.events_fd,
                        lambda record: found.append(nf.NfguardEvent.parse(record))) as ring:
            ring.poll(100)
        return found


@pytest.fixture
def guarded(pin_dir: str) -> Iterator[Guarded]:
    with ExitStack() as cleanup:
        names = unique("sl-tnfg"), unique("sl-tnfo")
        for name in names:
            netns.create(name)
            cleanup.callback(netns.remove, name)
        cgroup = cgroups.create(unique("sluice-test-nfguard"))
        cleanup.callback(cgroups.remove_tree, cgroup)
        cleanup.callback(remove_blocker, pin_dir)
        blocker = Blocker.install(pin_dir, cgroup, {netns_cookie(names[0])}, set())
        cleanup.callback(blocker.close)
        yield Guarded(names[0], names[1], cgroup, pin_dir, blocker)


def test_event_layout_matches_the_object() -> None:
    with BpfObject.open(nf.OBJECT_NAME) as obj:
        verify_layout(obj.btf, obj.btf.find("nfguard_event", BtfKind.STRUCT), nf.NfguardEvent,
                      "nfguard_events record")


def test_legacy_table_writes_are_refused_in_the_guarded_namespace(guarded: Guarded) -> None:
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        done = guarded.run(guarded.guarded, tool, "-A", "INPUT", "-j", "DROP")
        assert done.returncode != 0 and "not permitted" in done.stderr, done
    assert guarded.refused(nf.Operation.SETSOCKOPT) == 2
    assert "-A INPUT" not in guarded.outside(guarded.guarded, "iptables-legacy-save")
    events = guarded.events()
    assert [(e.op, e.level, e.option, e.command) for e in events] == [
        (nf.Operation.SETSOCKOPT, nf.SOL_IP, 64, "iptables-legacy"),
        (nf.Operation.SETSOCKOPT, nf.SOL_IPV6, 64, "ip6tables-legac")]
    assert events[0].netns_cookie == netns_cookie(guarded.guarded)
    assert "IPT_SO_SET_REPLACE" in events[0].describe()


def test_netfilter_netlink_users_are_killed_in_the_guarded_namespace(guarded: Guarded) -> None:
    assert guarded.run(guarded.guarded, "iptables-nft", "-A", "INPUT", "-j", "DROP"
                       ).returncode == KILLED
    assert guarded.run(guarded.guarded, "nft", "add", "table", "inet", "foreign"
                       ).returncode == KILLED
    assert guarded.refused(nf.Operation.NETLINK_SOCKET) == 2
    assert guarded.outside(guarded.guarded, "nft", "list", "ruleset") == ""
    events = guarded.events()
    assert [(e.op, e.level, e.option) for e in events] == \
        [(nf.Operation.NETLINK_SOCKET, nf.AF_NETLINK, nf.NETLINK_NETFILTER)] * 2
    assert {e.command for e in events} == {"iptables-nft", "nft"}


def test_other_namespaces_and_other_cgroups_are_untouched(guarded: Guarded) -> None:
    # Same cgroup, another namespace.
    for argv in (("iptables-legacy", "-A", "INPUT", "-s", "198.18.99.1", "-j", "DROP"),
                 ("iptables-nft", "-A", "INPUT", "-s", "198.18.99.1", "-j", "DROP"),
                 ("nft", "add", "table", "inet", "foreign")):
        done = guarded.run(guarded.other, *argv)
        assert done.returncode == 0, done
    assert "198.18.99.1" in guarded.outside(guarded.other, "iptables-legacy-save")
    assert "198.18.99.1" in guarded.outside(guarded.other, "iptables-nft-save")
    # The guarded namespace, from outside the cgroup.
    assert guarded.run(guarded.guarded, "nft", "add", "table", "inet", "foreign",
                       in_cgroup=False).returncode == 0
    assert guarded.refused(nf.Operation.SETSOCKOPT) == 0
    assert guarded.refused(nf.Operation.NETLINK_SOCKET) == 0
    assert guarded.events() == []


def test_an_allowlisted_process_and_its_descendants_pass(guarded: Guarded) -> None:
    launcher = subprocess.Popen(
        procs.in_cgroup(guarded.cgroup, ["nsenter", f"--net={netns.netns_path(guarded.guarded)}",
                                         "--", sys.executable, "-c", LAUNCHER]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        guarded.blocker.set_allowlist({launcher.pid})  # sh and nsenter exec: the same process
        out, _ = launcher.communicate("go\n", timeout=20)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0 and out.split() == ["0", "0"], out
    counters = guarded.blocker.counters()
    assert counters[nf.Operation.SETSOCKOPT].allowed == 1
    assert counters[nf.Operation.NETLINK_SOCKET].allowed >= 2  # the launcher, iptables-nft
    assert counters[nf.Operation.SETSOCKOPT].refused == 0
    assert counters[nf.Operation.NETLINK_SOCKET].refused == 0
    assert "198.18.99.2" in guarded.outside(guarded.guarded, "iptables-legacy-save")
    assert "198.18.99.3" in guarded.outside(guarded.guarded, "iptables-nft-save")


def _setsockopt_programs(cgroup: str) -> int:
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        count, flags = ctypes.c_uint32(0), ctypes.c_uint32()
        ret = lib().bpf_prog_query(fd, attach_type("BPF_CGROUP_SETSOCKOPT"), 0,
                                   ctypes.byref(flags), None, ctypes.byref(count))
        assert ret == 0
        return count.value
    finally:
        os.close(fd)


def test_reinstall_adopts_the_pins_and_remove_detaches(guarded: Guarded) -> None:
    guarded.run(guarded.guarded, "iptables-legacy", "-A", "INPUT", "-j", "DROP")
    # An agent restart: the counters survive, the links are taken over, not doubled.
    again = Blocker.install(guarded.pin_dir, guarded.cgroup, {netns_cookie(guarded.guarded)},
                            set())
    try:
        assert again.counters()[nf.Operation.SETSOCKOPT].refused == 1
        assert _setsockopt_programs(guarded.cgroup) == 1
        assert guarded.run(guarded.guarded, "nft", "add", "table", "inet", "foreign"
                           ).returncode == KILLED
        assert again.counters()[nf.Operation.NETLINK_SOCKET].refused == 1  # once, not twice
    finally:
        again.close()
    removed = remove_blocker(guarded.pin_dir)
    assert (removed.links, removed.maps) == (2, 5)
    assert not os.path.exists(blocker_dir(guarded.pin_dir))
    assert _setsockopt_programs(guarded.cgroup) == 0
    for argv in (("iptables-legacy", "-A", "INPUT", "-j", "DROP"),
                 ("nft", "add", "table", "inet", "foreign")):
        done = guarded.run(guarded.guarded, *argv)
        assert done.returncode == 0, done


def test_the_blocker_refuses_the_cgroup_root(pin_dir: str) -> None:
    with pytest.raises(RuntimeError, match="cgroup root"):
        Blocker.install(pin_dir, cgroups.ensure_cgroup2(), {1}, set())
    assert not os.path.exists(os.path.join(blocker_dir(pin_dir), "cgroup-links",
                                           nf.SETSOCKOPT_PROGRAM))


@pytest.mark.parametrize(("flags", "message"), [
    (("--dataplane", "iptables", "--netfilter-monitor"), "need --dataplane bpf"),
    (("--netfilter-blocker",), "needs --cgroup DIR"),
    (("--netfilter-blocker", "--cgroup", cgroups.ensure_cgroup2()), "is a cgroup root"),
    (("--netfilter-monitor", "--netfilter-monitor-interval", "0"), "must be positive"),
])
def test_the_agent_refuses_bad_netfilter_options(flags: tuple[str, ...], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sluice", "agent", "--node", "n1",
                           "--datastore", "file:///nonexistent", *flags],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and message in done.stderr, done


# --- the monitor -----------------------------------------------------------------------


FOREIGN = [
    ("iptables-nft", "-A", "INPUT", "-s", "198.18.99.1/32", "-j", "DROP"),
    ("iptables-nft", "-A", "INPUT", "-s", "198.18.99.1/32", "-j", "DROP"),  # twice
    ("ip6tables-nft", "-P", "FORWARD", "DROP"),
    ("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"),
    ("nft", "add", "table", "inet", "foreign"),
    ("nft", "add", "chain", "inet", "foreign", "c"),
    ("nft", "add", "rule", "inet", "foreign", "c", "tcp", "dport", "22", "drop"),
]
SLUICE_OWN = [
    ("iptables-nft", "-N", "SLUICE-TEST"),
    ("iptables-nft", "-A", "SLUICE-TEST", "-j", "ACCEPT"),
    ("iptables-nft", "-A", "FORWARD", "-j", "SLUICE-TEST"),
    ("ip6tables-nft", "-L"),  # makes the empty filter table and its chains: not rules
]


@pytest.fixture
def plain_ns() -> Iterator[str]:
    name = unique("sl-tnfm")
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def _in(ns: str, *argv: str) -> None:
    done = subprocess.run(["nsenter", f"--net={netns.netns_path(ns)}", "--", *argv],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done


def test_the_monitor_reads_foreign_rules_and_skips_sluices_own(plain_ns: str) -> None:
    for argv in SLUICE_OWN:
        _in(plain_ns, *argv)
    with netns.entered(plain_ns):
        assert read_foreign_rules().rules == frozenset()
    for argv in FOREIGN:
        _in(plain_ns, *argv)
    with netns.entered(plain_ns):
        scan = read_foreign_rules()
    assert scan.problems == () and scan.failed == frozenset()
    rule = "-A INPUT -s 198.18.99.1/32 -j DROP"
    assert {r for r in scan.rules if r.backend != "nftables"} == {
        ForeignRule("iptables-nft", "ipv4", "filter", rule, 0),
        ForeignRule("iptables-nft", "ipv4", "filter", rule, 1),
        ForeignRule("iptables-nft", "ipv6", "filter", "-P FORWARD DROP"),
        ForeignRule("iptables-legacy", "ipv4", "nat", "-A POSTROUTING -j MASQUERADE"),
    }
    native = [r for r in scan.rules if r.backend == "nftables"]
    assert [(r.family, r.table) for r in native] == [("inet", "foreign")]
    assert native[0].text.startswith("chain c handle ") and '"drop"' in native[0].text


def test_the_guard_logs_rules_that_appear_and_go(plain_ns: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    config = AgentConfig(node="n1", datastore_url="file:///nonexistent",
                         netfilter_monitor=True)
    guard = NetfilterGuard(config, None)
    caplog.set_level(logging.INFO, logger="sluice.nfguard")
    with netns.entered(plain_ns):
        guard.scan()
        _in(plain_ns, "iptables-nft", "-A", "INPUT", "-s", "198.18.99.1/32", "-j", "DROP")
        guard.scan()
        guard.scan()  # still there: not reported again
        _in(plain_ns, "iptables-nft", "-D", "INPUT", "-s", "198.18.99.1/32", "-j", "DROP")
        guard.scan()
    lines = [r.getMessage() for r in caplog.records if r.name == "sluice.nfguard"]
    described = "iptables-nft ipv4 table filter: -A INPUT -s 198.18.99.1/32 -j DROP"
    assert lines == [f"foreign netfilter rule appeared: {described}",
                     f"foreign netfilter rule gone: {described}"]
    families = {name: samples for name, _, _, samples in guard.metric_families()}
    assert families["sluice_netfilter_foreign_rules_seen_total"] == [({}, 1)]
    assert ({"family": "ipv4", "backend": "iptables-nft"}, 0) in \
        families["sluice_netfilter_foreign_rules"]
