"""`lab restart-agent`: stop one node's agent and start it again, as an operator (or a
crash) would.

SIGTERM lets the agent stop cleanly; `--kill` sends SIGKILL, so nothing of it runs after
the signal. Either way the datapath stays as it was (pinned programs, maps and links, or
iptables rules) and the new agent adopts it and reconciles by diff. The new process is
recorded in the lab state before the command waits for its /healthz.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from sluice.lab import agents, procs
from sluice.lab.errors import LabError
from sluice.lab.interrupts import held_back
from sluice.lab.state import ProcessRecord, load_ready, locked, save

Say = Callable[[str], None]
KILL_WAIT = 5.0
POLL = 0.02


def restart_agent(lab: str, node_name: str, *, kill: bool, say: Say) -> ProcessRecord:
    """Restart NODE_NAME's agent in LAB (SIGKILL if KILL, else SIGTERM); returns the new
    agent's record once it answers /healthz with 200."""
    with locked(lab):
        state = load_ready(lab)
        node = state.plan.node(node_name)
        old = state.agents.get(node_name)
        began = time.monotonic()
        with held_back():  # a Ctrl-C now would leave an agent nobody recorded
            if old is not None:
                _stop(old, kill=kill)
            state.agents.pop(node_name, None)
            save(state)
            record = agents.start_agent(state, node)
            state.agents[node_name] = record
            save(state)
        how = "killed" if kill else "stopped"
        was = f"pid {old.pid} {how}" if old is not None else "no agent was running"
        say(f"lab {lab}: {node_name}: {was}; agent pid {record.pid} started")
    agents.wait_ready([(node, record)], lambda _node, _seconds: None)
    say(f"lab {lab}: {node_name}: agent ready after {time.monotonic() - began:.2f}s")
    return record


def _stop(record: ProcessRecord, *, kill: bool) -> None:
    if not kill:
        if procs.stop([record]):
            raise LabError(f"the agent pid {record.pid} would not stop")
        return
    procs.signal_process(record, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    while not procs.exited(record):
        if time.monotonic() > deadline:
            raise LabError(f"the agent pid {record.pid} did not die of SIGKILL within "
                           f"{KILL_WAIT:.0f}s")
        time.sleep(POLL)
