"""The CNI protocol as Sluice speaks it: environment, network config, results and errors.

Network configuration (stdin, one JSON object)::

    {
      "cniVersion": "1.0.0",                 # required: 0.4.0, 1.0.0 or 1.1.0
      "name": "sluice",                      # required: the network name
      "type": "sluice-cni",                  # required: the binary the runtime ran
      "stateDir": "/run/sluice/<node>",      # required: absolute; one per node and network
      "mtu": 1450,                           # optional, 576..65535 (>= 1280 with IPv6); 1500
      "hostIfPrefix": "sl",                  # optional, 1-4 of [A-Za-z0-9_-]; "sl"
      "ipam": {
        "ranges": [["198.18.16.0/24"], ["fd00:10:1::/64"]]
      }
    }

`ipam.ranges` holds the pod CIDRs of this node: one list per address family (one or two
lists), each with one or more CIDRs of that family, used in order. A pod gets one address
per configured family. Every CIDR must leave at least one usable address once the network
address, the first host address (the node's own) and, for IPv4, the broadcast address are
set aside: IPv4 /30 or wider, IPv6 /126 or wider. `ipam.type` is accepted and ignored; any
other `ipam` field is refused as unsupported (code 2).

Other top-level fields (`runtimeConfig`, `args`, `capabilities`, `dns`, ...) are allowed and
ignored, except `prevResult` (read by CHECK) and `cni.dev/valid-attachments` (read by GC).
A missing or invalid required field is error 7 and the message names the field.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

DEFAULT_MTU = 1500
DEFAULT_HOST_IF_PREFIX = "sl"
MIN_MTU = 576
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535
MAX_IFNAME = 15

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_CONTAINER_ID_RE = _NAME_RE
_HOST_IF_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,4}$")
_IPAM_FIELDS = frozenset({"ranges", "type"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Code(IntEnum):
    """CNI error codes: the spec's well-known ones below 100, Sluice's own from 100."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    IPAM_EXHAUSTED = 100
    ENDPOINT_CONFLICT = 101
    CHECK_FAILED = 102
    NETLINK_FAILURE = 103
    INTERNAL = 199


class CniError(Exception):
    """An error the plugin reports to the runtime as CNI error JSON."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": cni_version, "code": int(self.code), "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


def config_error(field: str, problem: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, f"invalid network config: {field}: {problem}")


@dataclass(frozen=True, order=True)
class Attachment:
    """The primary key of everything the plugin stores: (containerID, ifname)."""

    container_id: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.container_id}/{self.ifname}"


@dataclass(frozen=True)
class Ranges:
    v4: tuple[ipaddress.IPv4Network, ...]
    v6: tuple[ipaddress.IPv6Network, ...]

    def families(self) -> tuple[tuple[Network, ...], ...]:
        return tuple(group for group in (self.v4, self.v6) if group)


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    state_dir: str
    mtu: int
    host_if_prefix: str
    ranges: Ranges
    prev_result: Mapping[str, Any] | None
    valid_attachments: frozenset[Attachment] | None


@dataclass(frozen=True)
class Env:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.container_id, self.ifname)

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


def decode(stdin: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(stdin)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CniError(Code.DECODE_FAILURE, f"network config is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise CniError(Code.DECODE_FAILURE, "network config must be a JSON object")
    return doc


def requested_version(stdin: bytes) -> str:
    """The cniVersion the runtime asked for, or the latest supported one if unusable."""
    try:
        doc = json.loads(stdin)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return LATEST_VERSION
    version = doc.get("cniVersion") if isinstance(doc, dict) else None
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def version_info(stdin: bytes) -> dict[str, Any]:
    return {"cniVersion": requested_version(stdin), "supportedVersions": list(SUPPORTED_VERSIONS)}


def parse_config(doc: Mapping[str, Any]) -> NetConf:
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise config_error("cniVersion", "required string is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version!r}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = _required_str(doc, "name")
    if not _NAME_RE.match(name):
        raise config_error("name", f"{name!r} must start with a letter or digit and contain "
                                   "only letters, digits, '_', '.' and '-'")
    plugin_type = _required_str(doc, "type")
    state_dir = _required_str(doc, "stateDir")
    if not os.path.isabs(state_dir):
        raise config_error("stateDir", f"{state_dir!r} is not an absolute path")
    prefix = doc.get("hostIfPrefix", DEFAULT_HOST_IF_PREFIX)
    if not isinstance(prefix, str) or not _HOST_IF_PREFIX_RE.match(prefix):
        raise config_error("hostIfPrefix", f"{prefix!r} must be 1 to 4 of [A-Za-z0-9_-]")
    ranges = _parse_ipam(doc.get("ipam"))
    mtu = _parse_mtu(doc.get("mtu", DEFAULT_MTU), ipv6=bool(ranges.v6))
    prev_result = doc.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise config_error("prevResult", "must be an object")
    return NetConf(
        cni_version=version,
        name=name,
        type=plugin_type,
        state_dir=state_dir,
        mtu=mtu,
        host_if_prefix=prefix,
        ranges=ranges,
        prev_result=prev_result,
        valid_attachments=_parse_valid_attachments(doc),
    )


def _required_str(doc: Mapping[str, Any], field: str) -> str:
    value = doc.get(field)
    if value is None:
        raise config_error(field, "required field is missing")
    if not isinstance(value, str) or not value:
        raise config_error(field, "must be a non-empty string")
    return value


def _parse_mtu(value: object, *, ipv6: bool) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise config_error("mtu", f"{value!r} is not an integer")
    if not MIN_MTU <= value <= MAX_MTU:
        raise config_error("mtu", f"{value} is outside {MIN_MTU}..{MAX_MTU}")
    if ipv6 and value < MIN_MTU_IPV6:
        raise config_error("mtu", f"{value} is below {MIN_MTU_IPV6}, the minimum for IPv6")
    return value


def _parse_ipam(ipam: object) -> Ranges:
    if ipam is None:
        raise config_error("ipam", "required field is missing")
    if not isinstance(ipam, dict):
        raise config_error("ipam", "must be an object")
    for key in ipam:
        if key not in _IPAM_FIELDS:
            raise CniError(Code.UNSUPPORTED_FIELD, f"unsupported field ipam.{key}",
                           f"ipam supports: {', '.join(sorted(_IPAM_FIELDS))}")
    sets = ipam.get("ranges")
    if sets is None:
        raise config_error("ipam.ranges", "required field is missing")
    if not isinstance(sets, list) or not sets:
        raise config_error("ipam.ranges", "must be a non-empty list of CIDR lists")
    if len(sets) > 2:
        raise config_error("ipam.ranges", "at most two lists: one per address family")
    by_family: dict[int, tuple[Network, ...]] = {}
    for i, cidrs in enumerate(sets):
        field = f"ipam.ranges[{i}]"
        networks = _parse_range_set(field, cidrs)
        family = networks[0].version
        if family in by_family:
            raise config_error(field, f"a second list of IPv{family} ranges")
        by_family[family] = networks
    v4 = tuple(n for n in by_family.get(4, ()) if isinstance(n, ipaddress.IPv4Network))
    v6 = tuple(n for n in by_family.get(6, ()) if isinstance(n, ipaddress.IPv6Network))
    return Ranges(v4=v4, v6=v6)


def _parse_range_set(field: str, cidrs: object) -> tuple[Network, ...]:
    if not isinstance(cidrs, list) or not cidrs:
        raise config_error(field, "must be a non-empty list of CIDR strings")
    networks: list[Network] = []
    for j, cidr in enumerate(cidrs):
        networks.append(parse_cidr(f"{field}[{j}]", cidr))
    if len({n.version for n in networks}) != 1:
        raise config_error(field, "mixes IPv4 and IPv6; use one list per family")
    for a_index, a in enumerate(networks):
        for b in networks[a_index + 1:]:
            if a.overlaps(b):
                raise config_error(field, f"{a} overlaps {b}")
    return tuple(networks)


def parse_cidr(field: str, cidr: object) -> Network:
    if not isinstance(cidr, str):
        raise config_error(field, f"{cidr!r} is not a CIDR string")
    if "/" not in cidr:
        raise config_error(field, f"{cidr!r} is not a valid CIDR (no prefix length)")
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as err:
        raise config_error(field, f"{cidr!r} is not a valid CIDR ({err})") from None
    longest = 30 if network.version == 4 else 126
    if network.prefixlen > longest:
        raise config_error(field, f"{cidr} is too small: IPv{network.version} ranges need "
                                  f"a prefix of /{longest} or shorter")
    return network


def _parse_valid_attachments(doc: Mapping[str, Any]) -> frozenset[Attachment] | None:
    raw = doc.get(VALID_ATTACHMENTS_KEY)
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise config_error(VALID_ATTACHMENTS_KEY, "must be a list")
    found: set[Attachment] = set()
    for i, item in enumerate(raw):
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise config_error(f"{VALID_ATTACHMENTS_KEY}[{i}]",
                               "must be an object with string containerID and ifname")
        found.add(Attachment(cid, ifname))
    return frozenset(found)


def parse_cni_args(raw: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(Code.INVALID_ENVIRONMENT,
                           f"CNI_ARGS: {pair!r} is not a KEY=VALUE pair")
        args[key] = value
    return args


def validate_ifname(name: str, field: str = "CNI_IFNAME") -> None:
    if (not name or len(name) > MAX_IFNAME or name in {".", ".."}
            or any(c in name for c in "/:") or any(c.isspace() for c in name)):
        raise CniError(Code.INVALID_ENVIRONMENT,
                       f"{field}: {name!r} is not a valid interface name (1-15 characters, "
                       "not '.' or '..', no '/', ':' or whitespace)")


def parse_env(environ: Mapping[str, str], *, need: Sequence[str]) -> Env:
    """Read the CNI_* variables; those named in NEED must be present and valid."""
    command = environ.get("CNI_COMMAND", "")
    values = {key: environ.get(key, "") for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")}
    for key in need:
        if not values[key]:
            raise CniError(Code.INVALID_ENVIRONMENT, f"{key} is required for {command}")
    container_id = values["CNI_CONTAINERID"]
    if container_id and not _CONTAINER_ID_RE.match(container_id):
        raise CniError(Code.INVALID_ENVIRONMENT,
                       f"CNI_CONTAINERID: {container_id!r} must start with a letter or digit "
                       "and contain only letters, digits, '_', '.' and '-'")
    if values["CNI_IFNAME"]:
        validate_ifname(values["CNI_IFNAME"])
    netns = values["CNI_NETNS"]
    if netns and not os.path.isabs(netns):
        raise CniError(Code.INVALID_ENVIRONMENT, f"CNI_NETNS: {netns!r} is not an absolute path")
    return Env(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=values["CNI_IFNAME"],
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
    )


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    mtu: int
    sandbox: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: Address
    interface: int


def result(cni_version: str, interfaces: Sequence[Interface],
           ips: Sequence[IPConfig]) -> dict[str, Any]:
    """An ADD result in the requested version's shape; one default route per address."""
    out_ifaces: list[dict[str, Any]] = []
    for iface in interfaces:
        entry: dict[str, Any] = {"name": iface.name, "mac": iface.mac}
        if cni_version == "1.1.0":
            entry["mtu"] = iface.mtu
        if iface.sandbox:
            entry["sandbox"] = iface.sandbox
        out_ifaces.append(entry)
    out_ips: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for ip in ips:
        entry = {"address": str(ip.address), "gateway": str(ip.gateway),
                 "interface": ip.interface}
        if cni_version == "0.4.0":
            entry["version"] = str(ip.address.version)
        out_ips.append(entry)
        default = "0.0.0.0/0" if ip.address.version == 4 else "::/0"
        routes.append({"dst": default, "gw": str(ip.gateway)})
    return {"cniVersion": cni_version, "interfaces": out_ifaces, "ips": out_ips,
            "routes": routes, "dns": {}}


def result_addresses(prev: Mapping[str, Any]) -> set[Address]:
    """The IP addresses a (previous) result lists, without their prefix lengths."""
    ips = prev.get("ips")
    if not isinstance(ips, list):
        raise config_error("prevResult.ips", "must be a list")
    found: set[Address] = set()
    for i, ip in enumerate(ips):
        address = ip.get("address") if isinstance(ip, dict) else None
        if not isinstance(address, str):
            raise config_error(f"prevResult.ips[{i}].address", "must be a CIDR string")
        try:
            found.add(ipaddress.ip_interface(address).ip)
        except ValueError:
            raise config_error(f"prevResult.ips[{i}].address",
                               f"{address!r} is not an address in CIDR form") from None
    return found
