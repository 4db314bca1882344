"""Each node's `sluice agent`: the command line the lab starts it with, and readiness.

The agent is started detached, in the node's cgroup, with its output in
nodes/<node>/agent.log. It enters the node's namespace itself (--netns) and is ready
when GET /healthz on its --listen address, inside that namespace, answers 200.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence

from sluice import cgroups, netns
from sluice.lab import procs
from sluice.lab.errors import LabError
from sluice.lab.plan import AGENT_LISTEN, UPLINK, NodePlan
from sluice.lab.state import LabState, ProcessRecord

READY_TIMEOUT = 20.0
HEALTHZ_TIMEOUT = 1.0
POLL = 0.1


def agent_argv(state: LabState, node: NodePlan) -> list[str]:
    paths, options = state.paths, state.options
    return [
        sys.executable, "-m", "sluice", "agent",
        "--node", node.name,
        "--datastore", paths.datastore_url,
        "--dataplane", options.dataplane,
        "--routing", options.routing,
        "--netns", node.netns,
        "--cni-state-dir", str(paths.cni_state_dir(node.name)),
        "--pin-dir", node.pin_dir,
        "--listen", AGENT_LISTEN,
        "--uplink", UPLINK,
    ]


def start_agent(state: LabState, node: NodePlan) -> ProcessRecord:
    cgroup_path = cgroups.create(node.cgroup)
    return procs.spawn(agent_argv(state, node), role=f"agent {node.name}",
                       log=state.paths.agent_log(node.name), cgroup_path=cgroup_path)


def healthz(node: NodePlan, timeout: float = HEALTHZ_TIMEOUT) -> int | None:
    """The HTTP status of the agent's /healthz, None if it does not answer."""
    host, _, port = AGENT_LISTEN.rpartition(":")
    with netns.entered(node.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, int(port)))
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {AGENT_LISTEN}\r\n"
                         "Connection: close\r\n\r\n".encode())
            reply = b""
            while b"\r\n" not in reply and len(reply) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            return None
    fields = reply.split(b"\r\n", 1)[0].split()
    if len(fields) >= 2 and fields[0].startswith(b"HTTP/") and fields[1].isdigit():
        return int(fields[1])
    return None


def wait_ready(nodes: Sequence[tuple[NodePlan, ProcessRecord]],
               ready: Callable[[NodePlan, float], None],
               timeout: float = READY_TIMEOUT) -> None:
    """Wait until every agent answers /healthz with 200; READY(node, seconds) for each.

    Fails early, with the end of its log, when an agent exits; and after TIMEOUT.
    """
    began = time.monotonic()
    pending = list(nodes)
    while pending:
        for node, record in list(pending):
            if procs.exited(record):
                raise LabError(f"the agent of {node.name} exited before it was ready; "
                               f"the end of {record.log}:\n{procs.log_tail(record.log)}")
            if healthz(node) == 200:
                pending.remove((node, record))
                ready(node, time.monotonic() - began)
        if pending and time.monotonic() - began > timeout:
            node, record = pending[0]
            raise LabError(
                f"the agent of {node.name} did not answer GET http://{AGENT_LISTEN}/healthz "
                f"with 200 within {timeout:.0f}s; the end of {record.log}:\n"
                f"{procs.log_tail(record.log)}")
        if pending:
            time.sleep(POLL)
