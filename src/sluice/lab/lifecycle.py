"""`lab up`: make a lab step by step, saying what it does; undo everything on failure.

Order: claim the name (an exclusive mkdir of the state directory) -> underlay -> nodes
-> external -> etcd (with --datastore etcd) -> Node objects in the datastore -> agents
(started together, waited for together) -> the manifests given with -f. An exception,
Ctrl-C, SIGTERM or SIGHUP at any point removes whatever was made (`cleanup.remove_lab`)
before the command exits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from sluice import bpffs, cgroups
from sluice.datastore import open_datastore
from sluice.lab import agents, cleanup, etcd, names, objects, topology
from sluice.lab.errors import LabError
from sluice.lab.interrupts import Interrupts, held_back, ignoring_interrupts
from sluice.lab.manifests import apply_resources, check_for_lab
from sluice.lab.plan import LabOptions, LabPlan, plan_lab
from sluice.lab.state import LabPaths, LabState, locked, new_state, save
from sluice.model import Resource

Say = Callable[[str], None]


def claim(lab: str) -> None:
    """Make the lab's state directory, refusing a lab that exists or left anything."""
    found = cleanup.leftovers(lab)
    if names.state_dir(lab).exists():
        raise LabError(f"lab {lab!r} already exists; remove it first with: "
                       f"sluice lab down --name {lab}")
    if found:
        raise LabError(f"lab {lab!r} left things behind ({', '.join(found)}); remove them "
                       f"with: sluice lab down --name {lab}")
    names.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(names.state_dir(lab), 0o755)
    except FileExistsError:
        raise LabError(f"lab {lab!r} is being created by another command") from None


def up(lab: str, options: LabOptions, resources: Sequence[Resource], say: Say) -> LabState:
    """Create lab LAB; on any failure or interruption remove what was made and re-raise."""
    plan = plan_lab(lab, options)
    check_for_lab(plan, resources)
    began = time.monotonic()
    state = new_state(lab, options)
    interrupts = Interrupts()

    def step(line: str) -> None:
        say(line)
        interrupts.check()

    claimed = False
    try:
        with interrupts.raising():
            claim(lab)
            claimed = True
            with locked(lab):
                save(state)
                _build(state, plan, resources, step)
                interrupts.check()
    except BaseException as err:
        if not claimed:
            raise
        reason = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        with ignoring_interrupts():
            say(f"lab {lab}: {reason}; removing what was made")
            cleanup.remove_lab(lab, say)
        raise
    say(f"lab {lab}: up in {time.monotonic() - began:.1f}s")
    return state


def _build(state: LabState, plan: LabPlan, resources: Sequence[Resource], say: Say) -> None:
    lab, paths = state.name, state.paths
    bpffs.ensure_bpffs()
    cgroups.ensure_cgroup2()
    topology.create_underlay(plan)
    say(f"lab {lab}: underlay {plan.underlay_netns} (bridge {topology.BRIDGE})")
    for node in plan.nodes:
        topology.create_node(plan, node)
        say(f"lab {lab}: {node.name}: namespace {node.netns}, {' '.join(node.addresses)}, "
            f"pods {' '.join(node.pod_cidrs)}")
    topology.create_external(plan, plan.external)
    say(f"lab {lab}: external: namespace {plan.external.netns}, "
        f"{' '.join(plan.external.addresses)}")
    _prepare_directories(paths, plan)
    if state.options.datastore == "etcd":
        _start_etcd(state, say)
    with open_datastore(paths.datastore_url) as datastore:
        datastore.apply([objects.node_resource(node, state.options.dataplane_of(node.name))
                         for node in plan.nodes])
    say(f"lab {lab}: datastore {paths.agent_datastore_url} ({len(plan.nodes)} Nodes)")
    started = []
    for node in plan.nodes:
        with held_back():  # a Ctrl-C now would leave an agent nobody recorded
            record = agents.start_agent(state, node)
            state.agents[node.name] = record
            save(state)
        started.append((node, record))
    options = state.options
    dataplanes = ", ".join(f"{node.name} {options.dataplane_of(node.name)}"
                           for node in plan.nodes)
    say(f"lab {lab}: agents started ({dataplanes}; {options.routing} routing); waiting for "
        f"/healthz")
    agents.wait_ready(started, lambda node, seconds: say(
        f"lab {lab}: {node.name}: agent pid {state.agents[node.name].pid} ready "
        f"after {seconds:.1f}s"))
    state.phase = "ready"
    save(state)
    if resources:
        apply_resources(state, resources, lambda line: say(f"lab {lab}: {line}"))


def _start_etcd(state: LabState, say: Say) -> None:
    with held_back():  # a Ctrl-C now would leave an etcd nobody recorded
        state.etcd = etcd.start_etcd(state)
        save(state)
    seconds = etcd.wait_ready(state, state.etcd)
    say(f"lab {state.name}: etcd pid {state.etcd.pid} in {names.underlay_netns(state.name)}, "
        f"ready after {seconds:.1f}s")


def _prepare_directories(paths: LabPaths, plan: LabPlan) -> None:
    paths.datastore.mkdir(parents=True, exist_ok=True)
    for node in plan.nodes:
        paths.cni_state_dir(node.name).mkdir(parents=True, exist_ok=True)
        os.makedirs(node.pin_dir, exist_ok=True)
