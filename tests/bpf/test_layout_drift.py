"""A C struct change not mirrored in Python must fail loudly, never corrupt a map.

Each case rebuilds the real prefilter source with one edit to its header, using the
project's Makefile, then opens the result with the unchanged Python layouts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sluice.datapath.prefilter import MAP_NAME, PrefilterEntry, PrefilterKey
from sluice.loader import BpfObject, LayoutMismatchError

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


def build_variant(tmp_path: Path, old: str, new: str) -> Path:
    src = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, src, ignore=shutil.ignore_patterns("build"))
    for header in (src / "include" / "prefilter.h", src / "include" / "common.h"):
        text = header.read_text()
        if old in text:
            header.write_text(text.replace(old, new))
            break
    else:
        pytest.fail("the drift case no longer matches the headers: update the test")
    out = tmp_path / "obj"
    subprocess.run(["make", "-s", "-C", str(src), f"OUT={out}", f"BUILD={BPF_DIR / 'build'}"],
                   check=True, capture_output=True)
    return out / "prefilter.bpf.o"


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
