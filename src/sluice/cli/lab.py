"""`sluice lab ...`: a multi-node cluster on this machine, in network namespaces."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sluice.apply import xtables
from sluice.cli.apply import load_resources
from sluice.lab import cleanup, lifecycle, names, procs, shell, views
from sluice.lab.errors import LabError
from sluice.lab.interrupts import Terminated
from sluice.lab.manifests import apply_resources, delete_resources
from sluice.lab.plan import (
    DATAPLANES,
    DATASTORES,
    IP_FAMILIES,
    MAX_NODES,
    ROUTINGS,
    LabOptions,
    parse_node_dataplanes,
)
from sluice.lab.probe import DEFAULT_TIMEOUT, MAX_COUNT, PROTOCOLS, Probe, report, report_many
from sluice.lab.restart import restart_agent
from sluice.lab.state import LabState, load_ready, locked
from sluice.lab.switch import switch as switch_node
from sluice.lab.targets import resolve_destination, resolve_place

DESCRIPTION = """\
A Sluice cluster on this machine. Every node is a network namespace running a real
`sluice agent` with its own bpffs pin directory and cgroup; pods are namespaces wired by
the real `sluice-cni`, each running a server that answers on every declared containerPort
(TCP and UDP) with '<pod name> <client IP>'; an external namespace sits outside the
cluster on the underlay. Must run as root. Several labs can run side by side (--name).

Layout of lab NAME:
  namespaces  sl-NAME-underlay (bridge br0), sl-NAME-node<i>, sl-NAME-external,
              sl-NAME-p-<hash> per pod
  addresses   underlay 198.18.0.0/24 + fd00:ff::/64: node i .10+i, external .250;
              pods of node i 198.18.(16+i).0/24 + fd00:10:i::/64;
              service clusterIPs 198.19.0.0/16 + fd00:96::/108;
              LoadBalancer IPs 198.18.200.0/24 + fd00:97::/112 (external routes
              them via node1)
  state       /run/sluice/labs/NAME/ (state.json, datastore/, nodes/<node>/agent.log,
              nodes/<node>/cni/, pods/<ns>_<pod>.log)
  pins        /sys/fs/bpf/sluice-lab-NAME/<node>/
  cgroups     <cgroup2>/sluice-lab-NAME/<node>/ (agent), .../<node>/host/ (probes and
              exec on the node), .../<node>/pods/<ns>_<pod>/ (pod server, probes, exec),
              <cgroup2>/sluice-lab-NAME/{external,underlay}/"""

EPILOG = """\
examples:
  sluice lab up -f examples/lab-demo.yaml
  sluice lab get pods
  sluice lab probe demo/client demo/web-1 8080 --protocol UDP -o json
  sluice lab probe demo/client svc/demo/web 80 --count 20
  sluice lab probe external nodeport/node2/demo/web 80 --family 6
  sluice lab exec node/node1 -- ip route
  sluice lab down"""


def _name_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=names.DEFAULT_LAB, type=_lab_name,
                        help=f"the lab's name (default: {names.DEFAULT_LAB}); 1-16 of "
                             "[a-z0-9-], starting with a letter")


def _lab_name(text: str) -> str:
    try:
        return names.check_lab_name(text)
    except LabError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _files_arg(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("-f", "--filename", dest="paths", metavar="PATH", action="append",
                        required=required, default=None if required else [],
                        help="a manifest file, or a directory of *.yaml/*.yml/*.json; repeat "
                             "for more")


def _output_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="output format (default: table)")


def _sub(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
         description: str, handler: Callable[[argparse.Namespace], int]
         ) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _name_arg(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("lab", help="a multi-node cluster on this machine, in namespaces",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)
    lab = parser.add_subparsers(dest="lab_command", metavar="COMMAND")

    up = _sub(lab, "up", "create a lab", """\
Create a lab: namespaces, underlay, one agent per node (waits until each answers
/healthz), then the manifests given with -f. Prints a line per step. If anything fails,
or the command is interrupted (Ctrl-C, SIGTERM), everything made so far is removed.""",
              _up)
    up.add_argument("--nodes", type=int, default=2,
                    help=f"number of nodes, 1-{MAX_NODES} (default: 2)")
    up.add_argument("--dataplane", choices=DATAPLANES, default="bpf",
                    help="bpf (eBPF host routing) or iptables (the host stack); default bpf")
    up.add_argument("--routing", choices=ROUTINGS, default="vxlan",
                    help="between nodes: vxlan overlay or native routing; default vxlan")
    up.add_argument("--ip-family", choices=IP_FAMILIES, default="dual",
                    help="address families of nodes, pods and services; default dual")
    up.add_argument("--datastore", choices=DATASTORES, default="file",
                    help="where the lab's objects live: a directory (file) or an etcd the lab "
                         "runs in its underlay namespace at 198.18.0.2:2379 (etcd); "
                         "default file")
    up.add_argument("--node-dataplane", metavar="NODE=DATAPLANE[,...]", default="",
                    help="run these nodes on another dataplane than --dataplane, e.g. "
                         "node2=iptables (a mixed cluster)")
    up.add_argument("--masquerade", action="store_true",
                    help="agents SNAT pod traffic leaving the cluster to the node's address "
                         "(--masquerade on); default off here, as the underlay routes pod "
                         "CIDRs (the agent's own default is on)")
    up.add_argument("--non-masquerade-cidrs", metavar="LIST", default="",
                    help="the agents' --non-masquerade-cidrs (default: theirs)")
    up.add_argument("--iptables-backend", choices=[b.value for b in xtables.Backend],
                    default=xtables.Backend.SYSTEM.value,
                    help="the iptables-mode agents' --iptables-backend (default: "
                         "%(default)s)")
    _files_arg(up, required=False)

    _sub(lab, "down", "remove a lab and everything it made", """\
Remove everything lab NAME made: its processes (agents, pod servers, anything started
with `lab exec`), namespaces, bpffs pins, cgroups and state directory. Works on a
partially created lab too, and does nothing when there is nothing left.""", _down)

    _sub(lab, "list", "list the labs on this machine",
         "List the labs that have a state directory under /run/sluice/labs.", _list)

    apply = _sub(lab, "apply", "create or update objects in a lab", """\
Apply manifests to a lab: Namespaces, Pods, Services, EndpointSlices, NetworkPolicies.
Pods are scheduled (spec.nodeName, else the node with fewest pods), wired by sluice-cni
and run a server on each containerPort; Services without clusterIP get one. Every file
is checked first: on any problem nothing changes.""", _apply)
    _files_arg(apply, required=True)

    delete = _sub(lab, "delete", "delete objects from a lab", """\
Delete the objects named in the manifests (pods are torn down: server, sluice-cni DEL,
namespace). Objects that do not exist are an error (nothing changes) unless
--ignore-not-found.""", _delete)
    _files_arg(delete, required=True)
    delete.add_argument("--ignore-not-found", action="store_true",
                        help="skip objects that do not exist")

    get = _sub(lab, "get", "show nodes, pods or services",
               "Show the lab's nodes (with agent status), pods and services.", _get)
    get.add_argument("kind", nargs="?", choices=views.KINDS, help="what to show (default: all)")
    _output_arg(get)

    switch = _sub(lab, "switch", "restart a node's agent with another dataplane", """\
Stop NODE's agent (SIGTERM) and start it with --dataplane, waiting until it answers
/healthz. Established TCP and UDP flows survive: the new agent carries the conntrack
state across before it removes what the old dataplane installed. The node's dataplane is
recorded in the lab state (lab status shows it).""", _switch)
    switch.add_argument("node", metavar="NODE")
    switch.add_argument("--dataplane", choices=DATAPLANES, required=True,
                        help="the dataplane to run the node on")

    restart = _sub(lab, "restart-agent", "stop a node's agent and start it again", """\
Stop NODE's agent (SIGTERM, or SIGKILL with --kill: as a crash would) and start it
again, waiting until it answers /healthz. The datapath keeps forwarding meanwhile (pinned
maps and links, or iptables rules); the new agent adopts it and reconciles by diff.""",
                   _restart_agent)
    restart.add_argument("node", metavar="NODE")
    restart.add_argument("--kill", action="store_true",
                         help="SIGKILL the agent instead of SIGTERM")

    status = _sub(lab, "status", "show each node's dataplane and agent",
                  "Show the lab's options and, per node, its dataplane and agent.", _status)
    _output_arg(status)

    execute = _sub(lab, "exec", "run a command in a node, pod, external or underlay", """\
Run COMMAND in TARGET's network namespace (NS/POD, node/NODE, external or underlay) and
cgroup (the pod's, the node's host/, or the lab's external/ or underlay/), with this
terminal. Exits with the command's exit status.""", _exec)
    execute.add_argument("target", metavar="TARGET")
    execute.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    probe = _sub(lab, "probe", "connect from one place to another and report who answered", """\
One TCP connection (or UDP datagram) from FROM to TO on PORT, made by a process in FROM's
network namespace and cgroup (a pod's, the node's host/ cgroup, the external one), so
cgroup socket hooks see it as one of FROM's. Prints the result (connected, refused,
timeout, error), the pod that answered (peer), the client address it saw (client_ip)
and the latency. Exits 0 only when connected (with --count: every time).

FROM:  NS/POD | node/NODE | external
TO:    NS/POD                 the pod's IP
       svc/NS/NAME            the Service's clusterIP
       nodeport/NODE/NS/NAME  NODE's InternalIP, on the nodePort of the Service's port
                              PORT (and --protocol); PORT is the service port
       lb/NS/NAME             the Service's load balancer (status.loadBalancer.ingress) IP
       node/NODE              the node's InternalIP
       an IP address
The address is of --family; without it, of the IP given, the Service's primary family
(svc/, nodeport/), the first ingress IP (lb/), or the lab's first family.

--count N makes N connections one after the other (a new socket and source port each,
unless --source-port) and prints each, then a summary: how many had each result and
which peers answered how often (-o json: "count", "results", "peers", "client_ips",
"probes": [...]; "result" is connected only when all were, else the first other one).""",
                 _probe)
    probe.add_argument("source", metavar="FROM")
    probe.add_argument("destination", metavar="TO")
    probe.add_argument("port", metavar="PORT", type=int)
    probe.add_argument("--count", type=int, default=1, metavar="N",
                       help="make N connections one after the other (default: 1)")
    probe.add_argument("--source-port", type=int, metavar="PORT",
                       help="bind the client socket to this local port (SO_REUSEADDR), "
                            "e.g. to send the same flow to different nodes")
    probe.add_argument("--protocol", type=str.upper, choices=PROTOCOLS, default="TCP",
                       help="TCP (default) or UDP")
    probe.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"how long to wait for each answer (default: {DEFAULT_TIMEOUT:g})")
    probe.add_argument("--family", type=int, choices=(4, 6),
                       help="IP family of TO (default: see above)")
    _output_arg(probe)


def _say(line: str) -> None:
    print(line, flush=True)


def _guarded(args: argparse.Namespace, body: Callable[[], int]) -> int:
    try:
        return body()
    except LabError as err:
        print(f"sluice lab {args.lab_command}: {err}", file=sys.stderr, flush=True)
        return 1
    except Terminated as err:
        return 128 + err.signum


def _up(args: argparse.Namespace) -> int:
    resources = load_resources("sluice lab up", args.paths)
    if resources is None:
        return 1

    def body() -> int:
        options = LabOptions(nodes=args.nodes, dataplane=args.dataplane, routing=args.routing,
                             ip_family=args.ip_family, datastore=args.datastore,
                             node_dataplanes=parse_node_dataplanes(args.node_dataplane),
                             masquerade=args.masquerade,
                             non_masquerade_cidrs=args.non_masquerade_cidrs,
                             iptables_backend=args.iptables_backend)
        lifecycle.up(args.name, options, resources, _say)
        _say(f"next: sluice lab get --name {args.name} | sluice lab down --name {args.name}")
        return 0

    return _guarded(args, body)


def _down(args: argparse.Namespace) -> int:
    def body() -> int:
        removed = cleanup.remove_lab(args.name, _say)
        for problem in removed.problems:
            print(f"sluice lab down: {problem}", file=sys.stderr)
        return 1 if removed.problems else 0

    return _guarded(args, body)


def _list(args: argparse.Namespace) -> int:
    root = names.STATE_ROOT
    labs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for lab in labs:
        print(lab)
    return 0


def _change(args: argparse.Namespace, command: str) -> int:
    resources = load_resources(f"sluice lab {command}", args.paths)
    if resources is None:
        return 1

    def body() -> int:
        with locked(args.name):
            state = load_ready(args.name)
            if command == "apply":
                apply_resources(state, resources, _say)
            else:
                delete_resources(state, resources, _say, args.ignore_not_found)
        return 0

    return _guarded(args, body)


def _apply(args: argparse.Namespace) -> int:
    return _change(args, "apply")


def _delete(args: argparse.Namespace) -> int:
    return _change(args, "delete")


def _datastore(state: LabState) -> dict[str, Any]:
    """The lab's datastore: what the agents use, and how to reach it from this host."""
    paths = state.paths
    doc: dict[str, Any] = {"type": state.options.datastore, "url": paths.agent_datastore_url}
    if state.etcd is not None:
        doc["netns"] = names.underlay_netns(state.name)
        doc["etcd"] = {"pid": state.etcd.pid, "running": procs.is_running(state.etcd),
                       "dataDir": str(paths.etcd_data), "log": state.etcd.log}
    return doc


def _datastore_line(state: LabState) -> str:
    doc = _datastore(state)
    if "etcd" not in doc:
        return f"datastore: {doc['url']}"
    etcd = doc["etcd"]
    return (f"datastore: {doc['url']} in namespace {doc['netns']} (etcd pid {etcd['pid']}, "
            f"{'running' if etcd['running'] else 'stopped'}); write to it with: sluice apply "
            f"-f FILE --datastore {doc['url']} --netns {doc['netns']}")


def _get(args: argparse.Namespace) -> int:
    def body() -> int:
        state = load_ready(args.name)
        kinds = [args.kind] if args.kind else list(views.KINDS)
        rows = {kind: views.ROWS[kind](state) for kind in kinds}
        if args.output == "json":
            doc: Any = rows[args.kind] if args.kind else {"datastore": _datastore(state),
                                                          **rows}
            print(json.dumps(doc, indent=2))
            return 0
        if not args.kind:
            print(_datastore_line(state) + "\n")
        print("\n\n".join(views.table(kind, rows[kind]) for kind in kinds))
        return 0

    return _guarded(args, body)


def _switch(args: argparse.Namespace) -> int:
    def body() -> int:
        switch_node(args.name, args.node, args.dataplane, _say)
        return 0

    return _guarded(args, body)


def _restart_agent(args: argparse.Namespace) -> int:
    def body() -> int:
        restart_agent(args.name, args.node, kill=args.kill, say=_say)
        return 0

    return _guarded(args, body)


def _status(args: argparse.Namespace) -> int:
    def body() -> int:
        state = load_ready(args.name)
        options = state.options
        nodes = [{**row, "dataplane": options.dataplane_of(row["name"])}
                 for row in views.node_rows(state)]
        if args.output == "json":
            print(json.dumps({"name": state.name, "routing": options.routing,
                              "ipFamily": options.ip_family, "datastore": _datastore(state),
                              "nodes": nodes}, indent=2))
            return 0
        print(f"lab {state.name}: {len(nodes)} nodes, {options.routing} routing, "
              f"{options.ip_family}")
        print(_datastore_line(state))
        for row in nodes:
            agent = row["agent"]
            print(f"{row['name']:<8} {row['dataplane']:<9} agent pid {agent['pid']} "
                  f"{agent['status']}")
        return 0

    return _guarded(args, body)


def _exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]

    def body() -> int:
        state = load_ready(args.name)
        return shell.run_in(resolve_place(state, args.target, allow_underlay=True), command)

    return _guarded(args, body)


def _probe(args: argparse.Namespace) -> int:
    def body() -> int:
        if not 1 <= args.port <= 65535:
            raise LabError(f"PORT must be 1-65535, got {args.port}")
        if args.timeout <= 0:
            raise LabError(f"--timeout must be positive, got {args.timeout:g}")
        if not 1 <= args.count <= MAX_COUNT:
            raise LabError(f"--count must be 1-{MAX_COUNT}, got {args.count}")
        if args.source_port is not None and not 1 <= args.source_port <= 65535:
            raise LabError(f"--source-port must be 1-65535, got {args.source_port}")
        state = load_ready(args.name)
        source = resolve_place(state, args.source)
        target = resolve_destination(state, args.destination, args.family, args.port,
                                     args.protocol)
        probe = Probe(source.netns, target.address, target.port, args.protocol,
                      args.timeout, cgroup=source.cgroup, source_port=args.source_port)
        context: dict[str, Any] = {"from": source.label, "to": target.label,
                                   "address": target.address, "port": target.port}
        if target.service_port is not None:
            context["service_port"] = target.service_port
        context.update(protocol=args.protocol, family=target.family)
        if args.source_port is not None:
            context["source_port"] = args.source_port
        outcomes = probe.repeat(args.count)
        if args.count == 1:
            doc = report(outcomes[0], **context)
            lines = [_probe_line(doc, doc)]
        else:
            doc = report_many(outcomes, **context)
            lines = [_probe_line(doc, one) for one in doc["probes"]] + [_summary_line(doc)]
        if args.output == "json":
            print(json.dumps(doc, indent=2))
        else:
            print("\n".join(lines))
        return 0 if doc["result"] == "connected" else 1

    return _guarded(args, body)


def _probe_line(doc: dict[str, Any], one: dict[str, Any]) -> str:
    """One probe ONE (result, peer, client_ip, latency_ms, error) of the report DOC."""
    address = f"[{doc['address']}]" if doc["family"] == 6 else doc["address"]
    line = f"{one['result']:<9}  {doc['from']} -> {doc['to']} ({address}:{doc['port']}/" \
           f"{doc['protocol']})"
    if one["peer"]:
        line += f"  peer={one['peer']} client_ip={one['client_ip']}"
    if one["latency_ms"] is not None:
        line += f"  {one['latency_ms']:.2f} ms"
    if one["error"]:
        line += f"  ({one['error']})"
    return line


def _summary_line(doc: dict[str, Any]) -> str:
    def listed(counts: dict[str, int]) -> str:
        return " ".join(f"{key}={count}" for key, count in counts.items()) or "-"

    return (f"{doc['count']} probes: {listed(doc['results'])}; "
            f"peers: {listed(doc['peers'])}")
