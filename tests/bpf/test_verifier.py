"""Every BPF object the build produces passes the kernel verifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.loader import BpfObject
from sluice.loader.objects import OBJECT_DIR

pytestmark = pytest.mark.root

OBJECTS = sorted(OBJECT_DIR.glob("*.bpf.o"))


def test_objects_were_built() -> None:
    names = {p.name for p in OBJECTS}
    assert {"prefilter.bpf.o", "probes.bpf.o"} <= names


@pytest.mark.parametrize("path", OBJECTS, ids=[p.stem for p in OBJECTS])
def test_object_passes_verifier(path: Path) -> None:
    with BpfObject(path) as obj:
        obj.load()
        programs = obj.programs()
        assert programs, f"{path.name} has no programs"
        for prog in programs:
            info = prog.info()
            assert info.id > 0
            assert info.xlated_prog_len > 0, f"{prog.name} was not translated"
