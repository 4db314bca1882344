"""The kernel boundary: a typed binding over the system libbpf.

Nothing outside this package talks to libbpf or the bpf(2) syscall.
"""

from sluice.loader.attach import (
    ClsactFilter,
    Direction,
    Link,
    LinkState,
    XdpMode,
    attach_cgroup,
    attach_clsact,
    attach_tc,
    attach_tcx,
    attach_xdp,
    tcx_attach_type,
    tcx_program_ids,
)
from sluice.loader.layout import LayoutMismatchError
from sluice.loader.libbpf import LibbpfError
from sluice.loader.maps import Map, UpdateFlag
from sluice.loader.objects import BpfObject, Program, VerifierError
from sluice.loader.ringbuf import RingBuffer
from sluice.loader.testrun import TestRunResult, test_run

__all__ = [
    "BpfObject",
    "ClsactFilter",
    "Direction",
    "LayoutMismatchError",
    "LibbpfError",
    "Link",
    "LinkState",
    "Map",
    "Program",
    "RingBuffer",
    "TestRunResult",
    "UpdateFlag",
    "VerifierError",
    "XdpMode",
    "attach_cgroup",
    "attach_clsact",
    "attach_tc",
    "attach_tcx",
    "attach_xdp",
    "tcx_attach_type",
    "tcx_program_ids",
    "test_run",
]
