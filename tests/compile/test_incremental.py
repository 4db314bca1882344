"""Incremental compile (services, load balancer state, flow names) equals a compile from
scratch after every batch of random changes."""

from __future__ import annotations

import itertools
import random

import pytest

from sluice.agent import flownames
from sluice.compile import lbstate, services
from sluice.compile.lbstate import LbAlgorithm, LbOptions, LbState, lb_state
from sluice.compile.services import ServiceTable, service_table
from sluice.datastore import ClusterState
from tests.compile import scalescenario as scenario

OPTIONS = LbOptions(maglev_table_size=251)


def compile_fresh(state: ClusterState, options: LbOptions) -> tuple[ServiceTable, LbState]:
    services._remembered.clear()
    lbstate._last.clear()
    table = service_table(scenario.fresh(state), scenario.NODE)
    return table, lb_state(table, options)


def same_lb(got: LbState, want: LbState) -> None:
    assert dict(got.frontends) == dict(want.frontends)
    assert dict(got.maglev) == dict(want.maglev)
    assert got.problems == want.problems
    assert got.backends == want.backends
    assert got.source_ranges == want.source_ranges


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("options", [OPTIONS, LbOptions(LbAlgorithm.MAGLEV, 251)],
                         ids=["random", "maglev"])
def test_random_changes_compile_like_from_scratch(seed: int, options: LbOptions) -> None:
    rng = random.Random(seed)
    state = scenario.initial(rng)
    services._remembered.clear()
    lbstate._last.clear()
    table = service_table(state, scenario.NODE)
    lb_state(table, options)
    for step, batch in enumerate(itertools.islice(scenario.changes(rng, state), 60)):
        state = state.with_changes(batch)
        incremental = service_table(state, scenario.NODE)
        lbs = lb_state(incremental, options)
        assert state.changes_since(scenario.fresh(state)) is None  # no shared history
        remembered, last = dict(services._remembered), dict(lbstate._last)
        table, fresh_lbs = compile_fresh(state, options)
        services._remembered.clear()
        services._remembered.update(remembered)
        lbstate._last.clear()
        lbstate._last.update(last)
        assert incremental == table, f"seed {seed} step {step}: {batch}"
        assert incremental.problems == table.problems
        same_lb(lbs, fresh_lbs)


def test_only_changed_services_are_recompiled() -> None:
    rng = random.Random(7)
    state = scenario.initial(rng)
    services._remembered.clear()
    before = service_table(state, scenario.NODE)
    batch = next(b for b in scenario.changes(rng, state)
                 if all(c.key.kind == "EndpointSlice" for c in b))
    after = service_table(state.with_changes(batch), scenario.NODE)
    changed = after.changed_since(before)
    assert changed <= {(c.key.namespace, c.key.name.rsplit("-", 1)[0]) for c in batch}
    for key, plans in after.groups.items():
        if key not in changed:
            assert plans is before.groups[key], "an untouched Service was recompiled"


def test_history_is_bounded_and_unknown_history_means_everything() -> None:
    state = scenario.initial(random.Random(1))
    first = state
    for batch in itertools.islice(scenario.changes(random.Random(2), state), 600):
        state = state.with_changes(batch)
    assert state.changes_since(first) is None
    recent = state
    state = state.with_changes(next(scenario.changes(random.Random(3), state)))
    assert state.changes_since(recent)
    assert state.changes_since(state) == frozenset()


def test_flow_names_follow_changes() -> None:
    rng = random.Random(5)
    state = scenario.initial(rng)
    services._remembered.clear()
    flownames._last_frontends.clear()
    for batch in itertools.islice(scenario.changes(rng, state), 40):
        state = state.with_changes(batch)
        table = service_table(state, scenario.NODE)
        names = flownames._frontend_names(table)
        want = {flownames._frontend_key(p): p.service for p in table.plans}
        assert names == want
