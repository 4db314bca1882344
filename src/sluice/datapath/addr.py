"""The 16-byte address every map key uses (`union sl_addr`): IPv4 is IPv4-mapped."""

from __future__ import annotations

import ctypes
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

V4_MAPPED_PREFIX = 96


class SlAddr(ctypes.Union):
    _c_name_ = "sl_addr"
    _fields_ = [("b", ctypes.c_uint8 * 16), ("w", ctypes.c_uint32 * 4)]

    @classmethod
    def of(cls, address: IPAddress | str) -> SlAddr:
        ip = ipaddress.ip_address(address)
        raw = ip.packed if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}").packed
        return cls.from_buffer_copy(raw)

    def to_ip(self) -> IPAddress:
        v6 = ipaddress.IPv6Address(bytes(self.b))
        return v6.ipv4_mapped or v6


def lpm_prefixlen(network: IPNetwork) -> int:
    """Prefix length over the 128-bit mapped address space."""
    return network.prefixlen + (V4_MAPPED_PREFIX if network.version == 4 else 0)


def network_of(address: SlAddr, prefixlen: int) -> IPNetwork:
    ip = address.to_ip()
    if ip.version == 4:
        return ipaddress.ip_network(f"{ip}/{prefixlen - V4_MAPPED_PREFIX}")
    return ipaddress.ip_network(f"{ip}/{prefixlen}")


class LpmKey(ctypes.Structure):
    """`struct sl_lpm_key`: the key of every LPM trie over addresses."""

    _c_name_ = "sl_lpm_key"
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", SlAddr)]

    @classmethod
    def of(cls, cidr: IPNetwork | str) -> LpmKey:
        network = ipaddress.ip_network(cidr)
        return cls(prefixlen=lpm_prefixlen(network), addr=SlAddr.of(network.network_address))

    def network(self) -> IPNetwork:
        return network_of(self.addr, self.prefixlen)
