"""The small server every lab pod runs: `python -m sluice.lab.podserver`.

It enters the pod's network namespace, binds every port it is given over TCP or UDP on
IPv4 and IPv6 (one socket per family), tells the lab it is ready, and then answers each
TCP connection and each UDP datagram with one line

    <pod name> <client IP>\\n

where the client IP is the source address the server saw (an IPv4-mapped IPv6 address is
shown as IPv4). TCP connections are closed after the line. UDP replies are sent from the
address the datagram was sent to, so a client's connected socket accepts them.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import selectors
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from sluice import netns

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO_V4 = struct.Struct("=i4s4s")
PKTINFO_V6 = struct.Struct("=16sI")
CONNECTION_TIMEOUT = 1.0
MAX_DATAGRAM = 2048
PROTOCOLS = ("TCP", "UDP")


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str

    @classmethod
    def parse(cls, text: str) -> Port:
        number, _, protocol = text.partition("/")
        protocol = (protocol or "TCP").upper()
        if not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in PROTOCOLS:
            raise argparse.ArgumentTypeError(f"{text!r}: expected PORT/TCP or PORT/UDP")
        return cls(int(number), protocol)


def client_ip(address: str) -> str:
    """ADDRESS without a scope, IPv4-mapped IPv6 shown as IPv4."""
    parsed = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def reply_line(pod: str, address: str) -> bytes:
    return f"{pod} {client_ip(address)}\n".encode()


def _bind(port: Port, family: socket.AddressFamily) -> socket.socket:
    kind = socket.SOCK_STREAM if port.protocol == "TCP" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_DGRAM:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        elif kind == socket.SOCK_DGRAM:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port.number))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(ports: Sequence[Port]) -> list[socket.socket]:
    """One socket per port and family; a family the namespace lacks is skipped."""
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            bound = 0
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sockets.append(_bind(port, family))
                    bound += 1
                except OSError as err:
                    if err.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise OSError(err.errno, f"binding {port.number}/{port.protocol}: "
                                                 f"{err.strerror}") from None
            if not bound:
                raise OSError(errno.EAFNOSUPPORT, f"no address family for {port.number}")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _answer_tcp(listener: socket.socket, pod: str) -> None:
    try:
        conn, peer = listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    with conn:
        conn.settimeout(CONNECTION_TIMEOUT)
        try:
            conn.sendall(reply_line(pod, peer[0]))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            return
    _log(f"tcp {listener.getsockname()[1]} from {client_ip(peer[0])}")


def _answer_udp(sock: socket.socket, pod: str) -> None:
    try:
        _, ancillary, _, peer = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(PKTINFO_V6.size))
    except (BlockingIOError, InterruptedError, ConnectionRefusedError):
        return
    reply = reply_line(pod, peer[0])
    source = _reply_source(sock.family, ancillary)
    try:
        if source is None:
            sock.sendto(reply, peer)
        else:
            sock.sendmsg([reply], [source], 0, peer)
    except OSError as err:
        _log(f"udp {sock.getsockname()[1]} reply to {peer[0]} failed: {err.strerror}")
        return
    _log(f"udp {sock.getsockname()[1]} from {client_ip(peer[0])}")


def _reply_source(family: int, ancillary: list[tuple[int, int, bytes]]
                  ) -> tuple[int, int, bytes] | None:
    """A control message that sends the reply from the address the datagram came to."""
    for level, kind, data in ancillary:
        if family == socket.AF_INET and (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO):
            _, _, destination = PKTINFO_V4.unpack(data[:PKTINFO_V4.size])
            return level, kind, PKTINFO_V4.pack(0, destination, bytes(4))
        if family == socket.AF_INET6 and (level, kind) == (socket.IPPROTO_IPV6,
                                                           socket.IPV6_PKTINFO):
            destination, ifindex = PKTINFO_V6.unpack(data[:PKTINFO_V6.size])
            return level, kind, PKTINFO_V6.pack(destination, ifindex)
    return None


def _log(line: str) -> None:
    print(line, flush=True)


def serve(sockets: Sequence[socket.socket], pod: str) -> None:
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ, sock)
        while True:
            for key, _ in selector.select():
                sock = key.data
                if sock.type == socket.SOCK_STREAM:
                    _answer_tcp(sock, pod)
                else:
                    _answer_udp(sock, pod)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sluice.lab.podserver",
        description="Answer every TCP connection and UDP datagram on the given ports with "
                    "'<pod> <client IP>'. Started by `sluice lab` for each pod.",
    )
    parser.add_argument("--pod", required=True, help="the pod name to answer with")
    parser.add_argument("--netns", help="network namespace (name or path) to bind in")
    parser.add_argument("--port", dest="ports", type=Port.parse, action="append", default=[],
                        metavar="PORT/PROTO", help="a port to serve, e.g. 8080/TCP; repeat")
    parser.add_argument("--ready-fd", type=int,
                        help="file descriptor to write 'ready' to once every port is bound")
    return parser


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    # The lab starts servers with interrupts held back (blocked), and a signal mask
    # survives exec: without this, SIGTERM would wait until `lab down` sends SIGKILL.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    try:
        if args.netns:
            with netns.entered(args.netns):
                sockets = bind_all(args.ports)
        else:
            sockets = bind_all(args.ports)
    except OSError as err:
        print(f"podserver {args.pod}: {err.strerror or err}", file=sys.stderr, flush=True)
        return 1
    listed = " ".join(f"{p.number}/{p.protocol}" for p in args.ports) or "no ports"
    _log(f"pod {args.pod}: serving {listed}")
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    serve(sockets, args.pod)
    return 0


if __name__ == "__main__":
    sys.exit(main())
