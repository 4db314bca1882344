"""Strict parsing of IP addresses and CIDRs into `ipaddress` objects."""

from __future__ import annotations

import ipaddress
from typing import Literal, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPFamily: TypeAlias = Literal["IPv4", "IPv6"]


class AddressError(ValueError):
    """A value that is not the IP address or CIDR it should be."""


def family_of(value: IPAddress | IPNetwork) -> IPFamily:
    return "IPv4" if value.version == 4 else "IPv6"


def parse_ip(text: str) -> IPAddress:
    if "%" in text:
        raise AddressError(f'"{text}" is not a valid IP address: zone indexes are not allowed')
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise AddressError(
            f'"{text}" is not a valid IP address: expected e.g. 10.0.0.1 or fd00::1'
        ) from None


def parse_cidr(text: str) -> IPNetwork:
    address, slash, prefix = text.partition("/")
    if not slash:
        raise AddressError(f'"{text}" is not a valid CIDR: missing prefix length (e.g. {text}/32)')
    try:
        host = parse_ip(address)
    except AddressError:
        raise AddressError(
            f'"{text}" is not a valid CIDR: "{address}" is not an IP address'
        ) from None
    max_prefix = host.max_prefixlen
    if not prefix.isdigit() or int(prefix) > max_prefix:
        raise AddressError(f'"{text}" is not a valid CIDR: prefix length must be 0-{max_prefix}')
    network = ipaddress.ip_network(f"{host}/{int(prefix)}", strict=False)
    if network.network_address != host:
        raise AddressError(
            f'"{text}" is not a valid CIDR: host bits set (did you mean "{network}"?)'
        )
    return network
