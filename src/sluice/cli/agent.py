"""`sluice agent`: the node agent (see sluice.agent)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from sluice import netns
from sluice.agent.config import (
    DEFAULT_CNI_STATE_DIR,
    DEFAULT_FLOW_EVENT_RATE,
    DEFAULT_FLOW_EVENTS,
    DEFAULT_FLOW_LOG_SIZE,
    DEFAULT_LISTEN,
    DEFAULT_NETFILTER_MONITOR_INTERVAL,
    DEFAULT_RESYNC_INTERVAL,
    AgentConfig,
    FlowEventOptions,
    default_pin_dir,
    parse_flow_event_kinds,
    parse_listen,
)
from sluice.agent.runner import StartupError, run_agent
from sluice.agent.uninstall import uninstall
from sluice.apply import xtables
from sluice.apply.mapsizes import parse_map_sizes
from sluice.apply.masqmaps import ports_problem
from sluice.cli.optionsources import effective_options, enable_option_sources, with_origin
from sluice.compile.failsafe import (
    DEFAULT_INBOUND,
    DEFAULT_OUTBOUND,
    PROTOCOL_NUMBERS,
    parse_failsafe,
)
from sluice.compile.lbstate import ExternalMode, LbAlgorithm, LbOptions
from sluice.compile.maglev import DEFAULT_TABLE_SIZE, validate_table_size
from sluice.compile.masquerade import (
    DEFAULT_NON_MASQUERADE,
    DEFAULT_PORTS_TEXT,
    MasqueradeOptions,
    parse_nonmasq_cidrs,
    parse_port_range,
)
from sluice.compile.policytypes import FailsafePort
from sluice.compile.topology import Dataplane, RoutingMode
from sluice.loader.attach import is_cgroup_root

GC_THRESHOLDS = (50_000, 20, 20)

DESCRIPTION = """\
Run the node agent. It reads the cluster from the datastore and the pods wired on this node
from the endpoint records of sluice-cni, computes the node's dataplane and writes it:

  bpf mode       the node program on every pod's host veth (tcx ingress), on the tunnel
                 device or uplink, and on sl-host (tcx egress); the endpoints and routes
                 maps; sl-host (+ sl-vxlan in vxlan routing) and routes of pod CIDRs to it
  iptables mode  kernel routes and permanent neighbours per pod; a VXLAN device with one
                 forwarding entry per peer (vxlan) or routes via the peers (native);
                 Services as kube-proxy-shaped NAT rules (SLUICE-* chains)

It reconciles on datastore changes, on CNI notifications (<cni-state-dir>/agent.sock) and
every --resync-interval. Maps and links are pinned under --pin-dir: they keep forwarding
while the agent is stopped, and a restarted agent adopts them. /healthz, /metrics and
/state are served on --listen."""

EPILOG = """\
examples:
  sluice agent --node n1 --datastore file:///etc/sluice/cluster --allow-host-netns  # a real node
  sluice agent --node n1 --datastore file:///lab/ds --netns lab-n1 --routing native \\
      --pin-dir /sys/fs/bpf/sluice-lab/n1 --cni-state-dir /run/sluice/lab/n1
  sluice agent --node n1 --netns lab-n1 --uninstall    # remove pins, devices, routes, rules"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agent", help="run the node agent", description=DESCRIPTION,
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    enable_option_sources(parser)
    parser.add_argument("--show-config", action="store_true",
                        help="print every option's value and where it came from (command "
                             "line, environment, config file or default), then exit")
    parser.add_argument("--node", required=True, metavar="NAME",
                        help="this node's name: the Node object in the datastore")
    parser.add_argument("--datastore", metavar="URL",
                        help="where the cluster lives, e.g. file:///var/lib/sluice/cluster "
                             "(required unless --uninstall)")
    parser.add_argument("--dataplane", choices=[d.value for d in Dataplane],
                        default=Dataplane.BPF.value,
                        help="bpf: eBPF host routing; iptables: the host stack forwards "
                             "(default: %(default)s)")
    parser.add_argument("--routing", choices=[m.value for m in RoutingMode],
                        default=RoutingMode.VXLAN.value,
                        help="how pod traffic crosses nodes: vxlan overlay, or native "
                             "routing on one L2 underlay (default: %(default)s)")
    parser.add_argument("--netns", metavar="NAME",
                        help="run the whole agent in network namespace /run/netns/NAME "
                             "(entered at start, verified)")
    parser.add_argument("--cni-state-dir", default=DEFAULT_CNI_STATE_DIR, metavar="DIR",
                        help="sluice-cni's stateDir: endpoint records and agent.sock "
                             "(default: %(default)s)")
    parser.add_argument("--pin-dir", metavar="DIR",
                        help=f"bpffs directory for maps and links (default: "
                             f"{default_pin_dir('NODE')})")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help="HTTP address for /healthz, /metrics, /state "
                             "(default: %(default)s)")
    parser.add_argument("--uplink", metavar="IFNAME",
                        help="the underlay device (default: the one holding the node's "
                             "InternalIP)")
    parser.add_argument("--resync-interval", type=float, default=DEFAULT_RESYNC_INTERVAL,
                        metavar="SECONDS",
                        help="reconcile at least this often (default: %(default)s)")
    parser.add_argument("--cgroup", metavar="DIR",
                        help="bpf mode: a cgroup v2 directory whose processes (pods, host "
                             "clients) get connect-time service load balancing from socket "
                             "hooks; without it services are translated per packet only. The "
                             "cgroup root needs --allow-host-netns")
    parser.add_argument("--lb-algorithm", choices=[a.value for a in LbAlgorithm],
                        default=LbAlgorithm.RANDOM.value,
                        help="how new flows pick a backend (default: %(default)s); per "
                             "service: annotation sluice.io/lb-algorithm")
    parser.add_argument("--maglev-table-size", type=int, default=DEFAULT_TABLE_SIZE,
                        metavar="PRIME",
                        help="slots per Maglev table, a prime (default: %(default)s)")
    parser.add_argument("--external-lb-mode", choices=[m.value for m in ExternalMode],
                        default=ExternalMode.TUNNEL.value,
                        help="how a backend on another node answers an outside client: "
                             "'tunnel' returns replies through the node the client reached, "
                             "'dsr' answers directly (default: %(default)s); per service: "
                             "annotation sluice.io/lb-mode")
    parser.add_argument("--failsafe-inbound", default=DEFAULT_INBOUND, metavar="LIST",
                        help="ports host endpoint policy never blocks toward the node, as "
                             "PROTOCOL:PORT,... or 'none' (default: %(default)s; the --listen "
                             "port is always added)")
    parser.add_argument("--failsafe-outbound", default=DEFAULT_OUTBOUND, metavar="LIST",
                        help="ports host endpoint policy never blocks from the node "
                             "(default: %(default)s)")
    parser.add_argument("--flow-events", default=DEFAULT_FLOW_EVENTS, metavar="KINDS",
                        help="what the bpf datapath reports as flow events for `sluice flows`: "
                             "drops, flows (a flow's first packet, FIN and RST), sock "
                             "(socket-level service translations, with the process), "
                             "comma-separated, or all, or none (default: %(default)s)")
    parser.add_argument("--flow-events-sample", type=int, default=1, metavar="N",
                        help="report one in N flow and sock events; drops are always "
                             "reported (default: %(default)s)")
    parser.add_argument("--flow-events-rate", type=int, default=DEFAULT_FLOW_EVENT_RATE,
                        metavar="N",
                        help="at most N events per second per CPU, 0 for no limit; what "
                             "is over is counted as lost (default: %(default)s)")
    parser.add_argument("--flow-log-size", type=int, default=DEFAULT_FLOW_LOG_SIZE,
                        metavar="N", help="flows the agent keeps for /flows (default: "
                                          "%(default)s)")
    parser.add_argument("--netfilter-monitor", action="store_true",
                        help="bpf mode: report iptables/nftables rules in the node's namespace "
                             "that are not Sluice's own (one log line, logger sluice.nfguard, "
                             "per rule that appears or goes; a metric)")
    parser.add_argument("--netfilter-monitor-interval", type=float,
                        default=DEFAULT_NETFILTER_MONITOR_INTERVAL, metavar="SECONDS",
                        help="how often the monitor reads the rules (default: %(default)s)")
    parser.add_argument("--netfilter-blocker", action="store_true",
                        help="bpf mode: refuse netfilter rule changes in the node's namespace "
                             "by processes of --cgroup (required, not the cgroup root), except "
                             "this agent and what it runs. Legacy iptables writes fail with "
                             "EPERM; a process opening a netfilter netlink socket (nft, "
                             "iptables-nft, also conntrack and listing) is killed. Other "
                             "namespaces are untouched. Off: a blocker left by an earlier run "
                             "is removed")
    parser.add_argument("--masquerade", choices=["on", "off"], default="on",
                        help="SNAT what local pods send out of the cluster to the node's "
                             "InternalIP: in the datapath (bpf mode) or by a SLUICE-MASQ "
                             "MASQUERADE chain (iptables mode) (default: %(default)s; `sluice "
                             "lab up` passes off unless given --masquerade)")
    parser.add_argument("--non-masquerade-cidrs", default=DEFAULT_NON_MASQUERADE,
                        metavar="LIST",
                        help="destinations that keep the pod's address besides every node's "
                             "pod CIDRs and InternalIPs (always kept), as CIDR,... or 'none'; "
                             "replaces the default (default: %(default)s)")
    parser.add_argument("--masquerade-ports", default=DEFAULT_PORTS_TEXT, metavar="LO-HI",
                        help="bpf mode: node ports of masqueraded flows, disjoint from the "
                             "node's net.ipv4.ip_local_port_range and the NodePort range "
                             "(default: %(default)s)")
    parser.add_argument("--iptables-backend", choices=[b.value for b in xtables.Backend],
                        default=xtables.Backend.SYSTEM.value,
                        help="iptables mode: which iptables tools write the rules: system "
                             "(`iptables`, as the host's alternatives choose), legacy "
                             "(iptables-legacy) or nft (iptables-nft). iptables-nft-restore "
                             "takes minutes for 10,000 Services x 10 endpoints where "
                             "iptables-legacy-restore takes seconds. Keep one per node: "
                             "--uninstall with the old one before switching "
                             "(default: %(default)s)")
    parser.add_argument("--map-size", default="", metavar="NAME=ENTRIES[,...]",
                        help="bpf mode: max entries of maps that grow with the cluster, e.g. "
                             "lb_services=524288,conntrack=1048576 (ring buffers: bytes, a "
                             "power of two); the rest keep their defaults. Applies to maps "
                             "created anew: a pinned map keeps its size")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default="info", help="(default: %(default)s)")
    parser.add_argument("--allow-host-netns", action="store_true",
                        help="allow running in the machine's own network namespace (a real "
                             "node); refused otherwise, so a mistyped command cannot rewire "
                             "the host")
    parser.add_argument("--uninstall", action="store_true",
                        help="remove this node's pinned links and maps, Sluice's devices, "
                             "routes, neighbours and iptables rules, then exit")
    parser.set_defaults(handler=run, parser=parser)


def _at_least(value: int, least: int, option: str) -> int:
    if value < least:
        raise ValueError(f"{option} {value}: must be at least {least}")
    return value


def _netfilter_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the --netfilter-* options, if anything."""
    if not (args.netfilter_monitor or args.netfilter_blocker):
        return None
    if args.dataplane != Dataplane.BPF.value:
        return ("--netfilter-monitor and --netfilter-blocker need --dataplane bpf (in "
                "iptables mode netfilter rules are the dataplane itself)")
    if not args.netfilter_monitor_interval > 0:
        return "--netfilter-monitor-interval must be positive"
    if args.netfilter_blocker and args.cgroup is None:
        return "--netfilter-blocker needs --cgroup DIR: its hooks attach to the node's cgroup"
    if args.netfilter_blocker and is_cgroup_root(args.cgroup):
        return (f"--netfilter-blocker: --cgroup {args.cgroup} is a cgroup root; the blocker "
                "attaches only to the node's own cgroup")
    return None


def _fail(message: str, code: int = 1, args: argparse.Namespace | None = None) -> int:
    if args is not None:
        message = with_origin(args.parser, message)
    print(f"sluice agent: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    if args.show_config:
        for option, value, origin in effective_options(args.parser, args):
            print(f"{option:28} {value!s:40} {origin}")
        return 0
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # libbpf's debug output (every CO-RE relocation) drowns the agent's own.
    logging.getLogger("sluice.libbpf").setLevel(max(logging.INFO, logging.getLogger().level))
    if not args.uninstall and not args.datastore:
        return _fail("--datastore URL is required (e.g. file:///var/lib/sluice/cluster)", 2, args)
    if not args.resync_interval > 0:
        return _fail("--resync-interval must be positive", 2, args)
    try:
        listen = parse_listen(args.listen)
        table_size = validate_table_size(args.maglev_table_size)
        failsafe = (*parse_failsafe(args.failsafe_inbound, inbound=True,
                                    option="--failsafe-inbound"),
                    FailsafePort(True, PROTOCOL_NUMBERS["tcp"], listen[1]),
                    *parse_failsafe(args.failsafe_outbound, inbound=False,
                                    option="--failsafe-outbound"))
    except ValueError as err:
        return _fail(str(err), 2, args)
    try:
        flow_events = FlowEventOptions(parse_flow_event_kinds(args.flow_events),
                                       _at_least(args.flow_events_sample, 1,
                                                 "--flow-events-sample"),
                                       _at_least(args.flow_events_rate, 0, "--flow-events-rate"),
                                       _at_least(args.flow_log_size, 1, "--flow-log-size"))
    except ValueError as err:
        return _fail(str(err), 2, args)
    try:
        masquerade = MasqueradeOptions(args.masquerade == "on",
                                       parse_nonmasq_cidrs(args.non_masquerade_cidrs),
                                       parse_port_range(args.masquerade_ports))
    except ValueError as err:
        return _fail(str(err), 2, args)
    try:
        map_sizes = parse_map_sizes(args.map_size)
        if map_sizes.get("lb_maglev", table_size) < table_size:
            raise ValueError(f"--map-size lb_maglev={map_sizes['lb_maglev']}: holds not one "
                             f"Maglev table of --maglev-table-size {table_size} slots")
    except ValueError as err:
        return _fail(str(err), 2, args)
    if args.cgroup is not None and not os.path.isdir(args.cgroup):
        return _fail(f"--cgroup {args.cgroup}: no such cgroup directory", 2, args)
    netfilter_problem = _netfilter_problem(args)
    if netfilter_problem is not None and not args.uninstall:
        return _fail(netfilter_problem, 2, args)
    lb = LbOptions(LbAlgorithm(args.lb_algorithm), table_size,
                   ExternalMode(args.external_lb_mode))
    config = AgentConfig(
        node=args.node, datastore_url=args.datastore or "",
        dataplane=Dataplane(args.dataplane), routing=RoutingMode(args.routing),
        netns=args.netns, cni_state_dir=args.cni_state_dir, pin_dir=args.pin_dir or "",
        listen=listen, uplink=args.uplink, resync_interval=args.resync_interval, lb=lb,
        cgroup=args.cgroup, allow_root_cgroup=args.allow_host_netns,
        failsafe=tuple(dict.fromkeys(failsafe)), flow_events=flow_events,
        netfilter_monitor=args.netfilter_monitor,
        netfilter_monitor_interval=args.netfilter_monitor_interval,
        netfilter_blocker=args.netfilter_blocker, masquerade=masquerade,
        map_sizes=tuple(map_sizes.items()))
    xtables.use(xtables.Backend(args.iptables_backend))
    if config.netns is not None:
        # Before anything starts a thread: every later thread inherits the namespace.
        try:
            netns.enter_for_process(config.netns)
        except (OSError, RuntimeError) as err:
            return _fail(f"cannot run in network namespace {config.netns}: {err}")
    elif not args.allow_host_netns and netns.in_initial_namespace() is not False:
        return _fail("refusing to run in the machine's own network namespace (or one that "
                     "cannot be told apart from it): pass --netns NAME, or --allow-host-netns "
                     "on a real node", 2, args)
    if args.uninstall:
        for line in uninstall(config):
            print(line)
        return 0
    if config.dataplane is Dataplane.BPF and config.masquerade.enabled:
        # In the node's namespace now: its ephemeral ports are the ones to avoid.
        problem = ports_problem(config.masquerade.ports)
        if problem is not None:
            return _fail(problem, 2, args)
    # A large cluster is millions of long-lived objects made at once; the default
    # thresholds re-walk them every few thousand allocations (2-3x a 10k-Service sync).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return run_agent(config)
    except StartupError as err:
        return _fail(str(err))
