"""Datastore URLs and their options.

    file:///abs/dir, file://relative/dir        [?poll=S]
    etcd://HOST:PORT[,HOST:PORT...]             [?prefix=/sluice/v1&timeout=S&netns=NAME]
    kubernetes://                               in-cluster
    kubernetes://?kubeconfig=PATH&context=NAME  (parsed by the Kubernetes datastore)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

SUPPORTED_SCHEMES = ("file", "etcd", "kubernetes")
PLANNED_SCHEMES: tuple[str, ...] = ()
FILE_OPTIONS = ("poll",)
ETCD_OPTIONS = ("prefix", "timeout", "netns")
ETCD_DEFAULT_PORT = 2379
ETCD_DEFAULT_PREFIX = "/sluice/v1"
ETCD_DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class FileLocation:
    """Where a file datastore lives, and how often it polls (None: the default)."""

    directory: Path
    poll_interval: float | None = None


@dataclass(frozen=True)
class EtcdLocation:
    """The etcd members to try in order, the key prefix, the request timeout, and the
    network namespace to connect from (None: the caller's)."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str = ETCD_DEFAULT_PREFIX
    timeout: float = ETCD_DEFAULT_TIMEOUT
    netns: str | None = None


def _schemes_hint() -> str:
    hint = f"supported: {', '.join(f'{scheme}://' for scheme in SUPPORTED_SCHEMES)}"
    if PLANNED_SCHEMES:
        hint += f" (planned: {', '.join(f'{scheme}://' for scheme in PLANNED_SCHEMES)})"
    return hint


def url_scheme(url: str) -> str:
    """The scheme of a datastore URL; ValueError if `url` has none or one not supported."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"invalid datastore URL {url!r}: expected scheme://location, e.g. "
            f"file:///var/lib/sluice/manifests; {_schemes_hint()}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme in SUPPORTED_SCHEMES:
        return scheme
    if scheme in PLANNED_SCHEMES:
        raise ValueError(
            f"datastore URL {url!r}: the {scheme} datastore is not available yet; {_schemes_hint()}"
        )
    raise ValueError(f"datastore URL {url!r}: unknown scheme {scheme!r}; {_schemes_hint()}")


def parse_file_url(url: str) -> FileLocation:
    """The directory and options of a `file://` URL.

    `file:///abs/dir` is absolute; `file://relative/dir` is relative to the working
    directory (the part before the first slash is read as a directory, not a host).
    The only option is `poll`, the polling interval in seconds: `file:///dir?poll=0.5`.
    """
    if url_scheme(url) != "file":
        raise ValueError(f"not a file datastore URL: {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ValueError(f"invalid datastore URL {url!r}: {err}") from None
    if parts.fragment:
        raise ValueError(f"invalid datastore URL {url!r}: a fragment (#...) is not allowed")
    location = unquote(parts.netloc + parts.path)
    if not location:
        raise ValueError(
            f"invalid datastore URL {url!r}: no directory; expected file:///abs/dir "
            "or file://relative/dir"
        )
    if "\0" in location:
        raise ValueError(f"invalid datastore URL {url!r}: the path contains a NUL byte")
    return FileLocation(Path(location), _poll_interval(url, parts.query))


def _poll_interval(url: str, query: str) -> float | None:
    poll: float | None = None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"invalid datastore URL {url!r}: malformed query {query!r}") from None
    for name, value in pairs:
        if name not in FILE_OPTIONS:
            raise ValueError(
                f"invalid datastore URL {url!r}: unknown option {name!r}; "
                f"file:// takes {', '.join(FILE_OPTIONS)}"
            )
        poll = _positive(url, "poll", value)
    return poll


def parse_etcd_url(url: str) -> EtcdLocation:
    """The members and options of an `etcd://HOST:PORT[,HOST:PORT...]` URL.

    HOST is a name, an IPv4 address or a bracketed IPv6 address; PORT defaults to 2379.
    Options: `prefix` (where Sluice's keys live, default /sluice/v1), `timeout` (seconds
    per request, default 5) and `netns` (connect from inside that network namespace).
    """
    if url_scheme(url) != "etcd":
        raise ValueError(f"not an etcd datastore URL: {url!r}")
    rest = url.split("://", 1)[1]
    location, _, query = rest.partition("?")
    if "#" in url:
        raise ValueError(f"invalid datastore URL {url!r}: a fragment (#...) is not allowed")
    if "/" in location:
        raise ValueError(
            f"invalid datastore URL {url!r}: a path is not allowed after the members; "
            "give the key prefix as ?prefix=/sluice/v1"
        )
    if "@" in location:
        raise ValueError(f"invalid datastore URL {url!r}: credentials are not supported")
    if not location:
        raise ValueError(
            f"invalid datastore URL {url!r}: no etcd member; expected etcd://HOST:PORT"
        )
    endpoints = tuple(_etcd_member(url, member) for member in location.split(","))
    options = _query(url, query, ETCD_OPTIONS, "etcd://")
    prefix = options.get("prefix", ETCD_DEFAULT_PREFIX)
    if not prefix.startswith("/") or prefix.rstrip("/") == "" or "\0" in prefix:
        raise ValueError(
            f"invalid datastore URL {url!r}: prefix must be an absolute key path such as "
            f"/sluice/v1, got {prefix!r}"
        )
    timeout = ETCD_DEFAULT_TIMEOUT
    if "timeout" in options:
        timeout = _positive(url, "timeout", options["timeout"])
    netns = options.get("netns") or None
    return EtcdLocation(endpoints, prefix.rstrip("/"), timeout, netns)


def _etcd_member(url: str, member: str) -> tuple[str, int]:
    if not member:
        raise ValueError(f"invalid datastore URL {url!r}: an empty member in the list")
    if member.startswith("["):
        host, bracket, port_text = member[1:].partition("]")
        if not bracket or not host or (port_text and not port_text.startswith(":")):
            raise ValueError(f"invalid datastore URL {url!r}: member {member!r}: expected "
                             "[IPv6]:PORT")
        port_text = port_text[1:]
    else:
        host, _, port_text = member.partition(":")
        if not host or ":" in port_text:
            raise ValueError(f"invalid datastore URL {url!r}: member {member!r}: expected "
                             "HOST:PORT (an IPv6 address goes in brackets)")
    if not port_text:
        return host, ETCD_DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(
            f"invalid datastore URL {url!r}: member {member!r}: port must be 1-65535, "
            f"got {port_text!r}"
        )
    return host, int(port_text)


def _query(url: str, query: str, allowed: tuple[str, ...], scheme: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"invalid datastore URL {url!r}: malformed query {query!r}") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise ValueError(
                f"invalid datastore URL {url!r}: unknown option {name!r}; "
                f"{scheme} takes {', '.join(allowed)}"
            )
        if name in options:
            raise ValueError(f"invalid datastore URL {url!r}: option {name!r} given twice")
        options[name] = value
    return options


def _positive(url: str, name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            f"invalid datastore URL {url!r}: {name} must be a positive number of seconds, "
            f"got {value!r}"
        )
    return number
