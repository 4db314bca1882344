"""The packets `sluice trace` sends through the datapath: a flow's first packet (TCP SYN,
UDP datagram, SCTP INIT, ICMP echo request) built byte by byte with valid checksums, and
the frames a program hands back, decoded."""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from sluice.datapath.lb import PROTOCOLS
from sluice.model.addresses import IPAddress

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_HLEN = 14
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
PROTOCOL_NUMBERS = {**PROTOCOLS, "ICMP": socket.IPPROTO_ICMP}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()} | {
    IPPROTO_ICMPV6: "ICMP"}
TCP_FLAG_NAMES = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"))
TCP_SYN = 0x02
ICMP_ECHO_REQUEST = {4: 8, 6: 128}
PAYLOAD = b"sluice trace"
TTL = 64


@dataclass(frozen=True)
class PacketSpec:
    """One packet of a flow: ports are the ICMP echo id (sport) for ICMP."""

    src: IPAddress
    dst: IPAddress
    protocol: str  # TCP, UDP, SCTP, ICMP
    sport: int
    dport: int
    src_mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02"

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"packet: {self.src} and {self.dst} are of different families")
        if self.protocol not in PROTOCOL_NUMBERS:
            raise ValueError(f"packet: unknown protocol {self.protocol!r}; "
                             f"expected one of {', '.join(PROTOCOL_NUMBERS)}")

    @property
    def family(self) -> int:
        return self.src.version

    @property
    def l4_proto(self) -> int:
        if self.protocol == "ICMP" and self.family == 6:
            return IPPROTO_ICMPV6
        return PROTOCOL_NUMBERS[self.protocol]


def internet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of DATA."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _pseudo_header(spec: PacketSpec, length: int) -> bytes:
    if spec.family == 4:
        return spec.src.packed + spec.dst.packed + struct.pack("!BBH", 0, spec.l4_proto, length)
    return spec.src.packed + spec.dst.packed + struct.pack("!IxxxB", length, spec.l4_proto)


def _transport(spec: PacketSpec) -> bytes:
    if spec.protocol == "TCP":
        header = struct.pack("!HHIIBBHHH", spec.sport, spec.dport, 1, 0, 5 << 4, TCP_SYN,
                             64240, 0, 0)
        checksum = internet_checksum(_pseudo_header(spec, len(header)) + header)
        return header[:16] + struct.pack("!H", checksum) + header[18:]
    if spec.protocol == "UDP":
        length = 8 + len(PAYLOAD)
        datagram = struct.pack("!HHHH", spec.sport, spec.dport, length, 0) + PAYLOAD
        checksum = internet_checksum(_pseudo_header(spec, length) + datagram) or 0xFFFF
        return datagram[:6] + struct.pack("!H", checksum) + datagram[8:]
    if spec.protocol == "SCTP":
        # An INIT chunk: initiate tag, a_rwnd, outbound and inbound streams, initial TSN.
        init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x51C3, 65535, 1, 1, 1)
        packet = struct.pack("!HHII", spec.sport, spec.dport, 0, 0) + init
        return packet[:8] + struct.pack("<I", crc32c(packet)) + packet[12:]
    message = struct.pack("!BBHHH", ICMP_ECHO_REQUEST[spec.family], 0, 0, spec.sport, 1) + PAYLOAD
    prefix = _pseudo_header(spec, len(message)) if spec.family == 6 else b""
    checksum = internet_checksum(prefix + message)
    return message[:2] + struct.pack("!H", checksum) + message[4:]


def build(spec: PacketSpec) -> bytes:
    """Ethernet, IPv4 or IPv6, and the transport header of SPEC."""
    transport = _transport(spec)
    if spec.family == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 0x5A1C, 0x4000,
                             TTL, spec.l4_proto, 0, spec.src.packed, spec.dst.packed)
        header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
        ethertype = ETH_P_IP
    else:
        header = struct.pack("!IHBB16s16s", 6 << 28, len(transport), spec.l4_proto, TTL,
                             spec.src.packed, spec.dst.packed)
        ethertype = ETH_P_IPV6
    return spec.dst_mac + spec.src_mac + struct.pack("!H", ethertype) + header + transport


@dataclass(frozen=True)
class Frame:
    """What a program handed back: the frame as it would leave the hook."""

    dst_mac: bytes
    src_mac: bytes
    src: IPAddress
    dst: IPAddress
    l4_proto: int
    sport: int  # ICMP echo: the id
    dport: int
    tcp_flags: int
    icmp_type: int | None

    @property
    def protocol(self) -> str:
        return PROTOCOL_NAMES.get(self.l4_proto, str(self.l4_proto))

    def describe(self) -> str:
        if self.icmp_type is not None:
            return f"{self.protocol} type {self.icmp_type} id {self.sport} {self.src} -> {self.dst}"
        flags = f" [{tcp_flag_text(self.tcp_flags)}]" if self.l4_proto == socket.IPPROTO_TCP \
            else ""
        return f"{self.protocol} {endpoint(self.src, self.sport)} -> " \
               f"{endpoint(self.dst, self.dport)}{flags}"


def endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def tcp_flag_text(flags: int) -> str:
    return ",".join(name for bit, name in TCP_FLAG_NAMES if flags & bit) or "none"


def parse(data: bytes) -> Frame | None:
    """The frame DATA, or None when it is not IPv4/IPv6 over Ethernet or is truncated."""
    if len(data) < ETH_HLEN:
        return None
    ethertype = struct.unpack_from("!H", data, 12)[0]
    offset = ETH_HLEN
    src: IPAddress
    dst: IPAddress
    if ethertype == ETH_P_IP and len(data) >= offset + 20:
        ihl = (data[offset] & 0x0F) * 4
        proto = data[offset + 9]
        src = ipaddress.IPv4Address(data[offset + 12:offset + 16])
        dst = ipaddress.IPv4Address(data[offset + 16:offset + 20])
        offset += ihl
    elif ethertype == ETH_P_IPV6 and len(data) >= offset + 40:
        proto = data[offset + 6]
        src = ipaddress.IPv6Address(data[offset + 8:offset + 24])
        dst = ipaddress.IPv6Address(data[offset + 24:offset + 40])
        offset += 40
    else:
        return None
    sport = dport = flags = 0
    icmp_type = None
    if proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, IPPROTO_SCTP) and \
            len(data) >= offset + 4:
        sport, dport = struct.unpack_from("!HH", data, offset)
        if proto == socket.IPPROTO_TCP and len(data) >= offset + 14:
            flags = data[offset + 13]
    elif proto in (socket.IPPROTO_ICMP, IPPROTO_ICMPV6) and len(data) >= offset + 6:
        icmp_type = data[offset]
        sport = dport = struct.unpack_from("!H", data, offset + 4)[0]
    return Frame(data[0:6], data[6:12], src, dst, proto, sport, dport, flags, icmp_type)
