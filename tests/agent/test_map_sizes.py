"""--map-size: parsed and checked with errors naming the map, refused by the agent before
it changes anything, and applied to a real map before load."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sluice.apply.mapsizes import RESIZABLE, parse_map_sizes
from sluice.datapath import lb
from sluice.loader import Map
from sluice.loader.objects import BpfObject


def test_sizes_are_parsed() -> None:
    assert parse_map_sizes("") == {}
    assert parse_map_sizes("lb_services=524288, conntrack=1000") == {
        "lb_services": 524288, "conntrack": 1000}
    assert parse_map_sizes("flow_events=2097152") == {"flow_events": 2097152}


@pytest.mark.parametrize(("text", "message"), [
    ("lb_servces=10", "no resizable map 'lb_servces'"),
    ("events_config=4", "no resizable map 'events_config'"),
    ("lb_services=0", "lb_services=0: must be a positive number"),
    ("lb_services=-5", "expected NAME=ENTRIES"),
    ("lb_services", "expected NAME=ENTRIES"),
    ("lb_services=1k", "expected NAME=ENTRIES"),
    ("flow_events=5000", "power of two"),
    ("flow_events=1024", "power of two"),
    ("routes=1,routes=2", "given twice"),
])
def test_bad_sizes_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_map_sizes(text)
    assert "--map-size" in str(caught.value)


def test_every_resizable_map_exists_in_the_datapath() -> None:
    names: set[str] = set()
    for obj_name in ("node", "sock", "prefilter"):
        with BpfObject.open(obj_name) as obj:
            names.update(obj.map_names())
    assert set(RESIZABLE) <= names


@pytest.mark.parametrize(("value", "message"), [
    ("lb_nope=5", "no resizable map 'lb_nope'"),
    ("lb_maglev=1000", "holds not one Maglev table"),
])
def test_the_agent_refuses_a_bad_size_at_once(value: str, message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sluice", "agent", "--node", "n1",
                           "--datastore", "file:///nonexistent", "--map-size", value],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.root
def test_a_size_reaches_the_kernel(pin_dir: str) -> None:
    with BpfObject.open("sock", pin_dir=pin_dir) as obj:
        assert obj.resize_maps({"lb_services": 4096, "conntrack": 7}) == ["lb_services"]
        obj.load()
        services = obj.map(lb.SERVICES_MAP, lb.LbKey, lb.LbValue)
        assert services.meta.max_entries == 4096
    pinned = Map.from_pin(f"{pin_dir}/{lb.SERVICES_MAP}", lb.LbKey, lb.LbValue)
    try:
        assert pinned.meta.max_entries == 4096
    finally:
        pinned.close()
