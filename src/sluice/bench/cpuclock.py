"""CPU time as the kernel accounts it: the whole machine (softirq included) and processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MachineCpu:
    """Busy CPU seconds summed over every core since boot, from /proc/stat."""

    busy: float

    @classmethod
    def now(cls) -> MachineCpu:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
        # user nice system idle iowait irq softirq steal guest guest_nice
        ticks = [int(v) for v in fields[1:9]]
        idle = ticks[3] + ticks[4]
        return cls((sum(ticks) - idle) / TICK)

    def since(self, earlier: MachineCpu) -> float:
        return self.busy - earlier.busy


def process_cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of PID, plus its reaped children's when CHILDREN."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    total = utime + stime + (cutime + cstime if children else 0)
    return total / TICK


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)
