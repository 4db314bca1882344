"""tcx and XDP links of the node programs, pinned in bpffs so they outlive the agent.

Every link is pinned at `<pin_dir>/links/<program>@<ifname>`. A pinned link keeps its
program attached while no process holds it; a restarted agent adopts it by swapping in the
program it just loaded (`bpf_link_update`, atomic: the hook is never empty), so traffic
never stops. A link whose device is gone (the kernel reports it defunct), whose device now
has another ifindex, or that is no longer desired is detached and unpinned.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sluice.apply.diff import Changes
from sluice.compile.bpfstate import BpfState
from sluice.loader import Direction, LibbpfError, Link, Program, attach_tcx, tcx_attach_type
from sluice.loader.attach import LinkState, attach_xdp
from sluice.loader.btf import kernel_enum

LINKS_DIR = "links"
SEPARATOR = "@"

XDP = "xdp"
Hook = Direction | str  # a tcx direction, or XDP

# Which hook each program of the node objects runs on.
PROGRAM_HOOKS: dict[str, Hook] = {
    "from_endpoint": Direction.INGRESS,
    "from_network": Direction.INGRESS,
    "from_host": Direction.EGRESS,
    "to_network": Direction.EGRESS,
    "prefilter_xdp": XDP,
}


def on_hook(state: LinkState, hook: Hook) -> bool:
    """Whether a link the kernel describes as STATE sits on HOOK. XDP links report no
    attach type: their link type says it."""
    if hook == XDP:
        return state.link_type == kernel_enum("bpf_link_type")["BPF_LINK_TYPE_XDP"]
    return state.attach_type == tcx_attach_type(Direction(hook))


@dataclass(frozen=True, order=True)
class Attachment:
    """One program on one device's tcx hook (the direction follows from the program)."""

    program: str
    ifname: str

    @property
    def hook(self) -> Hook:
        return PROGRAM_HOOKS[self.program]

    @property
    def pin_name(self) -> str:
        return f"{self.program}{SEPARATOR}{self.ifname}"

    @classmethod
    def from_pin_name(cls, name: str) -> Attachment | None:
        program, sep, ifname = name.partition(SEPARATOR)
        if not sep or not ifname or program not in PROGRAM_HOOKS:
            return None
        return cls(program, ifname)

    @property
    def hook_name(self) -> str:
        hook = self.hook
        return f"tcx/{hook.value}" if isinstance(hook, Direction) else XDP

    def __str__(self) -> str:
        return f"{self.program} on {self.hook_name} of {self.ifname}"


def desired_attachments(state: BpfState, *, prefilter: bool) -> frozenset[Attachment]:
    """PREFILTER: the uplink's XDP program has something to judge."""
    wanted = {Attachment("from_endpoint", ifname) for ifname in state.endpoint_devices}
    wanted |= {Attachment("from_network", ifname) for ifname in state.network_devices}
    wanted.add(Attachment("from_host", state.host_device))
    if state.uplink:
        # Host endpoint policy of what leaves, and the prefilter before the stack.
        wanted.add(Attachment("to_network", state.uplink))
        if prefilter:
            wanted.add(Attachment("prefilter_xdp", state.uplink))
    return frozenset(wanted)


def links_dir(pin_dir: str) -> str:
    return os.path.join(pin_dir, LINKS_DIR)


@dataclass
class LinkSync:
    changes: Changes = field(default_factory=Changes)  # changed: adopted (program swapped)
    attached: list[Attachment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def sync_links(pin_dir: str, programs: Mapping[str, Program],
               desired: frozenset[Attachment], ifindexes: Mapping[str, int]) -> LinkSync:
    """Make the pinned links in PIN_DIR exactly DESIRED, on the devices IFINDEXES names.

    PROGRAMS are the freshly loaded programs by name; pinned links running another
    program (a previous agent's) get it swapped in.
    """
    directory = links_dir(pin_dir)
    os.makedirs(directory, exist_ok=True)
    program_ids = {name: prog.info().id for name, prog in programs.items()}
    result = LinkSync()
    kept: set[Attachment] = set()
    for name in sorted(os.listdir(directory)):
        attachment = Attachment.from_pin_name(name)
        if attachment is None:
            result.problems.append(f"{directory}/{name} is not a Sluice link pin; left alone")
            continue
        if _sync_pinned(os.path.join(directory, name), attachment, programs=programs,
                        program_ids=program_ids, desired=desired, ifindexes=ifindexes,
                        changes=result.changes):
            kept.add(attachment)
    for attachment in sorted(desired - kept):
        ifindex = ifindexes.get(attachment.ifname)
        if ifindex is None:
            result.problems.append(f"cannot attach {attachment}: no such device")
            continue
        _attach_and_pin(os.path.join(directory, attachment.pin_name), attachment,
                        programs[attachment.program], ifindex)
        result.changes.added += 1
        kept.add(attachment)
    result.attached = sorted(kept)
    return result


def _sync_pinned(path: str, attachment: Attachment, *, programs: Mapping[str, Program],
                 program_ids: Mapping[str, int], desired: frozenset[Attachment],
                 ifindexes: Mapping[str, int], changes: Changes) -> bool:
    """Adopt, or detach and unpin, one pinned link; True when it stays."""
    link = Link.from_pin(path)
    try:
        state = link.info()
        live = state.ifindex != 0
        wanted = (attachment in desired and live
                  and ifindexes.get(attachment.ifname) == state.ifindex
                  and on_hook(state, attachment.hook))
        if wanted:
            if state.prog_id != program_ids[attachment.program]:
                link.update(programs[attachment.program])
                changes.changed += 1
            else:
                changes.unchanged += 1
            return True
        if live:
            detach_quietly(link)
        os.unlink(path)
        changes.removed += 1
        return False
    finally:
        link.close()


def detach_quietly(link: Link) -> None:
    """Detach LINK; a link whose hook is already gone is not an error."""
    try:
        link.detach()
    except LibbpfError as err:
        if err.errno not in (errno.ENOLINK, errno.ENOENT, errno.ENODEV):
            raise


def _attach_and_pin(path: str, attachment: Attachment, program: Program, ifindex: int) -> None:
    hook = attachment.hook
    link = (attach_tcx(program, ifindex, hook) if isinstance(hook, Direction)
            else attach_xdp(program, ifindex))
    try:
        link.pin(path)
    except BaseException:
        link.detach()
        raise
    link.close()


def remove_links(pin_dir: str) -> int:
    """Detach and unpin every link pinned in PIN_DIR (uninstall); returns how many."""
    directory = links_dir(pin_dir)
    if not os.path.isdir(directory):
        return 0
    removed = 0
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if Attachment.from_pin_name(name) is None:
            continue
        link = Link.from_pin(path)
        try:
            if link.info().ifindex:
                detach_quietly(link)
        finally:
            link.close()
        os.unlink(path)
        removed += 1
    return removed
