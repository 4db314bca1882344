"""bpf mode: the node datapath object, loaded once per agent process, maps pinned.

The `endpoints` and `routes` maps live at `<pin_dir>/<map>`: a restarted agent's load
adopts them (libbpf reuses a compatible pinned map), so their entries, and the programs
still attached through pinned links, keep serving traffic across the restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sluice.apply.errors import ApplyError
from sluice.bpffs import is_bpffs
from sluice.datapath import endpoints as ep
from sluice.datapath import routing as rt
from sluice.loader import BpfObject, LayoutMismatchError, LibbpfError, Map, Program
from sluice.loader.objects import VerifierError

OBJECT_NAME = "node"
PINNED_MAPS: tuple[tuple[str, type[Any], type[Any]], ...] = (
    (ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo),
    (rt.MAP_NAME, rt.RouteKey, rt.RouteEntry),
)
REMOVE_HINT = "remove this node's pins with `sluice agent --node NODE --uninstall` first"


@dataclass
class NodeObject:
    obj: BpfObject
    pin_dir: str
    endpoints: Map[ep.EndpointKey, ep.EndpointInfo]
    routes: Map[rt.RouteKey, rt.RouteEntry]
    programs: dict[str, Program]

    @classmethod
    def load(cls, pin_dir: str, *, tunnel_vni: int) -> NodeObject:
        prepare_pin_dir(pin_dir)
        verify_pinned_maps(pin_dir)
        obj = BpfObject.open(OBJECT_NAME, pin_dir=pin_dir)
        try:
            obj.set_rodata(tunnel_vni=tunnel_vni)
            try:
                obj.load()
            except VerifierError:
                raise
            except LibbpfError as err:
                raise ApplyError(f"loading the node datapath with the maps pinned in {pin_dir} "
                                 f"failed ({err}); if those maps were made by another "
                                 f"version, {REMOVE_HINT}") from err
            return cls(obj, pin_dir,
                       obj.map(ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo),
                       obj.map(rt.MAP_NAME, rt.RouteKey, rt.RouteEntry),
                       {p.name: p for p in obj.programs()})
        except BaseException:
            obj.close()
            raise

    def close(self) -> None:
        """Drop the process's handles; pinned maps and links stay in the kernel."""
        self.obj.close()


def prepare_pin_dir(pin_dir: str) -> None:
    os.makedirs(pin_dir, exist_ok=True)
    if not is_bpffs(pin_dir):
        raise ApplyError(f"pin directory {pin_dir} is not on a bpf filesystem "
                         "(mount one: mount -t bpf bpf /sys/fs/bpf)")


def verify_pinned_maps(pin_dir: str) -> None:
    """Refuse pinned maps whose layout (from the BTF the kernel kept) differs from ours."""
    for name, key_type, value_type in PINNED_MAPS:
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            continue
        try:
            Map.from_pin(path, key_type, value_type).close()
        except LayoutMismatchError as err:
            raise ApplyError(f"pinned map {path} has another layout: {err}; {REMOVE_HINT}") \
                from err


def remove_maps(pin_dir: str) -> int:
    """Unpin the node maps (uninstall); the kernel frees each once nothing uses it."""
    removed = 0
    for name, _, _ in PINNED_MAPS:
        path = os.path.join(pin_dir, name)
        if os.path.exists(path):
            os.unlink(path)
            removed += 1
    return removed
