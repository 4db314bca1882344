"""The pod server as the lab starts it: with interrupts held back (blocked) in the
starting command, it still stops at once on SIGTERM (a signal mask survives exec)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sluice import cgroups, netns
from sluice.lab import procs, servers
from sluice.lab.interrupts import held_back
from sluice.lab.state import PodRecord, PortSpec
from tests.conftest import unique

pytestmark = pytest.mark.root


def test_server_started_with_interrupts_held_back_stops_on_sigterm(tmp_path: Path) -> None:
    ns = unique("sl-tpsrv")
    cgroup = unique("sluice-test-podserver")
    netns.create(ns)
    record = PodRecord(namespace="t", name="srv", node="node1", host_network=False, netns=ns,
                       container_id=None, ips=[], ports=[PortSpec(8080, "TCP")],
                       cgroup=f"{cgroup}/srv", log=str(tmp_path / "srv.log"))
    starting: servers.StartingServer | None = None
    try:
        with held_back():
            starting = servers.spawn_server(record)
        starting.wait(record)
        with open(f"/proc/{starting.record.pid}/status", encoding="ascii") as status:
            blocked = next(line for line in status if line.startswith("SigBlk:"))
        assert int(blocked.split()[1], 16) & (1 << (signal.SIGTERM - 1)) == 0, blocked
        os.kill(starting.record.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while not procs.exited(starting.record) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert procs.exited(starting.record), "the server ignored SIGTERM"
    finally:
        if starting is not None:
            procs.stop([starting.record])
        root = cgroups.find_cgroup2_mount()
        if root is not None:
            cgroups.remove_tree(f"{root}/{cgroup}")
        netns.remove(ns)
