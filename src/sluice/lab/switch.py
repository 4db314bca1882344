"""`lab switch`: restart one node's agent with the other dataplane.

The agent is stopped with SIGTERM (its PID and start time from the lab state), which
leaves the datapath as it is: pinned programs and maps, or iptables rules. The new agent
takes over in order (see agent/reconcile.py: it carries conntrack state across before it
removes what the old dataplane installed). The node's dataplane is recorded in the lab
state's options (`node_dataplanes`), so `lab status`, `lab get` and later restarts see it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sluice.datastore import open_datastore
from sluice.lab import agents, objects, procs
from sluice.lab.errors import LabError
from sluice.lab.interrupts import held_back
from sluice.lab.plan import Dataplane
from sluice.lab.state import LabState, load_ready, locked, save

Say = Callable[[str], None]


def switch(lab: str, node_name: str, dataplane: Dataplane, say: Say) -> LabState:
    """Run NODE_NAME of LAB on DATAPLANE; returns the saved state once its agent is ready."""
    with locked(lab):
        state = load_ready(lab)
        node = state.plan.node(node_name)
        was = state.options.dataplane_of(node_name)
        if was == dataplane:
            raise LabError(f"{node_name} already runs the {dataplane} dataplane")
        began = time.monotonic()
        record = state.agents.get(node_name)
        with held_back():  # a Ctrl-C now would leave an agent nobody recorded
            if record is not None and procs.stop([record]):
                raise LabError(f"the agent of {node_name} (pid {record.pid}) would not stop")
            state.options = state.options.with_node_dataplane(node_name, dataplane)
            state.agents.pop(node_name, None)
            save(state)
            with open_datastore(state.paths.datastore_url) as datastore:
                datastore.apply([objects.node_resource(node, dataplane)])
            record = agents.start_agent(state, node)
            state.agents[node_name] = record
            save(state)
        say(f"lab {lab}: {node_name}: agent pid {record.pid} started ({was} -> {dataplane})")
        agents.wait_ready([(node, record)], lambda _node, _seconds: None)
        say(f"lab {lab}: {node_name}: {dataplane} dataplane ready after "
            f"{time.monotonic() - began:.1f}s")
        return state
