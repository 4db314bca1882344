"""What one agent process is told on its command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sluice.compile.lbstate import LbOptions
from sluice.compile.policytypes import FailsafePort
from sluice.compile.topology import Dataplane, RoutingMode

DEFAULT_CNI_STATE_DIR = "/run/sluice/cni"
DEFAULT_PIN_ROOT = "/sys/fs/bpf/sluice"
DEFAULT_LISTEN = "127.0.0.1:9962"
DEFAULT_RESYNC_INTERVAL = 10.0


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

    @property
    def pins(self) -> str:
        return self.pin_dir or default_pin_dir(self.node)
