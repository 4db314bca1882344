"""What a trace reads to explain a run: the node's pinned maps the datapath only reads
(endpoints, ipcache, frontends, backends, host interfaces: looked up, never written), and
the trace's private maps before and after the run (conntrack, policy flows, route hits,
policy entry flow counts, counters by reason, backend selections)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from sluice.compile.devices import HOST_DEVICE, TUNNEL_DEVICE
from sluice.datapath import conntrack as ct
from sluice.datapath import endpoints as ep
from sluice.datapath import events as ev
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.datapath.addr import LpmKey, SlAddr
from sluice.loader.maps import Map
from sluice.model.addresses import IPAddress
from sluice.observe.traceload import LinkedDevice, TraceInstance, linked_devices


def _lpm_exact(address: IPAddress) -> LpmKey:
    return LpmKey(prefixlen=128, addr=SlAddr.of(address))


@dataclass
class NodeView:
    """A node's read-only maps and attachments, as pinned by its agent."""

    pin_dir: str
    devices: list[LinkedDevice]
    endpoints: dict[IPAddress, ep.EndpointInfo]
    _maps: dict[str, Map[Any, Any]]

    @classmethod
    def open(cls, pin_dir: str) -> NodeView:
        opened: dict[str, Map[Any, Any]] = {}
        try:
            for name, key, value in (
                    (pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry),
                    (lb.SERVICES_MAP, lb.LbKey, lb.LbValue),
                    (lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend),
                    (pol.HOST_INTERFACES_MAP, ctypes.c_uint32, ctypes.c_uint32)):
                opened[name] = Map.from_pin(os.path.join(pin_dir, name), key, value)
            endpoints_map = Map.from_pin(os.path.join(pin_dir, ep.MAP_NAME), ep.EndpointKey,
                                         ep.EndpointInfo)
            try:
                endpoints = {key.to_ip(): info for key, info in endpoints_map.lookup_batch()}
            finally:
                endpoints_map.close()
        except BaseException:
            for opened_map in opened.values():
                opened_map.close()
            raise
        return cls(pin_dir, linked_devices(pin_dir), endpoints, opened)

    def close(self) -> None:
        for opened in self._maps.values():
            opened.close()

    def identity(self, address: IPAddress) -> pol.IpcacheEntry | None:
        found: pol.IpcacheEntry | None = self._maps[pol.IPCACHE_MAP].lookup(_lpm_exact(address))
        return found

    def is_host(self, address: IPAddress) -> bool:
        entry = self.identity(address)
        return entry is not None and entry.identity == pol.Identity.HOST

    def frontend(self, address: IPAddress, port: int, protocol: str) -> lb.LbValue | None:
        if protocol not in lb.PROTOCOLS:
            return None
        found: lb.LbValue | None = self._maps[lb.SERVICES_MAP].lookup(
            lb.LbKey.of(address, port, protocol))
        return found

    def backend(self, backend_id: int) -> lb.LbBackend | None:
        found: lb.LbBackend | None = self._maps[lb.BACKENDS_MAP].lookup(
            lb.BackendId(backend_id))
        return found

    def host_interface_flags(self, ifindex: int) -> int:
        flags = self._maps[pol.HOST_INTERFACES_MAP].lookup(ctypes.c_uint32(ifindex))
        return int(flags.value) if flags is not None else 0

    def endpoint_by_ifindex(self, ifindex: int) -> IPAddress | None:
        return next((a for a, info in sorted(self.endpoints.items(), key=lambda i: str(i[0]))
                     if info.ifindex == ifindex), None)

    def device(self, program: str, ifname: str | None = None) -> LinkedDevice | None:
        return next((d for d in self.devices if d.program == program
                     and (ifname is None or d.ifname == ifname)), None)

    def ifname(self, ifindex: int) -> str | None:
        return next((d.ifname for d in self.devices if d.ifindex == ifindex), None)

    def uplink(self) -> LinkedDevice | None:
        return next((d for d in self.devices if d.program == "from_network"
                     and d.ifname not in (TUNNEL_DEVICE, HOST_DEVICE)), None)

    def tunnel(self) -> LinkedDevice | None:
        return self.device("from_network", TUNNEL_DEVICE)


@dataclass(frozen=True)
class PrivateState:
    """The trace's private maps at one moment."""

    conntrack: dict[bytes, ct.CtEntry]
    flows: dict[bytes, pol.PolicyFlow]
    routes: dict[bytes, tuple[rt.RouteKey, rt.RouteEntry]]
    policy: dict[bytes, tuple[pol.PolicyKey, pol.PolicyVerdict]]

    @classmethod
    def read(cls, instance: TraceInstance) -> PrivateState:
        obj = instance.obj
        conntrack = obj.map(ct.MAP_NAME, ct.CtKey, ct.CtEntry)
        flows = obj.map(pol.FLOWS_MAP, ct.CtKey, pol.PolicyFlow)
        routes = obj.map(rt.MAP_NAME, rt.RouteKey, rt.RouteEntry)
        policy = obj.map(pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
        return cls({bytes(k): v for k, v in conntrack.lookup_batch()},
                   {bytes(k): v for k, v in flows.lookup_batch()},
                   {bytes(k): (k, v) for k, v in routes.lookup_batch()},
                   {bytes(k): (k, v) for k, v in policy.lookup_batch()})


@dataclass(frozen=True)
class RunCounters:
    """What the private counters (fresh before the run) counted."""

    datapath: dict[tuple[int, int], int]  # (hook, reason) -> packets
    policy: dict[str, int]  # CounterReason name -> packets
    selections: dict[int, int]  # backend id -> new flows

    @classmethod
    def read(cls, instance: TraceInstance) -> RunCounters:
        obj = instance.obj
        counters = obj.map(ev.COUNTERS_MAP, ctypes.c_uint32, ev.DatapathCounter)
        datapath = {}
        for hook in ev.Hook:
            for reason in range(ev.DROP_REASON_SLOTS):
                index = ctypes.c_uint32(ev.counter_index(hook, reason))
                packets = sum(c.packets for c in counters.lookup_percpu(index) or [])
                if packets:
                    datapath[(int(hook), reason)] = packets
        policy_counters = obj.map(pol.COUNTERS_MAP, pol.StateIndex, pol.PolicyCounter)
        policy = {}
        for counter in pol.CounterReason:
            packets = sum(c.packets for c in
                          policy_counters.lookup_percpu(pol.StateIndex(int(counter))) or [])
            if packets:
                policy[counter.name.lower()] = packets
        selections_map = obj.map(lb.SELECTIONS_MAP, ctypes.c_uint32, ctypes.c_uint64)
        selections = {}
        for key in list(selections_map.keys()):
            count = sum(int(v.value) for v in selections_map.lookup_percpu(key) or [])
            if count:
                selections[int(key.value)] = count
        return cls(datapath, policy, selections)

    def minus(self, before: RunCounters) -> RunCounters:
        """What was counted since BEFORE."""
        def delta(now: dict[Any, int], then: dict[Any, int]) -> dict[Any, int]:
            moved = {k: v - then.get(k, 0) for k, v in now.items()}
            return {k: v for k, v in moved.items() if v}
        return RunCounters(delta(self.datapath, before.datapath),
                           delta(self.policy, before.policy),
                           delta(self.selections, before.selections))

    def drop_reason(self) -> ev.DropReason | None:
        """The reason the run counted (None: forwarded, or not counted at all)."""
        reasons = [reason for (_, reason), packets in self.datapath.items() if packets]
        if not reasons or reasons == [0]:
            return None
        reason = max(reasons)
        return ev.DropReason(reason) if reason in ev.DropReason._value2member_map_ \
            else ev.DropReason.UNKNOWN

    def counted(self) -> bool:
        return bool(self.datapath)
