"""`lab exec`: run a command in a place of the lab, as a child of this command."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from sluice import cgroups, netns
from sluice.lab.errors import LabError
from sluice.lab.procs import in_cgroup
from sluice.lab.targets import Place


def run_in(place: Place, argv: Sequence[str]) -> int:
    """Run ARGV in PLACE's namespace (nsenter --net, never `ip netns exec`, which would
    remount /sys and hide bpffs) and cgroup, so `lab down` also ends whatever it leaves
    running. Returns its exit status (128+N when killed by signal N)."""
    if not argv:
        raise LabError("no command given: sluice lab exec TARGET -- COMMAND [ARG...]")
    if not netns.exists(place.netns):
        raise LabError(f"namespace {place.netns} of {place.label} does not exist")
    command = ["nsenter", f"--net={netns.netns_path(place.netns)}", "--", *argv]
    with subprocess.Popen(in_cgroup(cgroups.create(place.cgroup), command)) as child:
        while True:
            try:
                status = child.wait()
                break
            except KeyboardInterrupt:
                continue  # the child got the same Ctrl-C; its exit status tells
    return 128 - status if status < 0 else status
