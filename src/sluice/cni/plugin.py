"""`sluice-cni`: the executable a container runtime runs, once per CNI command.

Contract: `CNI_COMMAND` (ADD, DEL, CHECK, VERSION, STATUS, GC), `CNI_CONTAINERID`,
`CNI_NETNS` (a path), `CNI_IFNAME`, `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..`) in
the environment; the network config (see `sluice.cni.spec`) on stdin. ADD prints the CNI
result on stdout; VERSION prints the supported versions; DEL, CHECK, STATUS and GC print
nothing. Failures print CNI error JSON on stdout and exit 1 (codes in `spec.Code`).

The plugin must run in the node's network namespace: the host end of each veth stays in
the namespace the plugin runs in. Everything that changes state holds the IPAM lock, and a
failed ADD undoes every step it took before reporting the error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from pyroute2.netlink.exceptions import NetlinkError

from sluice.cni import podnet, registry, spec
from sluice.cni.ipam import Ipam
from sluice.cni.registry import EndpointRecord
from sluice.cni.spec import Attachment, CniError, Code, Env, NetConf

ADD_ENV = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
DEL_ENV = ("CNI_CONTAINERID", "CNI_IFNAME")

Output = dict[str, Any] | None


def as_cni_error(exc: Exception) -> CniError:
    if isinstance(exc, CniError):
        return exc
    if isinstance(exc, podnet.PodNetError | NetlinkError):
        return CniError(Code.NETLINK_FAILURE, f"netlink: {exc}")
    if isinstance(exc, OSError):
        return CniError(Code.IO_FAILURE, f"I/O failure: {exc}")
    return CniError(Code.INTERNAL, f"internal error: {exc!r}",
                    "".join(traceback.format_exception(exc, limit=-3)))


class Rollback:
    """Undo steps, run newest first, each one best-effort."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def run(self) -> list[str]:
        failures: list[str] = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as err:
                failures.append(f"{what}: {err}")
        return failures


def _require_netns(path: str) -> None:
    if not os.path.exists(path):
        raise CniError(Code.UNKNOWN_CONTAINER, f"CNI_NETNS {path} does not exist")
    if not podnet.is_netns(path):
        raise CniError(Code.INVALID_ENVIRONMENT, f"CNI_NETNS {path} is not a network namespace")
    mine, theirs = os.stat("/proc/thread-self/ns/net"), os.stat(path)
    if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
        raise CniError(Code.INVALID_ENVIRONMENT,
                       f"CNI_NETNS {path} is the node's own namespace, not a pod's")


def _ipam(conf: NetConf) -> Ipam:
    return Ipam(conf.state_dir)


def _result(cni_version: str, record: EndpointRecord) -> dict[str, Any]:
    interfaces = [
        spec.Interface(record.host_ifname, record.host_mac, record.mtu),
        spec.Interface(record.ifname, record.pod_mac, record.mtu, sandbox=record.netns),
    ]
    ips = [spec.IPConfig(ipaddress.ip_interface(f"{a}/{a.max_prefixlen}"), podnet.gateway(a), 1)
           for a in record.addresses]
    return spec.result(cni_version, interfaces, ips)


def _verify(conf: NetConf, record: EndpointRecord) -> list[str]:
    owner = Attachment(record.container_id, record.ifname)
    owned = {a.address for a in _ipam(conf).owned_by(owner)}
    problems = [f"{a} is not allocated to {owner}" for a in record.addresses if a not in owned]
    problems += podnet.verify_host(record.host_ifname, record.host_ifindex, record.host_mac,
                                   record.mtu)
    problems += podnet.verify_pod(record.netns, record.ifname, mac=record.pod_mac,
                                  mtu=record.mtu, host_mac=record.host_mac,
                                  addresses=record.addresses)
    return problems


def _read_record(conf: NetConf, owner: Attachment, code: Code) -> EndpointRecord | None:
    try:
        return registry.read_record(conf.state_dir, owner.container_id, owner.ifname)
    except ValueError as err:
        raise CniError(code, f"endpoint record of {owner} is unreadable ({err})") from None


def add(conf: NetConf, env: Env) -> Output:
    _require_netns(env.netns)
    owner = env.attachment
    host = podnet.host_ifname(conf.host_if_prefix, env.container_id, env.ifname)
    with _ipam(conf).locked():
        existing = _read_record(conf, owner, Code.ENDPOINT_CONFLICT)
        if existing is not None:
            return _readd(conf, env, existing)
        _refuse_leftovers(conf, env, host)
        record = _wire(conf, env, host)
    registry.notify_agent(conf.state_dir, record.key)
    return _result(conf.cni_version, record)


def _readd(conf: NetConf, env: Env, existing: EndpointRecord) -> Output:
    if existing.netns != env.netns:
        raise CniError(Code.ENDPOINT_CONFLICT,
                       f"{env.attachment} is already attached in {existing.netns}")
    problems = _verify(conf, existing)
    if problems:
        raise CniError(Code.ENDPOINT_CONFLICT,
                       f"{env.attachment} already exists but is inconsistent ({problems[0]}); "
                       "DEL it first",
                       "; ".join(problems))
    return _result(conf.cni_version, existing)


def _refuse_leftovers(conf: NetConf, env: Env, host: str) -> None:
    held = _ipam(conf).owned_by(env.attachment)
    if held:
        listed = ", ".join(str(a.address) for a in held)
        raise CniError(Code.ENDPOINT_CONFLICT,
                       f"{env.attachment} holds {listed} but has no endpoint record "
                       "(an interrupted ADD?); DEL it first")
    if podnet.host_link(host) is not None:
        raise CniError(Code.ENDPOINT_CONFLICT, f"host interface {host} already exists")
    if podnet.pod_link(env.netns, env.ifname) is not None:
        raise CniError(Code.ENDPOINT_CONFLICT,
                       f"{env.netns} already has an interface named {env.ifname}")
    wanted = {family[0].version for family in conf.ranges.families()}
    taken = sorted(wanted & podnet.default_route_families(env.netns))
    if taken:
        raise CniError(Code.ENDPOINT_CONFLICT,
                       f"{env.netns} already has an IPv{taken[0]} default route "
                       "(another attachment?); Sluice must own the pod's default routes")


def _wire(conf: NetConf, env: Env, host: str) -> EndpointRecord:
    ipam = _ipam(conf)
    owner = env.attachment
    rollback = Rollback()
    try:
        rollback.push("releasing addresses", lambda: ipam.release(owner))
        addresses = [ipam.allocate(family, owner) for family in conf.ranges.families()]
        rollback.push(f"deleting {host}", lambda: podnet.delete_host_link(host))
        host_side, pod_side = podnet.create_pair(env.netns, env.ifname, host, conf.mtu)
        podnet.bring_up_host(host_side)
        podnet.configure_pod(env.netns, pod_side, host_side.mac, addresses)
        record = EndpointRecord(
            container_id=env.container_id,
            ifname=env.ifname,
            netns=env.netns,
            pod_namespace=env.pod_namespace,
            pod_name=env.pod_name,
            host_ifname=host,
            host_ifindex=host_side.index,
            host_mac=host_side.mac,
            pod_mac=pod_side.mac,
            ipv4=next((a for a in addresses if isinstance(a, ipaddress.IPv4Address)), None),
            ipv6=next((a for a in addresses if isinstance(a, ipaddress.IPv6Address)), None),
            mtu=conf.mtu,
            created_at=registry.now(),
        )
        rollback.push("removing the endpoint record",
                      lambda: registry.remove_record(conf.state_dir, *_key(owner)))
        registry.write_record(conf.state_dir, record)
        return record
    except Exception as exc:
        err = as_cni_error(exc)
        failures = rollback.run()
        if failures:
            err.details = "; ".join(filter(None, [err.details, "rollback incomplete: "
                                                  + "; ".join(failures)]))
        raise err from exc
    except BaseException:
        rollback.run()
        raise


def _key(owner: Attachment) -> tuple[str, str]:
    return owner.container_id, owner.ifname


def _detach(conf: NetConf, owner: Attachment) -> bool:
    """Remove everything of OWNER that is left; True if anything was."""
    record: EndpointRecord | None = None
    ours = True
    try:
        record = registry.read_record(conf.state_dir, *_key(owner))
    except registry.ForeignRecordError:
        ours = False
    except ValueError:
        pass
    names = {podnet.host_ifname(conf.host_if_prefix, *_key(owner))}
    if record is not None:
        names.add(record.host_ifname)
    deleted = [podnet.delete_host_link(name) for name in sorted(names)]
    released = _ipam(conf).release(owner)
    removed = ours and registry.remove_record(conf.state_dir, *_key(owner))
    return any(deleted) or bool(released) or removed


def delete(conf: NetConf, env: Env) -> Output:
    with _ipam(conf).locked():
        changed = _detach(conf, env.attachment)
    if changed:
        registry.notify_agent(conf.state_dir, registry.record_key(*_key(env.attachment)))
    return None


def check(conf: NetConf, env: Env) -> Output:
    if conf.prev_result is None:
        raise spec.config_error("prevResult", "CHECK needs the result of the previous ADD")
    owner = env.attachment
    record = _read_record(conf, owner, Code.CHECK_FAILED)
    if record is None:
        raise CniError(Code.CHECK_FAILED, f"no endpoint record for {owner}")
    problems: list[str] = []
    if record.netns != env.netns:
        problems.append(f"endpoint is in {record.netns}, not {env.netns}")
    listed = spec.result_addresses(conf.prev_result)
    if listed != set(record.addresses):
        problems.append(f"prevResult lists {sorted(map(str, listed))}, the endpoint has "
                        f"{[str(a) for a in record.addresses]}")
    families = {n[0].version for n in conf.ranges.families()}
    problems += [f"no IPv{v} address although ipam.ranges has IPv{v}"
                 for v in sorted(families - {a.version for a in record.addresses})]
    problems += _verify(conf, record)
    if problems:
        raise CniError(Code.CHECK_FAILED, f"CHECK of {owner} failed: {problems[0]}",
                       "; ".join(problems))
    return None


def status(conf: NetConf, env: Env) -> Output:
    state = Path(conf.state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / f".status.{os.getpid()}"
        probe.write_text("ok\n")
        probe.unlink()
    except OSError as err:
        raise CniError(Code.NOT_AVAILABLE, f"state directory {state} is not writable: {err}"
                       ) from None
    ipam = _ipam(conf)
    for family in conf.ranges.families():
        if sum(ipam.free_count(n) for n in family) == 0:
            raise CniError(Code.NOT_AVAILABLE,
                           f"no free address left in {', '.join(map(str, family))}")
    return None


def gc(conf: NetConf, env: Env) -> Output:
    if conf.valid_attachments is None:
        raise spec.config_error(spec.VALID_ATTACHMENTS_KEY, "GC needs the list of valid "
                                                            "attachments")
    ipam = _ipam(conf)
    with ipam.locked():
        known = {Attachment(r.container_id, r.ifname)
                 for r in registry.list_records(conf.state_dir)}
        known |= {a.owner for a in ipam.allocations() if a.owner is not None}
        stale = sorted(known - conf.valid_attachments)
        failures: list[str] = []
        for owner in stale:
            try:
                _detach(conf, owner)
            except Exception as exc:
                failures.append(f"{owner}: {as_cni_error(exc).msg}")
        ipam.release_unowned()
    for owner in stale:
        registry.notify_agent(conf.state_dir, registry.record_key(*_key(owner)))
    if failures:
        raise CniError(Code.IO_FAILURE, f"GC left {len(failures)} of {len(stale)} stale "
                       "attachment(s) behind", "; ".join(failures))
    return None


Handler = Callable[[NetConf, Env], Output]

HANDLERS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "ADD": (add, ADD_ENV),
    "DEL": (delete, DEL_ENV),
    "CHECK": (check, ADD_ENV),
    "STATUS": (status, ()),
    "GC": (gc, ()),
}


def dispatch(environ: Mapping[str, str], stdin: bytes) -> Output:
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return spec.version_info(stdin)
    if command not in HANDLERS:
        raise CniError(Code.INVALID_ENVIRONMENT,
                       f"CNI_COMMAND {command!r} is not one of {', '.join(spec.COMMANDS)}")
    handler, need = HANDLERS[command]
    conf = spec.parse_config(spec.decode(stdin))
    return handler(conf, spec.parse_env(environ, need=need))


def run(environ: Mapping[str, str], stdin: bytes, stdout: TextIO, stderr: TextIO) -> int:
    try:
        output = dispatch(environ, stdin)
    except Exception as exc:
        err = as_cni_error(exc)
        stdout.write(json.dumps(err.to_json(spec.requested_version(stdin))) + "\n")
        command = environ.get("CNI_COMMAND", "?")
        stderr.write(f"sluice-cni {command}: error {int(err.code)}: {err.msg}\n")
        return 1
    if output is not None:
        stdout.write(json.dumps(output) + "\n")
    return 0


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    stdin = b""
    with contextlib.suppress(OSError):
        if sys.stdin is not None and not sys.stdin.isatty():
            stdin = sys.stdin.buffer.read()
    sys.exit(run(os.environ, stdin, sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
