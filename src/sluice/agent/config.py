"""What one agent process is told on its command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sluice.compile.lbstate import LbOptions
from sluice.compile.masquerade import MasqueradeOptions
from sluice.compile.policytypes import FailsafePort
from sluice.compile.topology import Dataplane, RoutingMode
from sluice.datapath.events import EventKinds

DEFAULT_CNI_STATE_DIR = "/run/sluice/cni"
DEFAULT_PIN_ROOT = "/sys/fs/bpf/sluice"
DEFAULT_LISTEN = "127.0.0.1:9962"
DEFAULT_RESYNC_INTERVAL = 10.0
DEFAULT_NETFILTER_MONITOR_INTERVAL = 5.0


DEFAULT_FLOW_EVENTS = "drops,flows,sock"
DEFAULT_FLOW_EVENT_RATE = 1000
DEFAULT_FLOW_LOG_SIZE = 8192


@dataclass(frozen=True)
class FlowEventOptions:
    """What the datapath reports as flow events (bpf mode), and how much the agent keeps."""

    kinds: EventKinds = EventKinds.DROPS | EventKinds.FLOWS | EventKinds.SOCK
    sample: int = 1  # flow and socket events: one in SAMPLE; drops are never sampled
    rate_per_cpu: int = DEFAULT_FLOW_EVENT_RATE  # events per second per CPU; 0: no limit
    log_size: int = DEFAULT_FLOW_LOG_SIZE  # flows the agent keeps for /flows


def parse_flow_event_kinds(text: str) -> EventKinds:
    """`drops,flows,sock`, `all` or `none` -> EventKinds; ValueError naming the option."""
    if text == "none":
        return EventKinds(0)
    if text == "all":
        return EventKinds.DROPS | EventKinds.FLOWS | EventKinds.SOCK
    kinds = EventKinds(0)
    for word in text.split(","):
        try:
            kinds |= EventKinds[word.strip().upper()]
        except KeyError:
            raise ValueError(f"--flow-events {text!r}: {word!r} is not one of drops, flows, "
                             "sock (or use all, none)") from None
    return kinds


def default_pin_dir(node: str) -> str:
    return os.path.join(DEFAULT_PIN_ROOT, node)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port); ValueError with the expected form."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9962 or "
                         "[::1]:9962")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class AgentConfig:
    node: str
    datastore_url: str
    dataplane: Dataplane = Dataplane.BPF
    routing: RoutingMode = RoutingMode.VXLAN
    netns: str | None = None
    cni_state_dir: str = DEFAULT_CNI_STATE_DIR
    pin_dir: str = ""  # "" -> default_pin_dir(node)
    listen: tuple[str, int] = ("127.0.0.1", 9962)
    uplink: str | None = None  # None -> the device holding the node's InternalIP
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    lb: LbOptions = field(default_factory=LbOptions)
    cgroup: str | None = None  # cgroup v2 directory whose sockets get connect-time LB
    allow_root_cgroup: bool = False
    failsafe: tuple[FailsafePort, ...] = ()  # inbound and outbound; see compile.failsafe
    flow_events: FlowEventOptions = field(default_factory=FlowEventOptions)
    netfilter_monitor: bool = False  # bpf mode: report foreign iptables/nftables rules
    netfilter_monitor_interval: float = DEFAULT_NETFILTER_MONITOR_INTERVAL
    netfilter_blocker: bool = False  # bpf mode: refuse rule changes in the node's namespace
    masquerade: MasqueradeOptions = field(default_factory=MasqueradeOptions)
    map_sizes: tuple[tuple[str, int], ...] = ()  # --map-size (apply.mapsizes)

    @property
    def pins(self) -> str:
        return self.pin_dir or default_pin_dir(self.node)
