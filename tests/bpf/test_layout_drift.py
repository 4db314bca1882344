"""A C struct change not mirrored in Python must fail loudly, never corrupt a map.

Each case rebuilds the real prefilter (or node) source with one edit to a header, using the
project's Makefile, then opens the result with the unchanged Python layouts.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sluice.datapath import conntrack as ct
from sluice.datapath import endpoints as ep
from sluice.datapath import events as ev
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.datapath.prefilter import MAP_NAME, PrefilterEntry, PrefilterKey
from sluice.loader import BpfObject, LayoutMismatchError
from sluice.loader.btf import BtfKind
from sluice.loader.layout import verify_layout

pytestmark = pytest.mark.root

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

ENTRY = """struct prefilter_entry {
	__u32 action;  /* enum prefilter_action */
	__u32 rule_id; /* the control plane's name for the entry, echoed in dumps */
	__u64 packets;
	__u64 bytes;
};"""

DRIFTS = {
    "field added": (ENTRY, ENTRY.replace("__u64 bytes;", "__u64 bytes;\n\t__u64 drops;"),
                    "size is 32 bytes in C, 24 in Python"),
    "same size, fields swapped": (
        ENTRY, ENTRY.replace("__u32 action;  /* enum prefilter_action */\n\t__u32 rule_id;",
                             "__u32 rule_id;\n\t__u32 action;"),
        "members are ['rule_id', 'action', 'packets', 'bytes'] in C"),
    "same size, field renamed": (ENTRY, ENTRY.replace("__u32 rule_id;", "__u32 policy_id;"),
                                 "'policy_id'"),
    "key widened": ("__u32 prefixlen; /* over addr", "__u64 prefixlen; /* over addr",
                    "prefixlen"),
}


# Every map of node.c that Python writes, with the layouts it writes it through.
NODE_LAYOUTS: dict[str, tuple[type[Any], type[Any]]] = {
    ct.MAP_NAME: (ct.CtKey, ct.CtEntry),
    lb.SERVICES_MAP: (lb.LbKey, lb.LbValue),
    lb.BACKENDS_MAP: (lb.BackendId, lb.LbBackend),
    lb.MAGLEV_MAP: (lb.LbMaglevKey, lb.MaglevSlot),
    lb.SOURCE_RANGES_MAP: (lb.LbSourceKey, lb.SourceAllowed),
    ep.MAP_NAME: (ep.EndpointKey, ep.EndpointInfo),
    rt.MAP_NAME: (rt.RouteKey, rt.RouteEntry),
    pol.IPCACHE_MAP: (pol.IpcacheKey, pol.IpcacheEntry),
    pol.POLICY_MAP: (pol.PolicyKey, pol.PolicyVerdict),
    pol.STATES_MAP: (pol.StateIndex, pol.PolicyState),
    pol.FAILSAFE_MAP: (pol.FailsafeKey, pol.FailsafeValue),
    pol.HOST_INTERFACES_MAP: (pol.HostInterfaceKey, pol.HostInterfaceValue),
    pol.COUNTERS_MAP: (pol.StateIndex, pol.PolicyCounter),
    pol.FLOWS_MAP: (ct.CtKey, pol.PolicyFlow),
}

# The policy maps the prefilter shares with node.c (same names and definitions).
PREFILTER_POLICY_LAYOUTS = {name: NODE_LAYOUTS[name] for name in (
    pol.IPCACHE_MAP, pol.POLICY_MAP, pol.STATES_MAP, pol.FAILSAFE_MAP,
    pol.HOST_INTERFACES_MAP, pol.COUNTERS_MAP)}

CT_ENTRY_FLAGS = "__u8 kind;  /* enum ct_kind */\n\t__u8 flags; /* enum ct_flags */"
POLICY_VERDICT_RANK = "__u32 rank;    /* lower wins; every Kubernetes allow shares one rank */"


def build_variant(tmp_path: Path, old: str, new: str, obj: str = "prefilter") -> Path:
    src = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, src, ignore=shutil.ignore_patterns("build"))
    for header in (src / "include" / "prefilter.h", src / "include" / "common.h",
                   src / "include" / "conntrack.h", src / "include" / "policy.h"):
        text = header.read_text()
        if old in text:
            header.write_text(text.replace(old, new))
            break
    else:
        pytest.fail("the drift case no longer matches the headers: update the test")
    out = tmp_path / "obj"
    subprocess.run(["make", "-s", "-C", str(src), f"OUT={out}", f"BUILD={BPF_DIR / 'build'}"],
                   check=True, capture_output=True)
    return out / f"{obj}.bpf.o"


def test_unchanged_source_matches(tmp_path: Path) -> None:
    obj_path = build_variant(tmp_path, "__u64 bytes;", "__u64 bytes;")
    with BpfObject(obj_path) as obj:
        obj.verify_map_layout(MAP_NAME, PrefilterKey, PrefilterEntry)


@pytest.mark.parametrize("case", DRIFTS, ids=list(DRIFTS))
def test_drift_is_refused_before_any_map_access(tmp_path: Path, case: str) -> None:
    old, new, expected = DRIFTS[case]
    obj_path = build_variant(tmp_path, old, new)
    with BpfObject(obj_path) as obj:
        with pytest.raises(LayoutMismatchError) as raised:
            obj.verify_map_layout(MAP_NAME, PrefilterKey, PrefilterEntry)
        assert expected in str(raised.value)
        obj.load()
        with pytest.raises(LayoutMismatchError):
            obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)


@pytest.mark.parametrize("name", NODE_LAYOUTS)
def test_node_layouts_match_the_built_object(name: str) -> None:
    with BpfObject.open("node") as obj:
        obj.verify_map_layout(name, *NODE_LAYOUTS[name])


@pytest.mark.parametrize("name", PREFILTER_POLICY_LAYOUTS)
def test_prefilter_policy_layouts_match_the_built_object(name: str) -> None:
    with BpfObject.open("prefilter") as obj:
        obj.verify_map_layout(name, *PREFILTER_POLICY_LAYOUTS[name])


def test_policy_event_layout_matches_the_built_object() -> None:
    """The ring buffer has no key or value type: the record's struct is checked by name."""
    with BpfObject.open("node") as obj:
        verify_layout(obj.btf, obj.btf.find("policy_event", BtfKind.STRUCT), pol.PolicyEvent,
                      "policy_events record")


def test_policy_verdict_drift_is_refused(tmp_path: Path) -> None:
    obj_path = build_variant(tmp_path, POLICY_VERDICT_RANK,
                             "__u16 rank;\n\t__u16 weight;", obj="node")
    with BpfObject(obj_path) as obj:
        with pytest.raises(LayoutMismatchError) as raised:
            obj.verify_map_layout(pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
        assert "'rank', 'weight', 'action'" in str(raised.value)


def test_conntrack_drift_is_refused(tmp_path: Path) -> None:
    obj_path = build_variant(tmp_path, CT_ENTRY_FLAGS,
                             "__u8 flags;\n\t__u8 kind;", obj="node")
    with BpfObject(obj_path) as obj:
        with pytest.raises(LayoutMismatchError) as raised:
            obj.verify_map_layout(ct.MAP_NAME, ct.CtKey, ct.CtEntry)
        assert "'nat_port', 'flags', 'kind'" in str(raised.value)
        obj.load()
        with pytest.raises(LayoutMismatchError):
            obj.map(ct.MAP_NAME, ct.CtKey, ct.CtEntry)


@pytest.mark.parametrize("obj_name", ["node", "sock", "prefilter"])
def test_flow_event_layouts_match_every_object_that_sends_them(obj_name: str) -> None:
    """Every object writes the same ring buffer from the same header: its configuration and
    counters must be the layouts the agent writes and reads (the record: below)."""
    with BpfObject.open(obj_name) as obj:
        obj.verify_map_layout(ev.CONFIG_MAP, ctypes.c_uint32, ev.EventsConfig)
        obj.verify_map_layout(ev.COUNTERS_MAP, ctypes.c_uint32, ev.DatapathCounter)


def test_flow_event_record_layout_matches_the_built_object() -> None:
    with BpfObject.open("node") as obj:
        verify_layout(obj.btf, obj.btf.find("sl_flow_event", BtfKind.STRUCT), ev.FlowEvent,
                      "flow_events record")
