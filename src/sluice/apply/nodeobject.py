"""bpf mode: the node datapath objects, loaded once per agent process, maps pinned.

Three objects: `node` (the tc programs), `sock` (the cgroup socket hooks) and
`prefilter` (XDP on the uplink). All pin their maps by name at `<pin_dir>/<map>`, so they
share the load balancer and policy maps, and a
restarted agent's load adopts them (libbpf reuses a compatible pinned map): entries,
conntrack and the programs still attached through pinned links keep serving traffic
across the restart.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.apply.errors import ApplyError
from sluice.apply.lbmaps import LbMaps
from sluice.apply.masqmaps import MasqMaps
from sluice.apply.policymaps import PolicyMaps
from sluice.bpffs import is_bpffs
from sluice.compile.devices import SERVICE_VNI, TUNNEL_VNI
from sluice.compile.maglev import DEFAULT_TABLE_SIZE
from sluice.datapath import conntrack as ct
from sluice.datapath import endpoints as ep
from sluice.datapath import events as ev
from sluice.datapath import lb, masq
from sluice.datapath import policy as pol
from sluice.datapath import prefilter as pf
from sluice.datapath import routing as rt
from sluice.loader import BpfObject, LayoutMismatchError, LibbpfError, Map, Program
from sluice.loader.migrate import MigrationError
from sluice.loader.objects import VerifierError

OBJECT_NAME = "node"
SOCK_OBJECT_NAME = "sock"
PREFILTER_OBJECT_NAME = "prefilter"
PINNED_MAPS: tuple[tuple[str, type[Any], type[Any]], ...] = (
    (ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo),
    (rt.MAP_NAME, rt.RouteKey, rt.RouteEntry),
    (lb.SERVICES_MAP, lb.LbKey, lb.LbValue),
    (lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend),
    (lb.MAGLEV_MAP, lb.LbMaglevKey, lb.MaglevSlot),
    (lb.SOURCE_RANGES_MAP, lb.LbSourceKey, lb.SourceAllowed),
    (pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry),
    (pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict),
    (pol.STATES_MAP, pol.StateIndex, pol.PolicyState),
    (pol.FAILSAFE_MAP, pol.FailsafeKey, ctypes.c_uint32),
    (pol.HOST_INTERFACES_MAP, ctypes.c_uint32, ctypes.c_uint32),
    (pf.MAP_NAME, pf.PrefilterKey, pf.PrefilterEntry),
    (pol.FLOWS_MAP, ct.CtKey, pol.PolicyFlow),
    (masq.CONFIG_MAP, ctypes.c_uint32, masq.MasqConfig),
    (masq.NONMASQ_MAP, masq.NonMasqKey, ctypes.c_uint32),
    (masq.MAPPINGS_MAP, masq.MasqKey, masq.MasqEntry),
)
# Maps without a Python layout: pinned, shared and removed, never read by the agent.
OPAQUE_MAPS = ("conntrack", lb.AFFINITY_MAP, lb.SOCK_REV_MAP, lb.SELECTIONS_MAP,
               pol.COUNTERS_MAP, pol.EVENTS_MAP, ev.EVENTS_MAP, ev.CONFIG_MAP, ev.STATS_MAP,
               ev.WINDOW_MAP, ev.COUNTERS_MAP, "node_scratch", masq.SCRATCH_MAP)
REMOVE_HINT = "remove this node's pins with `sluice agent --node NODE --uninstall` first"
# Scratch memory of the programs: created afresh when its layout changes, never migrated.
RECREATED_MAPS = ("node_scratch", ev.WINDOW_MAP, masq.SCRATCH_MAP)


@dataclass
class NodeObject:
    obj: BpfObject
    pin_dir: str
    endpoints: Map[ep.EndpointKey, ep.EndpointInfo]
    routes: Map[rt.RouteKey, rt.RouteEntry]
    lb: LbMaps
    programs: dict[str, Program]  # tc programs
    sock_obj: BpfObject
    sock_programs: dict[str, Program]  # cgroup socket hooks
    prefilter_obj: BpfObject
    policy: PolicyMaps
    masq: MasqMaps

    @classmethod
    def load(cls, pin_dir: str, *, tunnel_vni: int = TUNNEL_VNI,
             service_vni: int = SERVICE_VNI,
             maglev_table_size: int = DEFAULT_TABLE_SIZE,
             map_sizes: Mapping[str, int] | None = None) -> NodeObject:
        prepare_pin_dir(pin_dir)
        sizes = map_sizes or {}
        # Pinned maps of another layout or size are migrated by the load (loader.migrate).
        obj = _load(OBJECT_NAME, pin_dir, sizes, tunnel_vni=tunnel_vni,
                    service_vni=service_vni, maglev_table_size=maglev_table_size)
        loaded = [obj]
        try:
            sock = _load(SOCK_OBJECT_NAME, pin_dir, sizes, maglev_table_size=maglev_table_size)
            loaded.append(sock)
            prefilter = _load(PREFILTER_OBJECT_NAME, pin_dir, sizes)
            loaded.append(prefilter)
            maps = LbMaps(obj.map(lb.SERVICES_MAP, lb.LbKey, lb.LbValue),
                          obj.map(lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend),
                          obj.map(lb.MAGLEV_MAP, lb.LbMaglevKey, lb.MaglevSlot),
                          obj.map(lb.SOURCE_RANGES_MAP, lb.LbSourceKey, lb.SourceAllowed))
            policy = PolicyMaps(
                obj.map(pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry),
                obj.map(pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict),
                obj.map(pol.STATES_MAP, ctypes.c_uint32, pol.PolicyState),
                obj.map(pol.FAILSAFE_MAP, pol.FailsafeKey, ctypes.c_uint32),
                obj.map(pol.HOST_INTERFACES_MAP, ctypes.c_uint32, ctypes.c_uint32),
                prefilter.map(pf.MAP_NAME, pf.PrefilterKey, pf.PrefilterEntry))
            masq_maps = MasqMaps(
                obj.map(masq.CONFIG_MAP, ctypes.c_uint32, masq.MasqConfig),
                obj.map(masq.NONMASQ_MAP, masq.NonMasqKey, ctypes.c_uint32),
                obj.map(masq.MAPPINGS_MAP, masq.MasqKey, masq.MasqEntry))
            programs = {p.name: p for p in obj.programs()}
            programs |= {p.name: p for p in prefilter.programs() if p.name == "prefilter_xdp"}
            return cls(obj, pin_dir,
                       obj.map(ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo),
                       obj.map(rt.MAP_NAME, rt.RouteKey, rt.RouteEntry),
                       maps, programs, sock, {p.name: p for p in sock.programs()},
                       prefilter, policy, masq_maps)
        except BaseException:
            for loaded_obj in reversed(loaded):
                loaded_obj.close()
            raise

    def catch_up_migrations(self) -> int:
        """Once the links run the new programs: entries the old programs still wrote to
        maps this load migrated are carried over, and the old maps let go."""
        return sum(o.catch_up_migrations() for o in (self.obj, self.sock_obj,
                                                     self.prefilter_obj))

    def close(self) -> None:
        """Drop the process's handles; pinned maps and links stay in the kernel."""
        self.prefilter_obj.close()
        self.sock_obj.close()
        self.obj.close()


def _load(name: str, pin_dir: str, map_sizes: Mapping[str, int], **rodata: int) -> BpfObject:
    obj = BpfObject.open(name, pin_dir=pin_dir)
    try:
        obj.resize_maps(map_sizes)
        obj.set_rodata(**rodata)
        try:
            obj.load(migrate_pins=True, recreate=RECREATED_MAPS)
        except MigrationError as err:
            raise ApplyError(f"loading the {name} datapath: {err}") from err
        except VerifierError:
            raise
        except LibbpfError as err:
            raise ApplyError(f"loading the {name} datapath with the maps pinned in {pin_dir} "
                             f"failed ({err}); if those maps were made by another "
                             f"version, {REMOVE_HINT}") from err
        return obj
    except BaseException:
        obj.close()
        raise


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
    for name in [m[0] for m in PINNED_MAPS] + list(OPAQUE_MAPS):
        path = os.path.join(pin_dir, name)
        if os.path.exists(path):
            os.unlink(path)
            removed += 1
    return removed
