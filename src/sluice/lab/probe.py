"""`lab probe`: TCP connections or UDP exchanges from a place in the lab to an address.

A probe runs where a process of its source would run: a child forked from this process
moves itself into the source's cgroup (so cgroup socket hooks, e.g. connect-time service
load balancing, see it like any process of that pod or node) and into the source's
network namespace, makes its connections one after the other, writes each outcome to a
pipe as a JSON line and exits. No interpreter is started (a fork costs about a
millisecond), and the child is killed when an outcome is late, so no connection takes
much longer than the timeout. The pod server at the other end answers with
`<pod> <client IP>`, which becomes `peer` and `client_ip`.

Results: connected (TCP handshake done, or a UDP reply came), refused (TCP RST, or ICMP
port unreachable for UDP), timeout (nothing within the timeout), error (anything else,
e.g. no route; `error` says what).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, TypeAlias

from sluice import cgroups, netns

Result: TypeAlias = Literal["connected", "refused", "timeout", "error"]
PROTOCOLS = ("TCP", "UDP")
DEFAULT_TIMEOUT = 2.0
MAX_COUNT = 10000
PAYLOAD = b"sluice probe\n"
MAX_REPLY = 1024
GRACE = 2.0
"""How much longer than its timeout one connection may take (the first one includes
forking, joining the cgroup and entering the namespace) before the child is killed."""
EOF_WAIT = 0.2
"""With a fixed source port, how long a TCP probe waits for the server to close first:
then the client's end closes without TIME_WAIT and the port can be bound again."""
REAP_TIMEOUT = 1.0


@dataclass(frozen=True)
class Outcome:
    result: Result
    peer: str | None = None
    client_ip: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    cgroup: str | None = None
    """The cgroup the probe ran in, as /proc/self/cgroup names it (`/sluice-lab-...`)."""


@dataclass(frozen=True)
class Probe:
    """What to probe: from network namespace NETNS and cgroup CGROUP (relative to the
    cgroup2 root; None: this process's) to ADDRESS:PORT over PROTOCOL."""

    netns: str
    address: str
    port: int
    protocol: str = "TCP"
    timeout: float = DEFAULT_TIMEOUT
    cgroup: str | None = None
    source_port: int | None = None
    """The client socket's local port (bound with SO_REUSEADDR); None: any free one."""

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def run(self) -> Outcome:
        """One connection; never longer than about TIMEOUT + GRACE."""
        return self.repeat(1)[0]

    def repeat(self, count: int) -> list[Outcome]:
        """COUNT connections one after the other, made by one child process; each takes
        at most about TIMEOUT + GRACE."""
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be 1-{MAX_COUNT}, got {count}")
        if not netns.exists(self.netns):
            return [Outcome("error", error=f"namespace {self.netns} does not exist")] * count
        try:
            procs_file = (None if self.cgroup is None
                          else os.path.join(cgroups.create(self.cgroup), "cgroup.procs"))
        except OSError as err:
            return [Outcome("error", error=f"cgroup {self.cgroup}: {err}")] * count
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        if pid == 0:
            os.close(read_end)
            self._child(count, write_end, procs_file)  # never returns
        os.close(write_end)
        try:
            return self._collect(read_end, count, pid)
        finally:
            os.close(read_end)
            _reap(pid)

    def _child(self, count: int, out: int, procs_file: str | None) -> None:
        """The forked child: join the cgroup and namespace, probe, report, exit. Sockets
        are made after joining: a socket belongs to the cgroup of the process making it."""
        status = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if procs_file is not None:
                with open(procs_file, "w", encoding="ascii") as procs:
                    procs.write("0")
            cgroup = own_cgroup()
            with netns.entered(self.netns):
                for _ in range(count):
                    try:
                        outcome = self._attempt()
                    except Exception as err:
                        outcome = Outcome("error", error=f"{type(err).__name__}: {err}")
                    _write_line(out, asdict(replace(outcome, cgroup=cgroup)))
        except BaseException as err:
            status = 1
            with contextlib.suppress(BaseException):
                _write_line(out, {"fatal": f"{type(err).__name__}: {err}"})
        finally:
            os._exit(status)

    def _collect(self, fd: int, count: int, pid: int) -> list[Outcome]:
        """COUNT outcomes from the child's pipe; the missing ones as errors when it is
        late (it is killed) or stops early."""
        outcomes: list[Outcome] = []
        pending = b""
        deadline = time.monotonic() + self.timeout + GRACE
        while len(outcomes) < count:
            if b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                doc = json.loads(line)
                if "fatal" in doc:
                    return _fill(outcomes, count, f"the probe failed: {doc['fatal']}")
                outcomes.append(Outcome(**doc))
                deadline = time.monotonic() + self.timeout + GRACE
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                _kill(pid)
                return _fill(outcomes, count, "the probe did not finish in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                return _fill(outcomes, count, "the probe process exited early")
            pending += chunk
        return outcomes

    def _attempt(self) -> Outcome:
        af = socket.AF_INET6 if self.family == 6 else socket.AF_INET
        udp = self.protocol == "UDP"
        with socket.socket(af, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as sock:
            began = time.monotonic()
            deadline = began + self.timeout
            try:
                if self.source_port is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", self.source_port))
                sock.settimeout(self.timeout)
                sock.connect((self.address, self.port))
                if udp:
                    sock.send(PAYLOAD)
                line = _read_line(sock, deadline, udp=udp)
            except ConnectionRefusedError:
                return Outcome("refused", latency_ms=_ms(began))
            except TimeoutError:
                return Outcome("timeout", error=f"no answer within {self.timeout:g}s")
            except OSError as err:
                return Outcome("error", error=err.strerror or str(err))
            latency = _ms(began)
            if not udp and self.source_port is not None:
                _wait_for_close(sock, min(deadline, time.monotonic() + EOF_WAIT))
        if line is None:
            return Outcome("connected", latency_ms=latency,
                           error=f"connected, but no reply line within {self.timeout:g}s")
        peer, _, client = line.partition(" ")
        return Outcome("connected", peer=peer or None, client_ip=client or None,
                       latency_ms=latency)


def _write_line(fd: int, doc: dict[str, Any]) -> None:
    data = (json.dumps(doc) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _fill(outcomes: list[Outcome], count: int, error: str) -> list[Outcome]:
    return outcomes + [Outcome("error", error=error)] * (count - len(outcomes))


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect the child (it exits right after its last line); killed if it lingers."""
    deadline = time.monotonic() + REAP_TIMEOUT
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            _kill(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return
        time.sleep(0.001)


def own_cgroup() -> str | None:
    """This process's cgroup v2 path (the `0::` line of /proc/self/cgroup)."""
    with open("/proc/self/cgroup", encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def _read_line(sock: socket.socket, deadline: float, *, udp: bool) -> str | None:
    """The first reply line; for UDP a timeout is raised (nothing came back at all)."""
    data = b""
    while b"\n" not in data and len(data) < MAX_REPLY:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if udp:
                raise TimeoutError
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(MAX_REPLY)
        except TimeoutError:
            if udp:
                raise
            return None
        if not chunk:
            break
        data += chunk
        if udp:
            break
    text = data.decode(errors="replace").split("\n", 1)[0].strip()
    return text or None


def _wait_for_close(sock: socket.socket, until: float) -> None:
    """Read until the server's FIN (or UNTIL), so this end closes second."""
    with contextlib.suppress(OSError):
        while (remaining := until - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(MAX_REPLY):
                return


def _ms(began: float) -> float:
    return round((time.monotonic() - began) * 1000.0, 3)


def report(outcome: Outcome, **context: Any) -> dict[str, Any]:
    """The JSON form of one probe: result, peer, client_ip, latency_ms, CONTEXT, cgroup
    and error."""
    return {
        "result": outcome.result,
        "peer": outcome.peer,
        "client_ip": outcome.client_ip,
        "latency_ms": outcome.latency_ms,
        **context,
        "cgroup": outcome.cgroup,
        "error": outcome.error,
    }


def summary_result(outcomes: Sequence[Outcome]) -> Result:
    """connected when every probe connected, else the result of the first that did not."""
    return next((o.result for o in outcomes if o.result != "connected"), "connected")


def report_many(outcomes: Sequence[Outcome], **context: Any) -> dict[str, Any]:
    """The JSON form of repeated probes: `result` (see summary_result), CONTEXT, `count`,
    how many had each result (`results`), answered by each peer (`peers`) and came from
    each client address (`client_ips`), the cgroup, and every probe in order (`probes`:
    result, peer, client_ip, latency_ms, error)."""
    def tally(values: Sequence[str | None]) -> dict[str, int]:
        return dict(sorted(Counter(v for v in values if v is not None).items()))

    return {
        "result": summary_result(outcomes),
        **context,
        "count": len(outcomes),
        "results": tally([o.result for o in outcomes]),
        "peers": tally([o.peer for o in outcomes]),
        "client_ips": tally([o.client_ip for o in outcomes]),
        "cgroup": next((o.cgroup for o in outcomes if o.cgroup), None),
        "probes": [{"result": o.result, "peer": o.peer, "client_ip": o.client_ip,
                    "latency_ms": o.latency_ms, "error": o.error} for o in outcomes],
    }

