"""Each node's `sluice agent`: the command line the lab starts it with, and readiness.

The agent is started detached, in the node's cgroup, with its output in
nodes/<node>/agent.log. It enters the node's namespace itself (--netns) and is ready
when GET /healthz on its --listen address, inside that namespace, answers 200. A pod is
ready once, besides its server, its node's agent lists the pod's endpoint in GET /state
(`endpoints[].key`, `<containerID>-<ifname>`), i.e. the pod is wired into the dataplane.
"""

from __future__ import annotations

import json
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
PROGRAM_TIMEOUT = 15.0
MAX_RESPONSE = 4 << 20
POLL = 0.1


def agent_argv(state: LabState, node: NodePlan) -> list[str]:
    paths, options = state.paths, state.options
    return [
        sys.executable, "-m", "sluice", "agent",
        "--node", node.name,
        "--datastore", paths.agent_datastore_url,
        "--dataplane", options.dataplane_of(node.name),
        "--routing", options.routing,
        "--masquerade", "on" if options.masquerade else "off",
        *(("--non-masquerade-cidrs", options.non_masquerade_cidrs)
          if options.non_masquerade_cidrs else ()),
        "--iptables-backend", options.iptables_backend,
        "--netns", node.netns,
        "--cni-state-dir", str(paths.cni_state_dir(node.name)),
        "--pin-dir", node.pin_dir,
        "--listen", AGENT_LISTEN,
        "--uplink", UPLINK,
        # The node's cgroup holds the agent, its pods and its host probes: their sockets
        # get connect-time load balancing.
        "--cgroup", cgroups.create(node.cgroup),
    ]


def start_agent(state: LabState, node: NodePlan) -> ProcessRecord:
    cgroup_path = cgroups.create(node.cgroup)
    return procs.spawn(agent_argv(state, node), role=f"agent {node.name}",
                       log=state.paths.agent_log(node.name), cgroup_path=cgroup_path)


def http_get(node: NodePlan, path: str, timeout: float = HEALTHZ_TIMEOUT
             ) -> tuple[int, bytes] | None:
    """(status, body) of GET PATH from the node's agent, inside its namespace; None if
    it does not answer."""
    host, _, port = AGENT_LISTEN.rpartition(":")
    with netns.entered(node.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, int(port)))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {AGENT_LISTEN}\r\n"
                         "Connection: close\r\n\r\n".encode())
            reply = b""
            while len(reply) < MAX_RESPONSE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            return None
    head, _, body = reply.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n", 1)[0].split()
    if len(fields) >= 2 and fields[0].startswith(b"HTTP/") and fields[1].isdigit():
        return int(fields[1]), body
    return None


def healthz(node: NodePlan, timeout: float = HEALTHZ_TIMEOUT) -> int | None:
    """The HTTP status of the agent's /healthz, None if it does not answer."""
    answer = http_get(node, "/healthz", timeout)
    return None if answer is None else answer[0]


def programmed_endpoints(node: NodePlan) -> set[str] | None:
    """The endpoint keys (`<containerID>-<ifname>`) the agent's last successful reconcile
    covered, from its /state; None when it cannot tell."""
    answer = http_get(node, "/state")
    if answer is None or answer[0] != 200:
        return None
    try:
        doc = json.loads(answer[1])
        return {str(endpoint["key"]) for endpoint in doc["endpoints"]}
    except (ValueError, KeyError, TypeError):
        return None


def wait_programmed(node: NodePlan, key: str, record: ProcessRecord | None,
                    timeout: float = PROGRAM_TIMEOUT) -> None:
    """Wait until NODE's agent has programmed endpoint KEY. An agent whose /state does
    not list endpoints is not waited for; one that does not get there is an error."""
    deadline = time.monotonic() + timeout
    while True:
        programmed = programmed_endpoints(node)
        if programmed is None or key in programmed:
            return
        if time.monotonic() > deadline:
            log = record.log if record else "the agent log"
            tail = procs.log_tail(record.log) if record else ""
            raise LabError(f"the agent of {node.name} did not program endpoint {key} within "
                           f"{timeout:.0f}s (GET /state); the end of {log}:\n{tail}")
        time.sleep(POLL)


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
