"""`sluice agent --uninstall`: remove what an agent made on its node.

Detaches and unpins the node's links, unpins its maps and removes the pin directory, and
deletes Sluice's kernel routes, devices (sl-host, sl-vxlan) and its permanent neighbours
on the pods' host veths, and the iptables-mode service rules (every SLUICE-* chain of the
nat and filter tables, IPv4 and IPv6, and the jumps into them) and policy rules (chains
in filter, mangle and raw, and Sluice's ipsets). The pods' veths and the
CNI records belong to sluice-cni and are left alone; so are sysctls.
"""

from __future__ import annotations

import contextlib
import os

from pyroute2 import IPRoute

from sluice.agent.config import AgentConfig
from sluice.agent.nfblocker import remove_blocker
from sluice.apply.attachments import links_dir, remove_links
from sluice.apply.cgrouplinks import cgroup_links_dir, remove_cgroup_links
from sluice.apply.kernel import remove_kernel_state
from sluice.apply.nodeobject import remove_maps
from sluice.apply.policyrules import remove_policy_rules
from sluice.apply.servicerules import remove_service_rules
from sluice.cni.registry import list_records


def uninstall(config: AgentConfig) -> list[str]:
    """Returns what was removed (and what was left), one line each."""
    report: list[str] = []
    pins = config.pins
    if os.path.isdir(pins):
        report.append(f"links: {remove_links(pins)} detached and unpinned")
        report.append(f"socket hooks: {remove_cgroup_links(pins)} detached and unpinned")
        report.append(f"netfilter blocker: {remove_blocker(pins)}")
        report.append(f"maps: {remove_maps(pins)} unpinned")
        for directory in (links_dir(pins), cgroup_links_dir(pins), pins):
            with contextlib.suppress(FileNotFoundError):
                try:
                    os.rmdir(directory)
                except OSError:
                    report.append(f"left {directory}: it holds {sorted(os.listdir(directory))}")
    else:
        report.append(f"no pin directory {pins}")
    devices = [r.host_ifname for r in list_records(config.cni_state_dir)]
    with IPRoute() as ipr:
        log = remove_kernel_state(ipr, devices)
    report.append(f"kernel: {log.summary()}")
    report.append(f"policy rules: {remove_policy_rules()} chains, jumps and ipsets removed")
    report.append(f"service rules: {remove_service_rules()} iptables chains and jumps removed")
    return report
