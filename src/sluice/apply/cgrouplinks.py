"""Connect-time load balancing: the socket hooks on the node's cgroup, as pinned links.

Each hook is pinned at `<pin_dir>/cgroup-links/<program>`. As with the tc links, a
restarted agent adopts a pinned link by swapping in its freshly loaded program
(`bpf_link_update`: sockets are never without the hook), and detaches links that are not
wanted (no cgroup configured, or another cgroup than the one they are attached to).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sluice.apply.attachments import detach_quietly
from sluice.apply.diff import Changes
from sluice.loader import Link, Program
from sluice.loader.attach import LinkState, attach_cgroup

CGROUP_LINKS_DIR = "cgroup-links"


def cgroup_links_dir(pin_dir: str) -> str:
    return os.path.join(pin_dir, CGROUP_LINKS_DIR)


def _cgroup_id(state: LinkState) -> int:
    """A cgroup link's info carries the cgroup id (a u64) where tcx links carry ifindex
    and attach type."""
    return (state.attach_type << 32) | state.ifindex


def sync_cgroup_links(pin_dir: str, programs: Mapping[str, Program], cgroup: str | None, *,
                      allow_root: bool = False) -> Changes:
    """Attach every program in PROGRAMS to CGROUP (a cgroup v2 directory), or, when CGROUP
    is None, detach every pinned hook."""
    directory = cgroup_links_dir(pin_dir)
    os.makedirs(directory, exist_ok=True)
    changes = Changes()
    cgroup_id = os.stat(cgroup).st_ino if cgroup is not None else None
    kept: set[str] = set()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        link = Link.from_pin(path)
        try:
            state = link.info()
            program = programs.get(name)
            if program is not None and cgroup_id is not None and _cgroup_id(state) == cgroup_id:
                if state.prog_id != program.info().id:
                    link.update(program)
                    changes.changed += 1
                else:
                    changes.unchanged += 1
                kept.add(name)
                continue
            detach_quietly(link)
        finally:
            link.close()
        os.unlink(path)
        changes.removed += 1
    if cgroup is None:
        return changes
    for name, program in sorted(programs.items()):
        if name in kept:
            continue
        link = attach_cgroup(program, cgroup, allow_root=allow_root)
        try:
            link.pin(os.path.join(directory, name))
        except BaseException:
            link.detach()
            raise
        link.close()
        changes.added += 1
    return changes


def remove_cgroup_links(pin_dir: str) -> int:
    directory = cgroup_links_dir(pin_dir)
    if not os.path.isdir(directory):
        return 0
    return sync_cgroup_links(pin_dir, {}, None).removed
